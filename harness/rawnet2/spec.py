"""A variant's spec: everything the harness knows of one model under the gate.

``VariantSpec`` says how to build the model (factory, kwargs, weights), what it must equal
(``reference``, in ``reference_modes``), what its output is and how a score comes from it,
which audit results are expected of it and why (``expected_defects``), which deployment
forms apply, which checkpoint layout it saves and which function of the family it
computes (``architecture``). The registry (``harness.rawnet2.registry``) holds the specs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.audits import GENERIC_CHECKS, OUTPUT_KINDS
from harness.core.contract import SCORE_MEANINGS, InputContract, ScoreTransform, probe_min_length
from harness.core.errors import HarnessError, error_line
from harness.core.loading import UserCodeExit, call_user_code, load_factory
from harness.core.modes import MODES
from harness.rawnet2.architecture import ReferenceSpec
from harness.rawnet2.score_request import INT8_FORM

Factory = Callable[..., nn.Module]

# Deployment forms a spec may list (harness.core.forms.DEPLOYMENT_FORMS); a variant whose
# eval() misses modules cannot be folded, so it lists none.
ALL_FORMS = ("folded", "compiled", "float64", "bfloat16_autocast", "cuda", "onnxruntime")
# Forms a spec lists only to opt in: with onnxruntime-int8 listed, score's --form auto takes the int8
# form first (it changes scores, so it is never a default).
OPT_IN_FORMS = (INT8_FORM,)
NOT_APPLICABLE_PREFIX = "n/a:"
# The layouts a spec may declare: the guide's models', whose conversions lose or move weights
# (harness.rawnet2.layouts describes each). Every other model is matched by structure.
DECLARABLE_LAYOUTS = ("legacy", "tuple_blocks", "skip_modules")
# Every audit check a spec may declare an expected result for.
KNOWN_CHECKS = tuple(GENERIC_CHECKS)
# A variant name: a word (dots and dashes allowed), never MODULE:ATTR, so the two cannot shadow each other.
VARIANT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
VARIANT_NAME_RULE = "a non-empty word (letters, digits, _ . -), never MODULE:ATTR, which names a factory"
# Shapes probed, in order, for a variant that declares no input_shape: [B, 1, T], then [B, T].
PROBED_INPUT_SHAPES = ((1, 16_000), (16_000,))


@dataclass(frozen=True)
class VariantSpec:
    """Everything the harness knows about one model under the gate.

    ``factory`` is a callable or ``"MODULE:ATTR"`` (imported when first built);
    ``expected_defects`` maps an audit check to why it is expected to fail, or to
    ``"n/a: why"`` when it is expected not to apply; ``weights`` is a checkpoint every
    built instance loads (through the safe loader); ``reference`` names a registered
    variant whose function this one must compute exactly, in ``reference_modes``.
    ``derived`` marks a form of another variant (``legacy_effective``) rather than a
    variant of its own; ``VARIANTS`` leaves those out.
    """

    name: str
    factory: Factory | str
    kwargs: Mapping[str, object] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    weights: str | None = None
    reference: str | None = None
    reference_modes: tuple[str, ...] = MODES
    output: str = "probability"
    expected_defects: Mapping[str, str] = field(default_factory=dict)
    runs: bool = True
    forms: tuple[str, ...] = ALL_FORMS
    layout: str | None = None
    input_shape: tuple[int, ...] | None = None
    min_length: int | None = None
    score: str | None = None
    score_means: str = "spoof"
    architecture: ReferenceSpec | None = None
    derived: bool = False
    origin: str = "built in"  # where it was registered: "built in", a pyproject path, "register()"

    def __post_init__(self) -> None:
        problems = []
        if self.output not in OUTPUT_KINDS:
            problems.append(f"output {self.output!r} is not one of {', '.join(OUTPUT_KINDS)}")
        if bad := [m for m in self.reference_modes if m not in MODES]:
            problems.append(f"reference_modes {bad} are not among {', '.join(MODES)}")
        if bad := [f for f in self.forms if f not in ALL_FORMS + OPT_IN_FORMS]:
            problems.append(f"forms {bad} are not among {', '.join(ALL_FORMS + OPT_IN_FORMS)}")
        if self.reference == self.name:
            problems.append("a variant cannot be its own reference")
        if bad := sorted(set(self.expected_defects) - set(KNOWN_CHECKS)):
            problems.append(f"expected_defects names unknown check(s) {', '.join(bad)}; known: "
                            f"{', '.join(KNOWN_CHECKS)}")
        if self.layout is not None and self.layout not in DECLARABLE_LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {', '.join(DECLARABLE_LAYOUTS)} "
                            "(any other model's checkpoints are matched by structure: leave layout out)")
        if self.score_means not in SCORE_MEANINGS:
            problems.append(f"score_means {self.score_means!r} is not one of {', '.join(SCORE_MEANINGS)}")
        for check in (self._check_contract, self._check_score):
            try:
                check()
            except HarnessError as exc:
                problems.append(str(exc))
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            problems.append(f"factory must be a callable or 'MODULE:ATTR', got {self.factory!r}")
        if problems:
            raise HarnessError(f"variant {self.name!r} ({self.origin}): {'; '.join(problems)}")

    def _check_contract(self) -> None:
        if self.input_shape is not None:
            InputContract(tuple(self.input_shape), self.min_length or 1)
        elif self.min_length is not None:
            InputContract((self.min_length,), self.min_length)

    def _check_score(self) -> None:
        if self.score is not None:
            ScoreTransform.parse(self.score, self.score_means)

    # --- what the spec implies ---------------------------------------------------------------

    @property
    def score_transform(self) -> ScoreTransform | None:
        """How a detection score comes from the output: the declared ``score``, or ``probability``
        for a model whose output is a probability; None when the spec says no way."""
        if self.score is not None:
            return ScoreTransform.parse(self.score, self.score_means)
        if self.output == "probability":
            return ScoreTransform("probability", None, self.score_means)
        return None

    def score_refusal(self) -> str:
        """Why this variant cannot be scored (``score_transform`` is None)."""
        return (f"{self.name} declares output {self.output!r} and no score transform: say how a score "
                "comes from its output with score = \"sigmoid[k]\", \"softmax[k]\" or \"log_softmax[k]\"")

    def input_contract(self) -> InputContract:
        """The example shape and minimum length every input for this variant follows.

        Declared (``input_shape``, ``min_length``), else probed once on a fresh instance:
        the first of ``PROBED_INPUT_SHAPES`` whose forward runs, and the shortest length at
        which a train- and eval-mode forward of a batch of two run.
        """
        key = (self.name, self.origin, repr(self.factory), repr(sorted(self.kwargs.items())),
               self.input_shape, self.min_length)
        if key not in _CONTRACTS:
            _CONTRACTS[key] = self._probe_contract()
        return _CONTRACTS[key]

    def _probe_contract(self) -> InputContract:
        if self.input_shape is not None and self.min_length is not None:
            return InputContract(tuple(self.input_shape), self.min_length)
        candidates = [tuple(self.input_shape)] if self.input_shape is not None else PROBED_INPUT_SHAPES
        with torch.random.fork_rng(devices=[]):
            try:
                model = self.build()
            except UserCodeExit:
                raise
            except Exception:  # noqa: BLE001 - the audits and commands report a factory that raises
                return InputContract(candidates[0], self.min_length or 1)

            def forward(x: torch.Tensor) -> object:
                model.eval()
                call_user_code(model, x, what="the forward")
                model.train()
                return call_user_code(model, x, what="the forward")

            for shape in candidates:
                found = probe_min_length(forward, InputContract(shape))
                if found is not None:
                    return InputContract(shape, self.min_length or found)
        return InputContract(candidates[0], self.min_length or 1)

    def example(self, batch: int = 2, length: int | None = None, *, seed: int = 0) -> torch.Tensor:
        """A seeded example batch of this variant's input contract."""
        return self.input_contract().example(batch, length, seed=seed)

    @property
    def checkpoint_layout(self) -> str | None:
        """The declared state_dict layout its checkpoints have (``harness.rawnet2.layouts``), if any."""
        return self.layout

    @property
    def declared_defects(self) -> dict[str, str]:
        """Checks expected to fail -> why (the ``n/a`` declarations left out)."""
        return {c: r for c, r in self.expected_defects.items() if not r.startswith(NOT_APPLICABLE_PREFIX)}

    @property
    def declared_not_applicable(self) -> dict[str, str]:
        """Checks expected not to apply -> why."""
        return {c: r.removeprefix(NOT_APPLICABLE_PREFIX).strip() for c, r in self.expected_defects.items()
                if r.startswith(NOT_APPLICABLE_PREFIX)}

    @property
    def golden_modes(self) -> tuple[str, ...]:
        """Modes its own golden file records: those its reference does not already vouch for."""
        if not self.runs:
            return ()
        covered = self.reference_modes if self.reference else ()
        return tuple(m for m in MODES if m not in covered)

    def resolve_factory(self) -> Factory:
        """The callable, importing ``MODULE:ATTR`` on first use (one-line ``HarnessError`` if it fails)."""
        if callable(self.factory):
            return self.factory
        return load_factory(self.factory, base=self._base_dir())

    def _base_dir(self) -> Path | None:
        return Path(self.origin).parent if self.origin.endswith(".toml") else None

    def build(self, **overrides: object) -> nn.Module:
        """A fresh instance: ``factory(**kwargs, **overrides)``, then ``weights`` loaded strictly."""
        factory = self.resolve_factory()
        model = call_user_code(factory, what=f"the factory of {self.name}", **{**self.kwargs, **overrides})
        if not isinstance(model, nn.Module):
            raise HarnessError(f"the factory of {self.name} returned {type(model).__name__}, "
                               "not an nn.Module")
        if self.weights is not None:
            load_weights(model, self.weights_path)
        return model

    def build_or_refuse(self, **overrides: object) -> nn.Module:
        """``build``, with a factory's ordinary exception turned into a one-line usage error (exit 2):
        a model that cannot even be built is the caller's problem, never an audit finding."""
        try:
            return self.build(**overrides)
        except HarnessError:
            raise
        except Exception as exc:
            raise HarnessError(f"cannot build {self.name}: the factory raises {error_line(exc)}") from None

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        path = Path(self.weights)
        base = self._base_dir()
        return path if path.is_absolute() or base is None else base / path

    def files_read(self) -> list[Path]:
        """Every file building this variant reads: its registered weights, the registry file it
        came from and its factory's source file (a run must never write over any of them)."""
        paths = [self.weights_path] if self.weights_path is not None else []
        if self.origin.endswith(".toml"):
            paths.append(Path(self.origin))
        try:
            factory = self.resolve_factory()
            source = sys.modules[factory.__module__].__file__
        except Exception:  # noqa: BLE001 - a factory that cannot be imported reads nothing yet
            source = None
        if source:
            paths.append(Path(source))
        return paths

    def replace(self, **changes: object) -> VariantSpec:
        return dataclasses.replace(self, **changes)


# input_contract() results: probing builds the model and runs it a dozen times, so once per spec.
# The key (name first) cannot tell apart two factories whose repr is the same (two classes of one
# qualified name), so the registry forgets a name's contracts when it (un)registers that name.
_CONTRACTS: dict[tuple, InputContract] = {}


def forget_contracts(name: str) -> None:
    """Drop the cached input contracts of every spec named ``name`` (it is being redefined)."""
    for key in [key for key in _CONTRACTS if key[0] == name]:
        del _CONTRACTS[key]


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` strictly, through the one safe loader; one-line errors."""
    from harness.core.checkpoints import load_checkpoint

    state = load_checkpoint(path, reference=model.state_dict())  # dtypes checked against the model's own
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise HarnessError(f"{path}: does not fit the model: {detail[:300]}") from None
