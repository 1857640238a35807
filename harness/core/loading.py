"""Running code the harness does not own: importing it, calling it, reading its arguments.

``call_user_code`` runs user code so that a ``sys.exit``, ``KeyboardInterrupt`` or any other
non-``Exception`` unwinding becomes a ``UserCodeExit`` (exit 2), never a silent pass;
``load_attr`` / ``load_factory`` import ``MODULE:ATTR``; ``parse_kwargs`` reads ``--kwargs``
(inline JSON or ``@FILE``). Why and how: docs/registry.md, "User code".
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from harness.core.errors import HarnessError, error_line

T = TypeVar("T")


class UserCodeExit(HarnessError):
    """User code tried to end the process (``sys.exit``, ``KeyboardInterrupt``, ...); exit code 2.

    A ``HarnessError`` like any usage error; its own type so that code catching the user's
    ordinary exceptions (``except Exception``) can let it through (``except UserCodeExit: raise``).
    """


def exit_error(exc: BaseException, what: str) -> UserCodeExit:
    """The ``UserCodeExit`` for a ``BaseException`` that is not an ``Exception``, raised by ``what``."""
    if isinstance(exc, SystemExit):
        return UserCodeExit(f"{what} called sys.exit({exc.code!r})", exit_code=2)
    if isinstance(exc, KeyboardInterrupt):
        # A real Ctrl-C and one raised by the user's code look the same: either way the run stops.
        return UserCodeExit(f"{what} raised KeyboardInterrupt", exit_code=2)
    return UserCodeExit(f"{what} raised {error_line(exc)}", exit_code=2)


def call_user_code(fn: Callable[..., T], *args: Any, what: str, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; a ``BaseException`` that is not an ``Exception`` becomes a ``UserCodeExit``.

    ``what`` names the code in the message (``"the factory"`` -> ``the factory called
    sys.exit(0)``). Ordinary exceptions propagate unchanged.
    """
    try:
        return fn(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:
        raise exit_error(exc, what) from exc


def load_attr(target: str, *, base: str | Path | None = None) -> Any:
    """Import ``MODULE:ATTR`` and return the attribute (dotted ``ATTR`` walks into it).

    ``base`` (a team registry file's directory) goes first on ``sys.path``, unless already
    there, so that the modules beside that file import.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise HarnessError(f"expected MODULE:ATTR (e.g. fixed.skip_modules:RawNet2), got {target!r}")
    if base is not None and str(base) not in sys.path:
        sys.path.insert(0, str(base))
    try:
        module = call_user_code(importlib.import_module, module_name, what=f"importing {module_name!r}")
    except UserCodeExit:
        raise
    except Exception as exc:
        raise HarnessError(f"cannot import {module_name!r}: {error_line(exc)}") from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        owner = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
        try:
            obj = call_user_code(getattr, obj, part, what=f"looking up {target!r}")
        except AttributeError:
            kind = "module" if i == 0 else "object"
            raise HarnessError(f"{kind} {owner!r} has no attribute {part!r}") from None
        except UserCodeExit:
            raise
        except Exception as exc:
            raise HarnessError(f"looking up {target!r} raises {error_line(exc)}") from None
    return obj


def load_factory(target: str, *, base: str | Path | None = None) -> Callable[..., Any]:
    """``load_attr(target, base=base)``, which must be callable (a class or a function building the model)."""
    factory = load_attr(target, base=base)
    if not callable(factory):
        raise HarnessError(f"{target} is a {type(factory).__name__}, not a callable factory")
    return factory


def parse_kwargs(text: str) -> dict[str, Any]:
    """A JSON object, inline (``'{"hidden": 16}'``) or read from a file (``@config.json``).

    Every error is one ``HarnessError`` line (exit code 2) naming the file or the inline
    text and, for bad JSON, the line and column.
    """
    if text.startswith("@"):
        path = Path(text[1:])
        if not text[1:]:
            raise HarnessError("expected @FILE (a JSON file after the @), got '@'")
        source = str(path)
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise HarnessError(f"cannot read {source}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                               ) from None
        except OSError as exc:
            raise HarnessError(f"cannot read {source}: {exc.strerror or error_line(exc)}") from None
    else:
        source, body = "the keyword arguments", text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise HarnessError(f"{source}: invalid JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise HarnessError(f"{source}: invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise HarnessError(f"{source}: expected a JSON object ({{\"name\": value, ...}}), "
                           f"got {type(value).__name__}")
    return value
