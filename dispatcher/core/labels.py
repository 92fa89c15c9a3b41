"""The Japanese names of delivery states, channels and campaign states, one mapping for the dashboard and the
command line (office staff see the same words in both).

The machine names (``queued``, ``email``, ``paused``) stay the keys everywhere data is exchanged: JSON, CSV,
the ledger. Only what a person reads is shown with these labels.
"""

from __future__ import annotations

from dispatcher.core.i18n import language
from dispatcher.core.states import Status

#: Display order of delivery states: the way a delivery moves, then the ways it stops.
STATUS_ORDER: tuple[Status, ...] = (
    Status.QUEUED,
    Status.RETRYING,
    Status.SENDING,
    Status.SENT,
    Status.DELIVERED,
    Status.BOUNCED,
    Status.COMPLAINED,
    Status.FAILED,
    Status.UNKNOWN,
    Status.EXPIRED,
    Status.SUPPRESSED,
    Status.CANCELLED,
)

STATUS_LABELS: dict[str, str] = {
    "queued": "送信待ち",
    "retrying": "再試行待ち",
    "sending": "送信中",
    "sent": "送信済み",
    "delivered": "配達済み",
    "bounced": "不達（バウンス）",
    "complained": "迷惑メール報告",
    "failed": "失敗",
    "unknown": "結果不明",
    "expired": "期限切れ",
    "suppressed": "配信停止",
    "cancelled": "取消",
}

CHANNEL_LABELS: dict[str, str] = {"email": "メール", "sms": "SMS"}

CAMPAIGN_STATE_LABELS: dict[str, str] = {"active": "配信中", "paused": "一時停止中", "cancelled": "中止"}


def shown_status(status: str) -> str:
    """A delivery state as the user reads it: the dashboard's Japanese label, or the state's own name."""
    return STATUS_LABELS.get(status, status) if language() == "ja" else status


def shown_channel(channel: str) -> str:
    return CHANNEL_LABELS.get(channel, channel) if language() == "ja" else channel


def shown_campaign_state(state: str) -> str:
    return CAMPAIGN_STATE_LABELS.get(state, state) if language() == "ja" else state
