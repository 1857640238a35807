"""``python -m harness``: the command line, ``harness.cli``."""

from __future__ import annotations

import sys

from harness.cli import INTERNAL_ERROR_EXIT, INTERRUPTED_EXIT, STDOUT_CLOSED_EXIT, build_parser, main

__all__ = ["INTERNAL_ERROR_EXIT", "INTERRUPTED_EXIT", "STDOUT_CLOSED_EXIT", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
