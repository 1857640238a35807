"""Team registries in TOML: ``[tool.rawnet2-harness.variants.NAME]`` tables, each a ``VariantSpec``.

A team adds its models without editing the harness: tables in its ``pyproject.toml`` or in
any file the CLI's ``--registry FILE`` and pytest's ``--registry`` name. This module reads
and checks them (``specs_in_file``) and registers nothing: ``load_registry_file`` and
``load_project_registry`` in ``harness.rawnet2.registry`` register what it returns.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (a dependency there)
    import tomli as tomllib

from harness.core.audits import OUTPUT_KINDS
from harness.core.contract import SCORE_MEANINGS
from harness.core.errors import HarnessError, error_line
from harness.core.fileio import check_regular_input
from harness.rawnet2.spec import (
    ALL_FORMS,
    DECLARABLE_LAYOUTS,
    MODES,
    OPT_IN_FORMS,
    VARIANT_NAME,
    VARIANT_NAME_RULE,
    VariantSpec,
)

TOOL_TABLE = "rawnet2-harness"

# A registry file is configuration: a megabyte is far more than any team's table of variants.
MAX_REGISTRY_BYTES = 1 << 20

# The VariantSpec fields a table cannot set -> why: the harness fills them in.
_NOT_IN_TABLES = {
    "name": "the table's own name",
    "source": "the factory's module file, from the factory",
    "architecture": "a Python object: the built-in variants' golden reference",
    "derived": "marks the built-in derived forms",
    "origin": "the registry file's path",
}
# The keys a variant table may hold: every other field of VariantSpec.
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(VariantSpec) if f.name not in _NOT_IN_TABLES)

# key -> (the TOML types it may have, what to call it in an error); one entry per SPEC_KEYS.
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
    "forms": ((list,), f"a list of {', '.join(ALL_FORMS + OPT_IN_FORMS)}"),
    "layout": ((str,), f"one of {', '.join(DECLARABLE_LAYOUTS)}"),
    "input_shape": ((list,), "a list of positive integers (one example, no batch), e.g. [1, 16000]"),
    "min_length": ((int,), "a positive integer"),
    "score": ((str,), "probability, sigmoid[k], softmax[k] or log_softmax[k]"),
    "score_means": ((str,), f"one of {', '.join(SCORE_MEANINGS)}"),
}


def read_registry_tables(path: str | os.PathLike) -> dict[str, object]:
    """The ``[tool.rawnet2-harness.variants]`` tables of a TOML file, each level type-checked.

    The file must be a regular UTF-8 file of at most ``MAX_REGISTRY_BYTES`` (a FIFO or
    ``/dev/zero`` is refused before it is opened for reading).
    """
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


def specs_in_file(path: str | os.PathLike) -> dict[str, VariantSpec]:
    """Every ``[tool.rawnet2-harness.variants.NAME]`` table of a TOML file as a spec, by name.

    Every table is validated against the schema (types, enums, known checks, names), none
    registered. Each spec's ``origin`` is the file's resolved path: ``weights`` are relative
    to it, and its directory goes on ``sys.path`` when a factory is imported.
    """
    tables = read_registry_tables(path)
    origin = str(Path(path).resolve())
    return {name: _spec_from_table(name, table, origin) for name, table in tables.items()}


def _spec_from_table(name: str, table: object, origin: str) -> VariantSpec:
    where = f"{origin}: [tool.{TOOL_TABLE}.variants.{name}]"
    if not VARIANT_NAME.match(name):
        raise HarnessError(f"{where}: a variant name must be {VARIANT_NAME_RULE}")
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


def reference_order(specs: dict[str, VariantSpec]) -> list[VariantSpec]:
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
