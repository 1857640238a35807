"""What every check is handed (``AuditContext``: fresh seeded instances, the example input,
guarded forwards, the tensors the forward uses) and what a check may raise.

A check has the shape ``check(ctx) -> list[Finding]`` (an empty list is a pass) and raises
``NotApplicable(reason)`` when it cannot apply; a ``CheckTable`` names checks in report order.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from harness.core.audits.outputs import Outputs, flatten_output
from harness.core.audits.results import Finding
from harness.core.contract import ScoreTransform
from harness.core.errors import HarnessError, error_line
from harness.core.introspect import Held, used_tensors
from harness.core.loading import UserCodeExit, call_user_code
from harness.core.text import counted

# Seeds of the two instances state_dict_roundtrip compares; every other check uses the first.
BUILD_SEED, OTHER_SEED = 0, 1


class NotApplicable(Exception):
    """Raised by a check that cannot apply to this model or input; the message says why."""


class ModelFailure(Exception):
    """The model failed in a way that fails the running check (e.g. its forward raised)."""


class AuditContext:
    """What every check gets: fresh instances, the example, guarded forwards, the used tensors.

    ``output`` is the kind of output the model promises (``OUTPUT_KINDS``) and ``score``
    how a detection score comes from it (a ``harness.core.contract.ScoreTransform``, or None);
    only ``output_contract`` reads them.
    """

    def __init__(self, factory: Callable[[], nn.Module], example: torch.Tensor, output: str = "any",
                 score: ScoreTransform | None = None) -> None:
        self.factory = factory
        self.example = example
        self.output = output
        self.score = score
        self._built: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._used: list[Held] | None = None
        self.check = ""  # the check running now; names its findings
        self.notes: list[str] = []

    def finding(self, message: str, paths: Iterable[str] = ()) -> Finding:
        return Finding(self.check, message, tuple(paths))

    def build(self, seed: int = BUILD_SEED) -> nn.Module:
        """A fresh instance, initialised under ``seed`` (the global RNG is left as it was).

        An ordinary exception from the factory is a ``ModelFailure``; ``sys.exit`` and the other
        non-``Exception`` exits are a ``UserCodeExit`` (``HarnessError``, exit 2) that stops the audit.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = call_user_code(self.factory, what="the factory")
            except UserCodeExit:
                raise
            except Exception as exc:
                raise ModelFailure(f"factory raises {error_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise HarnessError(f"the factory returned {type(model).__name__}, not an nn.Module")
        if model in self._built:
            # Checks move, reload and retrain what they build: a shared instance would leak.
            raise HarnessError("the factory returned an instance it returned before; "
                               "it must build a fresh one")
        self._built.add(model)
        return model

    def forward(self, model: nn.Module, x: torch.Tensor | None = None) -> object:
        """``model(x)`` (default: the example) in whatever mode the model is in, as returned.

        The output must be a tensor or a tuple, list, dict, namedtuple or dataclass of
        tensors (nested freely; None leaves are ignored): anything else is a ``ModelFailure``.
        """
        return self.outputs(model, x).raw

    def outputs(self, model: nn.Module, x: torch.Tensor | None = None) -> Outputs:
        """``model(x)`` as its tensor leaves (``Outputs``), checked as ``forward`` says."""
        x = self.example if x is None else x
        mode = "train" if model.training else "eval"
        try:
            out = call_user_code(model, x, what="the forward")
        except UserCodeExit:
            raise
        except Exception as exc:
            raise ModelFailure(f"forward raises {error_line(exc)} ({mode} mode)") from exc
        leaves, others = flatten_output(out)
        if others:
            key, obj = others[0]
            where = f" at output {key}" if key else ""
            more = f" (and {counted(len(others) - 1, 'other non-tensor leaf')})" if len(others) > 1 else ""
            raise ModelFailure(f"forward returns {type(obj).__name__}{where}, not a tensor{more} "
                               f"({mode} mode)")
        if not leaves:
            raise ModelFailure(f"forward returns {type(out).__name__} holding no tensor ({mode} mode)")
        return Outputs(out, tuple(leaves))

    def used(self) -> list[Held]:
        """The held tensors one eval forward of a fresh instance passes to torch (cached)."""
        if self._used is None:
            model = self.build().eval()
            try:
                self._used = call_user_code(used_tensors, model, self.example, what="the forward")
            except UserCodeExit:
                raise
            except Exception as exc:
                raise ModelFailure(f"forward raises {error_line(exc)} (eval mode)") from exc
        return self._used


Check = Callable[[AuditContext], list[Finding]]
CheckTable = Mapping[str, Check]
