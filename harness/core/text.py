"""Short texts for one-line messages: the one home for "the first few, and N more"."""

from __future__ import annotations

from collections.abc import Sequence


def first_few(items: Sequence[object], shown: int = 5, *, total: int | None = None,
              separator: str = ", ") -> str:
    """``a, b, c and 4 more``: the first ``shown`` items, then how many were left out (of ``total``,
    when ``items`` holds only the first few of a longer sequence)."""
    total = len(items) if total is None else total
    head = separator.join(str(item) for item in items[:shown])
    return head + (f" and {total - min(shown, len(items))} more" if total > shown else "")
