"""Text typed on the command line, turned into what the audits and comparisons take:
``parse_shape`` reads ``--input-shape``.
"""

from __future__ import annotations

from harness.core.contract import check_size
from harness.core.errors import HarnessError


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: positive integers separated by commas, small enough to allocate here."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise HarnessError(f"--input-shape must be positive integers separated by commas, e.g. 2,1,16000; "
                           f"got {text!r}")
    check_size(shape)  # before anything is allocated: 100000,1,100000 would ask for 40 GB
    return shape
