"""The registry of models under the gate: one spec per variant, everything the harness knows of it.

A ``VariantSpec`` says how to build the model (factory, kwargs, weights), what it must
equal (``reference``, in ``reference_modes``), what its output is (``output``), which
audit results are expected of it and why (``expected_defects``), whether its forward
runs, which deployment forms apply, which checkpoint layout it saves (only the lossy
conversions of the guide's models need one: every other pairing is found by structure,
``harness.core.matching``) and which function of the family it computes, for the golden
functional reference (``architecture``).

The test suite, the report, the benchmarks, golden files and the CLI derive every list
of variants from here. The built-in variants are the guide's models as found
(``legacy``), as proposed (``tuple_blocks``, ``skip_modules``), the idiomatic fix
(``basic_blocks``) and ``legacy_effective``, the legacy model with its shared ``skip``
cleared (the only way its forward runs: what production really ran).

A team adds its own models without editing anything here: ``register(...)`` in Python,
or ``[tool.rawnet2-harness.variants.NAME]`` tables in its ``pyproject.toml`` (read by
``load_registry_file``; the CLI's ``--registry FILE`` and pytest's ``--registry``
name another file).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn as nn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (a dependency there)
    import tomli as tomllib

from fixed.basic_blocks import RawNet2 as BasicBlocksRawNet2
from fixed.skip_modules import RawNet2 as SkipModulesRawNet2
from fixed.tuple_blocks import RawNet2 as TupleBlocksRawNet2
from harness.core.audits import GENERIC_CHECKS, OUTPUT_KINDS
from harness.core.contract import SCORE_MEANINGS, InputContract, ScoreTransform, probe_min_length
from harness.core.errors import HarnessError, error_line
from harness.rawnet2.architecture import NONE, PROJECTION, ReferenceSpec
from legacy.rawnet2 import RawNet2 as LegacyRawNet2

Factory = Callable[..., nn.Module]

MODES = ("train", "eval")
# Deployment forms a spec may list (harness.core.forms.DEPLOYMENT_FORMS); a variant whose
# eval() misses modules cannot be folded, so it lists none.
ALL_FORMS = ("folded", "compiled", "float64", "bfloat16_autocast", "cuda", "onnxruntime")
NOT_APPLICABLE_PREFIX = "n/a:"
TOOL_TABLE = "rawnet2-harness"
# The layouts a spec may declare: the guide's models', whose conversions lose or move weights
# (harness.rawnet2.layouts describes each). Every other model is matched by structure.
_DECLARABLE_LAYOUTS = ("legacy", "tuple_blocks", "skip_modules")
# Every audit check a spec may declare an expected result for.
KNOWN_CHECKS = tuple(GENERIC_CHECKS)
# A variant name: a word (dots and dashes allowed), never MODULE:ATTR, so the two cannot shadow each other.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Shapes probed, in order, for a variant that declares no input_shape: [B, 1, T], then [B, T].
PROBED_INPUT_SHAPES = ((1, 16_000), (16_000,))


def legacy_effective(num_classes: int = 1) -> nn.Module:
    """The legacy model with ``skip`` cleared: the only way its forward runs.

    Blocks 1/3/5 then add an identity shortcut and blocks 2/4/6 add none.
    """
    model = LegacyRawNet2(num_classes=num_classes)
    model.skip = None
    return model


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
        if bad := [f for f in self.forms if f not in ALL_FORMS]:
            problems.append(f"forms {bad} are not among {', '.join(ALL_FORMS)}")
        if self.reference == self.name:
            problems.append("a variant cannot be its own reference")
        if bad := sorted(set(self.expected_defects) - set(KNOWN_CHECKS)):
            problems.append(f"expected_defects names unknown check(s) {', '.join(bad)}; known: "
                            f"{', '.join(KNOWN_CHECKS)}")
        if self.layout is not None and self.layout not in _DECLARABLE_LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {', '.join(_DECLARABLE_LAYOUTS)} "
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
        from harness.core.loading import UserCodeExit, call_user_code

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
        return load_attr(self.factory, base=self._base_dir())

    def _base_dir(self) -> Path | None:
        return Path(self.origin).parent if self.origin.endswith(".toml") else None

    def build(self, **overrides: object) -> nn.Module:
        """A fresh instance: ``factory(**kwargs, **overrides)``, then ``weights`` loaded strictly."""
        from harness.core.loading import call_user_code

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
_CONTRACTS: dict[tuple, InputContract] = {}


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` strictly, through the one safe loader; one-line errors."""
    from harness.core.checkpoints import load_checkpoint

    state = load_checkpoint(path, reference=model.state_dict())  # dtypes checked against the model's own
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise HarnessError(f"{path}: does not fit the model: {detail[:300]}") from None


