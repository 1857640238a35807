"""The registry of models under the gate: one ``VariantSpec`` per variant, by name.

The test suite, the report, the benchmarks, golden files and the CLI derive every list of
variants from here (``SUBJECTS``, ``VARIANT_INFO``, ``VARIANTS``). It starts with the built-in
variants (``harness.rawnet2.variants``); a team adds its own without editing the harness:
``register(...)`` in Python, or TOML tables (``harness.rawnet2.registry_toml``) registered by
``load_registry_file`` and ``load_project_registry``. The spec's own names
(``harness.rawnet2.spec``) are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch.nn as nn

from harness.core.errors import HarnessError
from harness.core.loading import load_attr  # noqa: F401 - importable from here as before
from harness.rawnet2.registry_toml import (
    MAX_REGISTRY_BYTES,
    SPEC_KEYS,
    TOOL_TABLE,
    read_registry_tables,
    reference_order,
    specs_in_file,
)
from harness.rawnet2.spec import (
    ALL_FORMS,
    KNOWN_CHECKS,
    MODES,
    NOT_APPLICABLE_PREFIX,
    PROBED_INPUT_SHAPES,
    VARIANT_NAME,
    VARIANT_NAME_RULE,
    Factory,
    VariantSpec,
    forget_contracts,
    load_weights,
)
from harness.rawnet2.variants import BUILT_IN, FAMILY_CONTRACT, legacy_effective, without_shared_skip

# The name harness.rawnet2.deploy imports the family's contract fields by.
_FAMILY_CONTRACT = FAMILY_CONTRACT

# The registry's own names, and those of the spec and the built-ins that callers import from here.
__all__ = [
    "ALL_FORMS", "FAMILY_CONTRACT", "Factory", "KNOWN_CHECKS", "MAX_REGISTRY_BYTES", "MODES",
    "NOT_APPLICABLE_PREFIX", "PROBED_INPUT_SHAPES", "SPEC_KEYS", "SUBJECTS", "TOOL_TABLE", "VARIANTS",
    "VARIANT_INFO", "VariantSpec", "build", "in_family", "legacy_effective", "load_project_registry",
    "load_registry_file", "load_weights", "read_registry_tables", "register", "resolve", "spec",
    "unregister", "without_shared_skip",
]

_SPECS: dict[str, VariantSpec] = {spec.name: spec for spec in BUILT_IN}


class _FactoryView(Mapping[str, Factory]):
    """Live ``name -> factory`` view of the registered (non-derived) variants: ``VARIANTS``."""

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
# The variants proper, without the derived forms.
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
    if not VARIANT_NAME.match(spec.name):
        raise HarnessError(f"variant name {spec.name!r} ({spec.origin}) must be {VARIANT_NAME_RULE}")
    if spec.name in _SPECS and not replace:
        raise HarnessError(f"variant {spec.name!r} is already registered ({_SPECS[spec.name].origin}); "
                           "pass replace=True to redefine it")
    if spec.reference is not None and spec.reference not in _SPECS:
        raise HarnessError(f"variant {spec.name!r} ({spec.origin}): reference {spec.reference!r} is not "
                           f"registered; known: {', '.join(_SPECS)}")
    if _SPECS.get(spec.name) is not spec:
        forget_contracts(spec.name)
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a variant registered by a team (built-ins stay)."""
    if _SPECS.get(name) is not None and _SPECS[name].origin == "built in":
        raise HarnessError(f"{name!r} is built in and cannot be unregistered")
    forget_contracts(name)
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

    ``num_classes`` and ``kwargs`` override the spec's kwargs.
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


def load_registry_file(path: str | os.PathLike, *, required: bool = True) -> list[VariantSpec]:
    """Register every ``[tool.rawnet2-harness.variants.NAME]`` table of a TOML file.

    Every table is validated (``registry_toml.specs_in_file``) before any is registered;
    references may name variants of the same file in any order. Re-reading the same file
    replaces what it registered before. A missing file is an error only when ``required``.
    """
    path = Path(path)
    if not required and not path.exists():
        return []
    specs = specs_in_file(path)
    for spec_ in specs.values():
        existing = _SPECS.get(spec_.name)
        if existing is not None and existing.origin != spec_.origin:
            raise HarnessError(f"{path}: variant {spec_.name!r} is already registered ({existing.origin})")
        if spec_.reference is not None and spec_.reference not in specs and spec_.reference not in _SPECS:
            raise HarnessError(f"{spec_.origin}: [tool.{TOOL_TABLE}.variants.{spec_.name}]: reference "
                               f"{spec_.reference!r} is not registered; known: "
                               f"{', '.join([*_SPECS, *specs])}")
    for spec_ in reference_order(specs):
        register(spec_, replace=True)
    return list(specs.values())


def load_project_registry(registry: str | os.PathLike | None = None, *,
                          directory: str | os.PathLike | None = None) -> list[VariantSpec]:
    """The CLI's and pytest's start: ``registry`` if given, else ``pyproject.toml`` in ``directory``
    (default: the working directory) when it exists."""
    if registry is not None:
        return load_registry_file(registry)
    return load_registry_file(Path(directory or Path.cwd()) / "pyproject.toml", required=False)
