"""The command line's shared pieces: argument types as argparse ``type=`` converters, the model
options (``--kwargs``, ``--weights``) and their help, and model resolution from them.

A converter's refusal is argparse's usage error (exit 2), except ``--kwargs``: its JSON or @FILE
is refused as ``harness.core.loading.parse_kwargs`` words it, one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.loading import parse_kwargs
from harness.rawnet2.score_request import SCORE_FORMS  # noqa: F401 - the verbs' --form choices

if TYPE_CHECKING:
    from harness.rawnet2.registry import VariantSpec

MODEL_HELP = "a registered variant name or MODULE:ATTR (a class or function building the model)"
KWARGS_HELP = "constructor arguments as a JSON object, or @FILE holding one"
# harness.rawnet2.conversion.POLICIES, spelled here so that the parser is built without importing torch.
POLICIES = ("preserve-function", "preserve-weights")


@dataclass(frozen=True)
class Kwargs:
    """A ``--kwargs`` value: the text as given (inline JSON or ``@FILE``) and the object it holds."""

    text: str
    value: dict

    @property
    def file(self) -> str | None:
        """The ``@FILE`` it was read from, else None (inline JSON)."""
        return self.text[1:] if self.text.startswith("@") else None


def kwargs(text: str) -> Kwargs:
    return Kwargs(text, parse_kwargs(text))


def kwargs_file_read(given: Kwargs | None) -> list[tuple[str, str]]:
    """``("the --kwargs file", FILE)`` when ``--kwargs @FILE`` was given: a file the run reads."""
    return [("the --kwargs file", given.file)] if given is not None and given.file is not None else []


def resolve_model(target: str, given: Kwargs | None = None, **fields: object) -> VariantSpec:
    """``harness.rawnet2.registry.resolve`` of a MODEL argument with its ``--kwargs``."""
    from harness.rawnet2.registry import resolve  # here: the parser is built without torch

    return resolve(target, kwargs=given.value if given is not None else None, **fields)


def add_model_options(p: argparse.ArgumentParser, *, weights: bool = True) -> None:
    p.add_argument("--kwargs", type=kwargs, metavar="JSON", help=KWARGS_HELP)
    if weights:
        p.add_argument("--weights", metavar="CKPT",
                       help="load this checkpoint into every instance (weights_only)")


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative(text: str) -> float:
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_finite(text: str) -> float:
    """A finite number > 0 (nan, inf, 0 and negatives would make every mutant time out, or none)."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def percent(text: str) -> float:
    value = finite(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def _whole_number(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    return _whole_number(text, least=0)


def positive_int(text: str) -> int:
    return _whole_number(text, least=1)