def load_attr(target: str, *, base: Path | None = None) -> Factory:
    """Import ``MODULE:ATTR`` (with ``base`` on ``sys.path`` first, if given) and return the callable."""
    from harness.core.loading import load_factory

    if base is not None and str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return load_factory(target)


# --- the built-in variants ---------------------------------------------------------------------

# The family's input contract: [B, 1, T], any T >= 1 for a batch of two (a batch of one needs
# T >= 9 in train mode, harness.rawnet2.inputs.min_train_length); 1000 samples keep the gate fast
# and give every check what 4000 or 16000 give (each block sees >= 125 positions).
_FAMILY_CONTRACT = {"input_shape": (1, 1000), "min_length": 1}

_LEGACY_FORWARD_RAISES = ("forward raises RuntimeError: the shared skip is block 6's 128->256 projection, "
                          "applied to block 1's 32-channel input")

_BUILT_IN = (
    VariantSpec(
        name="legacy",
        **_FAMILY_CONTRACT,
        factory=LegacyRawNet2,
        description="original model: one shared self.skip juggled between blocks",
        source="legacy/rawnet2.py",
        # A fresh instance's forward raises before any block output exists, so every check
        # that needs a forward fails; registration (no forward) passes.
        expected_defects={
            check: _LEGACY_FORWARD_RAISES
            for check in ("mode_propagation", "device_transfer", "state_dict_roundtrip", "batch_independence",
                          "gradient_coverage", "determinism", "output_contract", "skip_wiring")
        },
        runs=False,
        forms=(),
        layout="legacy",
    ),
    VariantSpec(
        name="tuple_blocks",
        **_FAMILY_CONTRACT,
        factory=TupleBlocksRawNet2,
        description="fix guide 'Proposed Solution': blocks held as (main, skip) tuples",
        source="fixed/tuple_blocks.py",
        # eval() never reaches the blocks' BatchNorms, so only train mode computes the reference's function.
        reference="skip_modules",
        reference_modes=("train",),
        expected_defects={
            "registration": "blocks are plain (main, skip) tuples: their 51 modules and 564,480 parameters "
                            "are not registered",
            "mode_propagation": "eval()/train() do not reach the tuple members: 15 BatchNorms keep "
                                "their mode",
            "device_transfer": ".to() moves registered tensors only: every block weight and running "
                               "statistic stays behind",
            "state_dict_roundtrip": "the state_dict has 11 keys (conv1, fc1, fc2): no block weight or "
                                    "running statistic is saved",
            "batch_independence": "the block BatchNorms stay in training mode after eval(), so every sample "
                                  "is normalised with the statistics of the whole batch",
            "gradient_coverage": "the forward uses 581,185 parameters, model.parameters() holds 16,705: an "
                                 "optimizer never updates the blocks",
        },
        forms=(),
        layout="tuple_blocks",
        architecture=ReferenceSpec(
            eval_batch_statistics=frozenset(
                {f"res_block{i}" for i in range(1, 7)} | {"skip2", "skip4", "skip6"}),
        ),
    ),
    VariantSpec(
        name="skip_modules",
        **_FAMILY_CONTRACT,
        factory=SkipModulesRawNet2,
        description="fix guide 'Alternative Implementation': one skipN module per block",
        source="fixed/skip_modules.py",
        layout="skip_modules",
        architecture=ReferenceSpec(),
    ),
    VariantSpec(
        name="basic_blocks",
        **_FAMILY_CONTRACT,
        factory=BasicBlocksRawNet2,
        description="idiomatic fix: torchvision BasicBlock idiom, shortcut owned and added by each block",
        source="fixed/basic_blocks.py",
        reference="skip_modules",
    ),
    VariantSpec(
        name="legacy_effective",
        **_FAMILY_CONTRACT,
        factory=legacy_effective,
        description="legacy with skip cleared by hand: identity on blocks 1/3/5, no shortcut on 2/4/6",
        source="harness/rawnet2/registry.py",
        expected_defects={
            "skip_wiring": "blocks 2/4/6 change shape and add no shortcut at all: their output is the "
                           "main path alone",
        },
        layout="legacy",
        architecture=ReferenceSpec(MappingProxyType(
            {i: (NONE if s == PROJECTION else s) for i, s in ReferenceSpec().shortcuts.items()})),
        derived=True,
    ),
)


