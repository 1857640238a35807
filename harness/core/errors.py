"""The one exception type the CLI turns into a one-line message and an exit code."""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing failure: bad input, bad file, impossible request.

    ``exit_code`` follows the CLI convention: 1 for findings or failed inputs,
    2 for usage, import and file errors.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how any exception is shown in one line."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
