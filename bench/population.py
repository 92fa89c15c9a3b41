"""A realistic eligible-user list for the throughput benchmarks (deterministic for a given seed).

- 60 % e-mail: Japanese carrier domains (docomo, au, SoftBank, Y!mobile) and free mail, some legacy docomo/au
  addresses that break RFC 5322 (``taro..yamada.@docomo.ne.jp``), some with a phone too (e-mail wins);
- 40 % phone only, in the writings office scripts and Excel produce: ``090-1234-5678``, ``09012345678``,
  ``+81 90 1234 5678``, ``+81-90-…``, ``090 1234 5678``, full-width digits with ``－`` or ``ー``;
- 1 % bad rows of several kinds (bad or non-ASCII address, landline/IP/toll-free number, http or foreign
  receipt URL, no contact, no user id, duplicate user id, bad amount or category, wrong field count).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

#: Bump when the generator changes (cached files are keyed by it).
VERSION = 3
HEADER = ["user_id", "name", "email", "phone", "receipt_url", "amount", "category", "inquiry_no"]
HOST = "receive.example.jp"

_SURNAMES = [
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "山本",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山田",
    "佐々木",
    "山口",
    "松本",
    "井上",
    "木村",
    "林",
    "斎藤",
    "清水",
]
_GIVEN = ["太郎", "花子", "健", "美咲", "翔", "陽菜", "大輔", "さくら", "蓮", "結衣", "悠真", "葵", "湊", "凛"]
_ROMAJI = [
    "sato",
    "suzuki",
    "takahashi",
    "tanaka",
    "ito",
    "watanabe",
    "yamamoto",
    "nakamura",
    "kobayashi",
    "kato",
    "yoshida",
    "yamada",
    "sasaki",
    "yamaguchi",
    "matsumoto",
    "inoue",
    "kimura",
    "hayashi",
]
_GIVEN_ROMAJI = [
    "taro",
    "hanako",
    "ken",
    "misaki",
    "sho",
    "hina",
    "daisuke",
    "sakura",
    "ren",
    "yui",
    "yuma",
    "aoi",
    "minato",
    "rin",
]
# (domain, weight): carrier mail is most of what a regional-coupon app's users registered.
_DOMAINS = [
    ("docomo.ne.jp", 18),
    ("ezweb.ne.jp", 9),
    ("au.com", 5),
    ("softbank.ne.jp", 6),
    ("i.softbank.jp", 7),
    ("ymobile.ne.jp", 2),
    ("gmail.com", 24),
    ("yahoo.co.jp", 16),
    ("icloud.com", 8),
    ("outlook.jp", 3),
    ("nifty.com", 1),
    ("example.jp", 1),
]
_LEGACY = ("docomo.ne.jp", "ezweb.ne.jp")
_FULL = str.maketrans("0123456789", "０１２３４５６７８９")


def _email(rng: random.Random, i: int) -> str:
    domain = rng.choices([d for d, _ in _DOMAINS], [w for _, w in _DOMAINS])[0]
    given, family = rng.choice(_GIVEN_ROMAJI), rng.choice(_ROMAJI)
    shape = rng.random()
    if domain in _LEGACY and shape < 0.06:
        local = rng.choice([f"{given}..{family}", f"{given}.{family}.", f"{given}..{i % 1000}."])
    elif shape < 0.35:
        local = f"{given}.{family}{i % 100:02d}"
    elif shape < 0.6:
        local = f"{family}_{given}{rng.randrange(1960, 2006)}"
    elif shape < 0.8:
        local = f"{given[0]}-{family}.{rng.randrange(10000):04d}"
    else:
        local = f"{given}{family}{i}"
    if rng.random() < 0.01:
        domain = domain.upper()  # Excel users type capitals; normalised to lower case
    return f"{local}@{domain}"


def _phone(rng: random.Random) -> str:
    a = f"0{rng.choice('789')}0"
    b, c = f"{rng.randrange(1, 10)}{rng.randrange(1000):03d}", f"{rng.randrange(10000):04d}"
    r = rng.random()
    if r < 0.38:
        return f"{a}-{b}-{c}"
    if r < 0.62:
        return f"{a}{b}{c}"
    if r < 0.72:
        return f"+81 {a[1:]} {b} {c}"
    if r < 0.77:
        return f"+81-{a[1:]}-{b}-{c}"
    if r < 0.82:
        return f"{a} {b} {c}"
    if r < 0.92:
        return f"{a}－{b}－{c}".translate(_FULL)
    if r < 0.96:
        return f"{a}ー{b}ー{c}".translate(_FULL)
    return f"{a}{b}{c}".translate(_FULL)


def _bad(rng: random.Random, row: list[str], seen_ids: list[str]) -> list[str]:
    kind = rng.randrange(14)
    if kind == 0:
        row[2], row[3] = (
            rng.choice(["taro.yamada@@docomo.ne.jp", "no-at-sign.docomo.ne.jp", "x@localhost", "a b@example.jp"]),
            "",
        )
    elif kind == 1:
        row[2], row[3] = "山田太郎@example.jp", ""
    elif kind == 2:
        row[2], row[3] = "", rng.choice(["03-5244-9370", "06-6123-4567", "0120-479-249"])
    elif kind == 3:
        row[2], row[3] = "", "050-1234-5678"
    elif kind == 4:
        row[2], row[3] = "", rng.choice(["090-1234-567", "1234", "電話なし"])
    elif kind == 5:
        row[4] = row[4].replace("https://", "http://")
    elif kind == 6:
        row[4] = row[4].replace(HOST, "receive.example.com")
    elif kind == 7:
        row[4] = f"https://{HOST}/"
    elif kind == 8:
        row[2], row[3] = "", ""
    elif kind == 9:
        row[0] = ""
    elif kind == 10 and seen_ids:
        row[0] = rng.choice(seen_ids[-5000:])
    elif kind == 11:
        row[5] = rng.choice(["12.5", "-300", "千円"])
    elif kind == 12:
        row[6] = "C"
    else:
        row.append("余分な列")
    return row


def generate(path: Path, rows: int, seed: int = 20230405, bad_share: float = 0.01) -> int:
    """Write ``rows`` data rows (header excluded) to ``path``; returns how many were made bad."""
    rng = random.Random(seed)
    bad = 0
    seen_ids: list[str] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(HEADER)
        for i in range(1, rows + 1):
            user_id = f"RP{i:08d}"
            name = f"{rng.choice(_SURNAMES)}{rng.choice(['　', ' ', ''])}{rng.choice(_GIVEN)}"
            email = phone = ""
            if rng.random() < 0.6:
                email = _email(rng, i)
                if rng.random() < 0.1:
                    phone = _phone(rng)  # both registered: the campaign prefers e-mail
            else:
                phone = _phone(rng)
            url = f"https://{HOST}/r/{rng.getrandbits(80):020x}"
            amount = rng.randrange(100, 20001)
            amount_text = rng.choice([str(amount), str(amount), str(amount), f"{amount:,}", f"{amount}円"])
            category = rng.choice("AAAB")
            inquiry = f"Q{2023_0000000 + i}" if category == "B" else ""
            row = [user_id, name, email, phone, url, amount_text, category, inquiry]
            if rng.random() < bad_share:
                row = _bad(rng, row, seen_ids)
                bad += 1
            elif i % 997 == 0:
                seen_ids.append(user_id)
            out.writerow(row)
    tmp.replace(path)
    return bad


def cached(directory: Path, rows: int, seed: int = 20230405, bad_share: float = 0.01) -> Path:
    """The list for ``rows``, generated once per generator version."""
    clean = "" if bad_share else "-clean"
    path = directory / f"recipients-{rows}-{seed}{clean}-v{VERSION}.csv"
    if not path.exists():
        generate(path, rows, seed, bad_share=bad_share)
    return path
