"""Japanese labels and display formats for the dashboard (operators read Japanese; times are JST)."""

from __future__ import annotations

from datetime import datetime

from dispatcher.core.clock import JST

# The state, channel and campaign-state names are shared with the command line (dispatcher.core.labels).
from dispatcher.core.labels import CAMPAIGN_STATE_LABELS as CAMPAIGN_STATE_LABELS
from dispatcher.core.labels import CHANNEL_LABELS as CHANNEL_LABELS
from dispatcher.core.labels import STATUS_LABELS as STATUS_LABELS
from dispatcher.core.labels import STATUS_ORDER as STATUS_ORDER

#: Rejection reasons are counted by the CSV field at fault.
REJECT_FIELD_LABELS: dict[str, str] = {
    "user_id": "利用者ID",
    "email": "メールアドレス",
    "phone": "電話番号",
    "email/phone": "連絡先なし",
    "name": "氏名",
    "row": "行の形式",
    "receipt_url": "受取URL",
    "amount": "金額",
    "category": "区分",
    "sms": "SMSの長さ",
}

#: Notices shown after an action (the redirect carries only this key).
DONE_MESSAGES: dict[str, str] = {
    "pause": "キャンペーンを一時停止しました。",
    "resume": "キャンペーンを再開しました。",
    "cancel": "キャンペーンを中止しました。未送信の配信は取り消されました。",
    "resend": "再送を受け付けました。",
}


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status)


def channel_label(channel: str) -> str:
    return CHANNEL_LABELS.get(channel, channel)


def campaign_state_label(state: str) -> str:
    return CAMPAIGN_STATE_LABELS.get(state, state)


def reject_field_label(field: str) -> str:
    return REJECT_FIELD_LABELS.get(field, field)


def num(value: int | float | None) -> str:
    """Thousands separators, as every count on the dashboard is shown."""
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def jst(value: datetime | str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(JST).strftime(fmt) + " JST"


def percent(part: int, whole: int) -> str:
    return "—" if whole <= 0 else f"{100 * part / whole:.1f}%"
