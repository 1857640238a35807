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
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import tomllib
import torch.nn as nn

from fixed.basic_blocks import RawNet2 as BasicBlocksRawNet2
from fixed.skip_modules import RawNet2 as SkipModulesRawNet2
from fixed.tuple_blocks import RawNet2 as TupleBlocksRawNet2
from harness.core.errors import HarnessError, error_line
from harness.rawnet2.architecture import NONE, PROJECTION, ReferenceSpec
from legacy.rawnet2 import RawNet2 as LegacyRawNet2

Factory = Callable[..., nn.Module]

OUTPUT_KINDS = ("probability", "logits", "any")
MODES = ("train", "eval")
# Deployment forms a spec may list (harness.core.forms.DEPLOYMENT_FORMS); a variant whose
# eval() misses modules cannot be folded, so it lists none.
ALL_FORMS = ("folded", "compiled", "float64", "bfloat16_autocast", "cuda", "onnxruntime")
NOT_APPLICABLE_PREFIX = "n/a:"
TOOL_TABLE = "rawnet2-harness"
SPEC_KEYS = ("factory", "kwargs", "description", "weights", "reference", "reference_modes", "output",
             "expected_defects", "runs", "forms", "layout")


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
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            problems.append(f"factory must be a callable or 'MODULE:ATTR', got {self.factory!r}")
        if problems:
            raise HarnessError(f"variant {self.name!r} ({self.origin}): {'; '.join(problems)}")

    # --- what the spec implies ---------------------------------------------------------------

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

    def replace(self, **changes: object) -> VariantSpec:
        return dataclasses.replace(self, **changes)


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

_LEGACY_FORWARD_RAISES = ("forward raises RuntimeError: the shared skip is block 6's 128->256 projection, "
                          "applied to block 1's 32-channel input")

_BUILT_IN = (
    VariantSpec(
        name="legacy",
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
        factory=SkipModulesRawNet2,
        description="fix guide 'Alternative Implementation': one skipN module per block",
        source="fixed/skip_modules.py",
        layout="skip_modules",
        architecture=ReferenceSpec(),
    ),
    VariantSpec(
        name="basic_blocks",
        factory=BasicBlocksRawNet2,
        description="idiomatic fix: torchvision BasicBlock idiom, shortcut owned and added by each block",
        source="fixed/basic_blocks.py",
        reference="skip_modules",
    ),
    VariantSpec(
        name="legacy_effective",
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


def load_registry_file(path: str | os.PathLike, *, required: bool = True) -> list[VariantSpec]:
    """Register every ``[tool.rawnet2-harness.variants.NAME]`` table of a TOML file.

    Paths in the file (``weights``) are relative to it, and its directory is put on
    ``sys.path`` when a factory is imported. Re-reading the same file replaces what it
    registered before. A missing file is an error only when ``required``.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise HarnessError(f"{path}: no such registry file") from None
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read the registry: {error_line(exc)}") from None
    tables = data.get("tool", {}).get(TOOL_TABLE, {}).get("variants", {})
    if not isinstance(tables, dict):
        raise HarnessError(f"{path}: [tool.{TOOL_TABLE}.variants] must be a table of variant tables")
    origin = str(path.resolve())
    specs = [_spec_from_table(name, table, origin) for name, table in tables.items()]
    # References may name variants of the same file, in any order.
    for spec_ in sorted(specs, key=lambda s: s.reference in tables):
        existing = _SPECS.get(spec_.name)
        if existing is not None and existing.origin not in (origin,):
            raise HarnessError(f"{path}: variant {spec_.name!r} is already registered ({existing.origin})")
        register(spec_, replace=True)
    return specs


def _spec_from_table(name: str, table: object, origin: str) -> VariantSpec:
    where = f"{origin}: [tool.{TOOL_TABLE}.variants.{name}]"
    if not isinstance(table, dict):
        raise HarnessError(f"{where} must be a table")
    if unknown := sorted(set(table) - set(SPEC_KEYS)):
        raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SPEC_KEYS)}")
    if "factory" not in table:
        raise HarnessError(f"{where}: 'factory' (MODULE:ATTR) is required")
    fields = dict(table)
    for key, kind in (("kwargs", dict), ("expected_defects", dict)):
        if key in fields and not isinstance(fields[key], kind):
            raise HarnessError(f"{where}: {key} must be a table")
    if bad := [c for c, r in fields.get("expected_defects", {}).items() if not isinstance(r, str) or not r]:
        raise HarnessError(f"{where}: expected_defects.{bad[0]} must be a non-empty reason string")
    for key in ("reference_modes", "forms"):
        if key in fields:
            fields[key] = tuple(fields[key])
    factory = fields.pop("factory")
    if not isinstance(factory, str):
        raise HarnessError(f"{where}: factory must be a 'MODULE:ATTR' string")
    fields.setdefault("source", factory.partition(":")[0].replace(".", "/") + ".py")
    try:
        return VariantSpec(name=name, factory=factory, origin=origin, **fields)
    except TypeError as exc:
        raise HarnessError(f"{where}: {error_line(exc)}") from None


def load_project_registry(registry: str | os.PathLike | None = None) -> list[VariantSpec]:
    """The CLI's and pytest's start: ``registry`` if given, else ``./pyproject.toml`` when it exists."""
    if registry is not None:
        return load_registry_file(registry)
    return load_registry_file(Path.cwd() / "pyproject.toml", required=False)
