"""The compact first-row map behaves like a dict of the rows accepted so far."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.intake.rowmap import RowsByHash

# Keys from a small pool (so repeats and slot collisions happen), including 0, 1 and the 64-bit extremes.
KEYS = st.sampled_from([0, 1, 2, 3, 17, 33, -1, -(2**63), 2**63 - 1, 2**40, 2**40 + 16, 5 * 2**16])
OPS = st.lists(st.tuples(st.sampled_from(["claim", "release"]), KEYS, st.integers(0, 2**31 - 1)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([2, 4, 1 << 16]))
def test_claims_and_releases_match_a_dict(ops, capacity) -> None:
    rows = RowsByHash(capacity)
    model: dict[int, int] = {}
    for op, key, row in ops:
        slot = key or 1  # 0 and 1 share a slot by design
        if op == "claim":
            expected = model.get(slot)
            assert rows.claim(key, row) == expected
            model.setdefault(slot, row)
        else:
            rows.release(key)
            model.pop(slot, None)


def test_a_million_ids_fit_in_two_flat_arrays() -> None:
    rows = RowsByHash()
    ids = [hash(f"U{i:07d}") for i in range(200_000)]
    assert all(rows.claim(h, n) is None for n, h in enumerate(ids))
    assert [rows.claim(h, 0) for h in ids[::1000]] == list(range(0, 200_000, 1000))
    assert len(rows) == 200_000
    # 12 bytes a slot, at most half the slots used
    assert rows._keys.itemsize + rows._rows.itemsize == 12 and len(rows._keys) <= 4 * len(rows)


def test_capacity_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError):
        RowsByHash(3)
