"""Short texts for one-line messages: the one home for "the first few, and N more" and for
"N noun(s)"."""

from __future__ import annotations

from collections.abc import Sequence


def first_few(items: Sequence[object], shown: int = 5, *, total: int | None = None,
              separator: str = ", ", more: str = " and {} more") -> str:
    """``a, b, c and 4 more``: the first ``shown`` items, then how many were left out (of ``total``,
    when ``items`` holds only the first few of a longer sequence), worded by ``more`` (``{}`` is the
    count: ``" (+{} more)"`` gives ``a, b, c (+4 more)``)."""
    total = len(items) if total is None else total
    head = separator.join(str(item) for item in items[:shown])
    return head + (more.format(total - min(shown, len(items))) if total > shown else "")


def counted(n: int, noun: str) -> str:
    """``1 tensor``, ``3 tensors``: a count with its noun, plural by a trailing ``s``."""
    return f"{n} {noun}{'s' * (n != 1)}"
