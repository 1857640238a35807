"""Text typed on the command line, turned into what the audits and comparisons take:
``parse_shape`` reads ``--input-shape``; ``parse_positive_ints`` is its parser, for a verb
that words the refusal its own way.
"""

from __future__ import annotations

from harness.core.contract import check_size
from harness.core.errors import HarnessError

SHAPE_REFUSAL = "--input-shape must be positive integers separated by commas, e.g. 2,1,16000; got {text!r}"


def parse_positive_ints(text: str, refusal: str) -> tuple[int, ...]:
    """``"2,1,16000"`` -> ``(2, 1, 16000)``: positive integers separated by commas, else one
    ``HarnessError`` line, ``refusal`` with ``{text}`` filled in."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise HarnessError(refusal.format(text=text))
    return shape


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: positive integers separated by commas, small enough to allocate here."""
    shape = parse_positive_ints(text, SHAPE_REFUSAL)
    check_size(shape)  # before anything is allocated: 100000,1,100000 would ask for 40 GB
    return shape