# --- the registry ------------------------------------------------------------------------------

_SPECS: dict[str, VariantSpec] = {spec.name: spec for spec in _BUILT_IN}


class _FactoryView(Mapping[str, Factory]):
    """Live ``name -> factory`` view of the registered (non-derived) variants: round one's ``VARIANTS``."""

    def __getitem__(self, name: str) -> Factory:
        spec = _SPECS[name]
        if spec.derived:
            raise KeyError(name)
        return _bound_factory(spec)

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in _SPECS.items() if not spec.derived)

    def __len__(self) -> int:
        return sum(not spec.derived for spec in _SPECS.values())


class _SpecView(Mapping[str, VariantSpec]):
    """Live view of the specs, optionally only the non-derived variants."""

    def __init__(self, *, derived: bool) -> None:
        self._derived = derived

    def __getitem__(self, name: str) -> VariantSpec:
        spec = _SPECS[name]
        if spec.derived and not self._derived:
            raise KeyError(name)
        return spec

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in _SPECS.items() if self._derived or not spec.derived)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _bound_factory(spec: VariantSpec) -> Factory:
    def factory(**overrides: object) -> nn.Module:
        return spec.build(**overrides)

    factory.__name__ = factory.__qualname__ = f"build_{spec.name}"
    factory.__doc__ = f"A fresh {spec.name}: {spec.description}"
    return factory


# Everything the audits, the report and the tests cover: variants plus derived forms.
SUBJECTS: Mapping[str, VariantSpec] = _SpecView(derived=True)
# The variants proper (round one's names, kept: scripts read them).
VARIANT_INFO: Mapping[str, VariantSpec] = _SpecView(derived=False)
VARIANTS: Mapping[str, Factory] = _FactoryView()


