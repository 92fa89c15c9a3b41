"""SMS length arithmetic: GSM-7 (160/153) or UCS-2 (70/67 UTF-16 units per part)."""

from __future__ import annotations

import math

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")


def utf16_units(text: str) -> int:
    """Characters as a phone counts them in UCS-2: an emoji outside the BMP counts 2."""
    return len(text.encode("utf-16-le")) // 2


def is_gsm7(text: str) -> bool:
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXT for ch in text)


def measure(text: str) -> tuple[int, int]:
    """``(length(text), parts(text))``, deciding the alphabet once."""
    if is_gsm7(text):
        n = sum(2 if ch in _GSM7_EXT else 1 for ch in text)
        return n, 1 if n <= 160 else math.ceil(n / 153)
    n = utf16_units(text)
    return n, 1 if n <= 70 else math.ceil(n / 67)


def length(text: str) -> int:
    """Length in the units the carrier counts (septets for GSM-7, UTF-16 units otherwise)."""
    return measure(text)[0]


def parts(text: str) -> int:
    """Number of message parts the text is split into (what SMS pricing and rate limits count)."""
    return measure(text)[1]
