"""Which row first carried each user id, for lists of millions of rows, in little memory.

A dict from an id's hash to its row number costs about 100 bytes an entry in Python objects (104 MB for a
million ids, a third of an import's memory). This keeps the same map in two flat arrays with open
addressing: 12 bytes a slot, at most half of them used, so 24 MB for a million.
"""

from __future__ import annotations

from array import array

_RELEASED = -1


class RowsByHash:
    """64-bit hashes → row numbers (non-negative ints below 2**31)."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        if capacity & (capacity - 1) or capacity < 2:
            raise ValueError("capacity must be a power of two")
        self._keys = array("q", bytes(8 * capacity))  # 0: empty slot
        self._rows = array("i", bytes(4 * capacity))
        self._mask = capacity - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _slot(self, key: int) -> int:
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == key or found == 0:
                return i
            i = (i + 1) & mask

    def claim(self, key: int, row: int) -> int | None:
        """The row that holds ``key`` already, or None after recording ``row`` for it."""
        key = key or 1  # 0 marks an empty slot; hashes 0 and 1 share a slot (as colliding hashes would)
        i = self._slot(key)
        if self._keys[i] == key:
            held = self._rows[i]
            if held != _RELEASED:
                return held
            self._rows[i] = row
            return None
        self._keys[i] = key
        self._rows[i] = row
        self._size += 1
        if self._size * 2 > self._mask + 1:
            self._grow()
        return None

    def release(self, key: int) -> None:
        """Forget the row recorded for ``key`` (it was refused after all); the next claim takes the slot."""
        key = key or 1
        i = self._slot(key)
        if self._keys[i] == key:
            self._rows[i] = _RELEASED

    def _grow(self) -> None:
        old_keys, old_rows = self._keys, self._rows
        capacity = (self._mask + 1) * 2
        self._keys = keys = array("q", bytes(8 * capacity))
        self._rows = rows = array("i", bytes(4 * capacity))
        self._mask = mask = capacity - 1
        for key, row in zip(old_keys, old_rows, strict=True):
            if key:
                i = key & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = key
                rows[i] = row
