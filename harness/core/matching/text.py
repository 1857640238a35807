"""How matching's messages spell a tensor shape and a module path, and how many modules they name."""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 6  # unmatched modules named in a "no pairing fits" message before "and N more"


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def path_text(path: str) -> str:
    return path or "(root)"