def register(name: str | VariantSpec, factory: Factory | str | None = None, *, replace: bool = False,
             **fields: object) -> VariantSpec:
    """Put a model under the gate: ``register("prod", "pkg.models:RawNet2", reference="skip_modules")``.

    Takes a ``VariantSpec`` or its fields. A reference must already be registered. An
    existing name is refused unless ``replace=True``. Returns the spec.
    """
    if isinstance(name, VariantSpec):
        spec = name
    else:
        if factory is None:
            raise HarnessError(f"register({name!r}): a factory is required")
        fields.setdefault("origin", "register()")
        spec = VariantSpec(name=name, factory=factory, **fields)
    if not _NAME.match(spec.name):
        raise HarnessError(f"variant name {spec.name!r} ({spec.origin}) must be a non-empty word (letters, "
                           "digits, _ . -), never MODULE:ATTR, which names a factory")
    if spec.name in _SPECS and not replace:
        raise HarnessError(f"variant {spec.name!r} is already registered ({_SPECS[spec.name].origin}); "
                           "pass replace=True to redefine it")
    if spec.reference is not None and spec.reference not in _SPECS:
        raise HarnessError(f"variant {spec.name!r} ({spec.origin}): reference {spec.reference!r} is not "
                           f"registered; known: {', '.join(_SPECS)}")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a variant registered by a team (built-ins stay)."""
    if _SPECS.get(name) is not None and _SPECS[name].origin == "built in":
        raise HarnessError(f"{name!r} is built in and cannot be unregistered")
    _SPECS.pop(name, None)


def in_family(spec: VariantSpec) -> bool:
    """Whether ``spec`` computes a RawNet2 function: it declares a layout, or its ``reference``
    (followed through the registry) does. Then the family's facts apply to it (constructor
    arguments, ``harness.rawnet2.inputs``' rules, the guide's layouts and architecture)."""
    seen: set[str] = set()
    current: VariantSpec | None = spec
    while current is not None and current.name not in seen:
        if current.layout is not None:
            return True
        seen.add(current.name)
        current = _SPECS.get(current.reference) if current.reference else None
    return False


def spec(name: str) -> VariantSpec:
    """The spec of a registered variant or derived form; ``HarnessError`` naming the known ones."""
    try:
        return _SPECS[name]
    except KeyError:
        raise HarnessError(f"unknown variant {name!r}; known: {', '.join(_SPECS)}") from None


def build(name: str, num_classes: int | None = None, **kwargs: object) -> nn.Module:
    """Build a fresh instance of a registered variant (or derived form) by name.

    ``num_classes`` (round one's signature) and ``kwargs`` override the spec's kwargs.
    """
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return spec(name).build(**kwargs)


def resolve(target: str, *, kwargs: Mapping[str, object] | None = None,
            weights: str | os.PathLike | None = None, output: str | None = None) -> VariantSpec:
    """A registered name or ``MODULE:ATTR`` as a spec, with CLI overrides (``--kwargs``, ``--weights``).

    ``MODULE:ATTR`` gives an ad-hoc spec named after it: no reference, no declared defects,
    output ``any`` unless ``output`` says otherwise.
    """
    changes: dict[str, object] = {}
    if target in _SPECS:
        base = _SPECS[target]
    elif ":" in target:
        base = VariantSpec(name=target, factory=target, output="any", forms=ALL_FORMS, origin="command line",
                           source=target.partition(":")[0].replace(".", "/") + ".py")
    else:
        raise HarnessError(f"unknown variant {target!r}: give a registered name ({', '.join(_SPECS)}) "
                           "or MODULE:ATTR")
    if kwargs:
        changes["kwargs"] = {**base.kwargs, **kwargs}
    if weights is not None:
        changes["weights"] = os.fspath(os.path.abspath(weights))
    if output is not None:
        changes["output"] = output
    return base.replace(**changes) if changes else base


# --- pyproject.toml ----------------------------------------------------------------------------


# A registry file is configuration: a megabyte is far more than any team's table of variants.
MAX_REGISTRY_BYTES = 1 << 20

# key -> (the TOML types it may have, what to call it in an error)
_TABLE_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "factory": ((str,), "a 'MODULE:ATTR' string"),
    "kwargs": ((dict,), "a table of constructor arguments"),
    "description": ((str,), "a string"),
    "weights": ((str,), "a checkpoint path (relative to the file)"),
    "reference": ((str,), "a registered variant's name"),
    "reference_modes": ((list,), f"a list of {', '.join(MODES)}"),
    "output": ((str,), f"one of {', '.join(OUTPUT_KINDS)}"),
    "expected_defects": ((dict,), "a table of check = reason"),
    "runs": ((bool,), "true or false"),
    "forms": ((list,), f"a list of {', '.join(ALL_FORMS)}"),
    "layout": ((str,), f"one of {', '.join(_DECLARABLE_LAYOUTS)}"),
    "input_shape": ((list,), "a list of positive integers (one example, no batch), e.g. [1, 16000]"),
    "min_length": ((int,), "a positive integer"),
    "score": ((str,), "probability, sigmoid[k], softmax[k] or log_softmax[k]"),
    "score_means": ((str,), f"one of {', '.join(SCORE_MEANINGS)}"),
}
SPEC_KEYS = tuple(_TABLE_SCHEMA)


def read_registry_tables(path: str | os.PathLike) -> dict[str, object]:
    """The ``[tool.rawnet2-harness.variants]`` tables of a TOML file, each level type-checked.

    The file must be a regular UTF-8 file of at most ``MAX_REGISTRY_BYTES`` (a FIFO or
    ``/dev/zero`` is refused before it is opened for reading).
    """
    from harness.core.fileio import check_regular_input

    info = check_regular_input(path)
    if info.st_size > MAX_REGISTRY_BYTES:
        raise HarnessError(f"{path}: {info.st_size:,} bytes is too large for a registry file (at most "
                           f"{MAX_REGISTRY_BYTES:,})")
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_REGISTRY_BYTES + 1).decode("utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read the registry: {error_line(exc)}") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{path}: the registry is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: not valid TOML: {error_line(exc)}") from None
    node: object = data
    for depth, key in enumerate(("tool", TOOL_TABLE, "variants")):
        where = ".".join(("tool", TOOL_TABLE, "variants")[:depth + 1])
        node = node.get(key, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            raise HarnessError(f"{path}: [{where}] must be a table, got {type(node).__name__} {node!r}")
    return node


def load_registry_file(path: str | os.PathLike, *, required: bool = True) -> list[VariantSpec]:
    """Register every ``[tool.rawnet2-harness.variants.NAME]`` table of a TOML file.

    Every table is validated against ``_TABLE_SCHEMA`` before any is registered (types,
    enums, known checks, names); references may name variants of the same file in any
    order. Paths in the file (``weights``) are relative to it, and its directory is put on
    ``sys.path`` when a factory is imported. Re-reading the same file replaces what it
    registered before. A missing file is an error only when ``required``.
    """
    path = Path(path)
    if not required and not path.exists():
        return []
    tables = read_registry_tables(path)
    origin = str(path.resolve())
    specs = {name: _spec_from_table(name, table, origin) for name, table in tables.items()}
    for spec_ in specs.values():
        existing = _SPECS.get(spec_.name)
        if existing is not None and existing.origin != origin:
            raise HarnessError(f"{path}: variant {spec_.name!r} is already registered ({existing.origin})")
        if spec_.reference is not None and spec_.reference not in specs and spec_.reference not in _SPECS:
            raise HarnessError(f"{origin}: [tool.{TOOL_TABLE}.variants.{spec_.name}]: reference "
                               f"{spec_.reference!r} is not registered; known: "
                               f"{', '.join([*_SPECS, *specs])}")
    for spec_ in _reference_order(specs):
        register(spec_, replace=True)
    return list(specs.values())


def _reference_order(specs: dict[str, VariantSpec]) -> list[VariantSpec]:
    """The file's specs, each after the variant it references (a reference cycle is refused)."""
    ordered: list[VariantSpec] = []
    remaining = dict(specs)
    while remaining:
        ready = [s for s in remaining.values() if s.reference not in remaining]
        if not ready:
            raise HarnessError(f"{next(iter(remaining.values())).origin}: references form a cycle: "
                               f"{', '.join(f'{s.name} -> {s.reference}' for s in remaining.values())}")
        for spec_ in ready:
            ordered.append(spec_)
            del remaining[spec_.name]
    return ordered


def _spec_from_table(name: str, table: object, origin: str) -> VariantSpec:
    where = f"{origin}: [tool.{TOOL_TABLE}.variants.{name}]"
    if not _NAME.match(name):
        raise HarnessError(f"{where}: a variant name must be a non-empty word (letters, digits, _ . -), "
                           "never MODULE:ATTR, which names a factory")
    if not isinstance(table, dict):
        raise HarnessError(f"{where} must be a table, got {type(table).__name__}")
    if unknown := sorted(set(table) - set(SPEC_KEYS)):
        raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SPEC_KEYS)}")
    if "factory" not in table:
        raise HarnessError(f"{where}: 'factory' (MODULE:ATTR) is required")
    for key, value in table.items():
        kinds, what = _TABLE_SCHEMA[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise HarnessError(f"{where}: {key} must be {what}, got {type(value).__name__} {value!r}")
    fields = dict(table)
    if bad := [c for c, r in fields.get("expected_defects", {}).items() if not isinstance(r, str) or not r]:
        raise HarnessError(f"{where}: expected_defects.{bad[0]} must be a non-empty reason string")
    for key in ("reference_modes", "forms", "input_shape"):
        if key in fields:
            if key != "input_shape" and not all(isinstance(v, str) for v in fields[key]):
                raise HarnessError(f"{where}: {key} must be {_TABLE_SCHEMA[key][1]}, got {fields[key]!r}")
            fields[key] = tuple(fields[key])
    if "input_shape" in fields and not all(isinstance(n, int) and not isinstance(n, bool)
                                           for n in fields["input_shape"]):
        raise HarnessError(f"{where}: input_shape must be {_TABLE_SCHEMA['input_shape'][1]}, "
                           f"got {list(fields['input_shape'])!r}")
    factory = fields.pop("factory")
    if ":" not in factory:
        raise HarnessError(f"{where}: factory must be a 'MODULE:ATTR' string, got {factory!r}")
    fields.setdefault("source", factory.partition(":")[0].replace(".", "/") + ".py")
    try:
        return VariantSpec(name=name, factory=factory, origin=origin, **fields)
    except HarnessError as exc:
        raise HarnessError(f"{where}: {str(exc).partition('): ')[2] or exc}") from None
    except TypeError as exc:
        raise HarnessError(f"{where}: {error_line(exc)}") from None


def load_project_registry(registry: str | os.PathLike | None = None, *,
                          directory: str | os.PathLike | None = None) -> list[VariantSpec]:
    """The CLI's and pytest's start: ``registry`` if given, else ``pyproject.toml`` in ``directory``
    (default: the working directory) when it exists."""
    if registry is not None:
        return load_registry_file(registry)
    return load_registry_file(Path(directory or Path.cwd()) / "pyproject.toml", required=False)
