"""The ``evaluate`` document's JSON contract: what other tools may read, and what every renderer
(``harness.report.evaluation_render``) relies on.

Complete: a document that ``validate_evaluation`` accepts renders in every format. The checks
are a walk over ``EVALUATION_SCHEMA`` (always), jsonschema on the same schema (when installed),
and the cross-references a schema cannot say (the reference and each pair's systems exist,
the DET and histogram arrays fit together, a pair's flips add up). A failure is one
``HarnessError`` line naming the JSON path.
"""

from __future__ import annotations

import functools
import json
import math
import re

from harness.core.errors import HarnessError
from harness.report.schema import _object

_NAME = {"type": "string", "minLength": 1}
_COUNT = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number"}
_RATE = {"type": "number", "minimum": 0, "maximum": 1}
_RATES = {"type": "array", "items": _RATE}
_COUNTS = {"type": "array", "items": _COUNT}
_SCORE_MEANS = {"enum": ["spoof", "bonafide"]}

_SYSTEM = _object({
    "eer": _RATE,
    "eer_threshold": _NUMBER,
    "min_tdcf": {"type": ["number", "null"], "minimum": 0},
    "min_tdcf_threshold": {"type": ["number", "null"]},
    "n_bonafide": _COUNT,
    "n_spoof": _COUNT,
    "per_attack": {"type": "object", "additionalProperties": _object({"eer": _RATE, "n": _COUNT})},
    "score_means": _SCORE_MEANS,
    "source": {"type": "string"},
    "not_in_protocol": _COUNT,
    "det": _object({"pmiss": _RATES, "pfa": _RATES}),
    "histogram": _object({"edges": {"type": "array", "minItems": 2, "items": _NUMBER},
                          "bonafide": _COUNTS, "spoof": _COUNTS}),
}, min_tdcf_note={"type": "string"})

_PAIR = _object({
    "a": _NAME,
    "b": _NAME,
    "kind": {"enum": ["systems", "form"]},
    "threshold": _NUMBER,
    "flips": _COUNT,
    "bonafide_to_spoof": _COUNT,
    "spoof_to_bonafide": _COUNT,
    "max_abs_score_diff": {"type": "number", "minimum": 0},
    "files": {"type": "array", "items": _object({
        "file": {"type": "string"}, "label": {"enum": ["bonafide", "spoof"]}, "a": _NUMBER, "b": _NUMBER})},
})

# Rates are fractions (0.0123), EER increases percentage points. Every key a renderer reads is
# required, so a document that validates renders; extra keys are allowed everywhere.
EVALUATION_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "rawnet2-harness evaluate",
    **_object({
        "tool": {"type": "string"},
        "format_version": {"const": 1},
        "protocol": _object({"path": {"type": ["string", "null"]}, "kind": {"type": "string"},
                             "n_utterances": _COUNT, "n_bonafide": _COUNT, "n_spoof": _COUNT}),
        "orientation": {"type": "string"},
        "tdcf": {**_object({
            "definition": {"enum": ["2021", "2019"]},
            "name": {"type": "string"},
            "asv_scores": {"type": ["string", "null"]},
            "asv": _object({"eer": _RATE, "threshold": _NUMBER, "pfa": _RATE, "pmiss": _RATE,
                            "pmiss_spoof": _RATE, "pfa_spoof": _RATE}),
        }), "type": ["object", "null"]},  # null: no --asv-scores, no t-DCF
        "reference": _NAME,
        "threshold": _object({"value": _NUMBER, "source": {"type": "string"}}),
        "systems": {"type": "object", "minProperties": 1, "additionalProperties": _SYSTEM},
        "pairs": {"type": "array", "items": _PAIR},
        "gate": _object({
            "passed": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "conditions": _object({"max_eer_increase_pp": {"type": ["number", "null"]},
                                   "max_flips": {"type": ["integer", "null"], "minimum": 0}}),
        }),
    }),
}


# jsonschema reads this many items of each list (~60 us an item: 600,000 flipped files would take
# half a minute); the structural walk reads them all.
JSONSCHEMA_ITEMS = 1000


def validate_evaluation(doc: object) -> None:
    """Raise ``HarnessError`` (one line: the JSON path and what was expected) unless ``doc`` is an
    evaluation document every renderer can render."""
    found = _walk(doc, EVALUATION_SCHEMA)
    problem = None if found is None else f"{_path(found[0])}: {found[1]}"
    if problem is None:
        problem = _jsonschema_problem(doc)
    if problem is None:
        problem = _cross_reference_problem(doc)
    if problem is not None:
        raise HarnessError(f"evaluation document: {problem}")


# --------------------------------------------------------------------------- structural walk

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _key(path: str, key: str) -> str:
    """``$.systems["a b"]``: a JSON path one line long, whatever the key holds."""
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key)}]"


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")  # one line, whatever the value holds
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or \
        (isinstance(value, float) and value.is_integer())


_TYPE_TESTS = {"null": lambda v: v is None, "boolean": lambda v: isinstance(v, bool),
               "integer": _is_integer, "number": _is_number, "string": lambda v: isinstance(v, str),
               "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}

@functools.cache
def _type_tests(types: str | tuple) -> tuple:
    return tuple(_TYPE_TESTS[t] for t in ([types] if isinstance(types, str) else types))


# A problem found by the walk: the path to it (innermost part first: built only on failure, so a
# document of 600,000 flipped files walks in about a second) and what was wrong there.
_Problem = tuple[list, str]


def _walk(value: object, schema: dict) -> _Problem | None:
    """The first way ``value`` breaks ``schema`` (the keywords EVALUATION_SCHEMA uses), or None."""
    types = schema.get("type")
    if types is not None:
        for test in _type_tests(types if isinstance(types, str) else tuple(types)):
            if test(value):
                break
        else:
            types = [types] if isinstance(types, str) else types
            return [], f"expected {' or '.join(types)}, got {_shown(value)}"
        if value is None:
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return [], f"expected a finite number, got {value}"  # JSON holds no NaN or Infinity
    if len(schema) > 1 or "type" not in schema:
        problem = _value_problem(value, schema)
        if problem is not None:
            return [], problem
    if isinstance(value, list) and "items" in schema:
        items = schema["items"]
        for i, item in enumerate(value):
            if (found := _walk(item, items)) is not None:
                found[0].append(i)
                return found
    elif isinstance(value, dict):
        return _walk_object(value, schema)
    return None


def _value_problem(value: object, schema: dict) -> str | None:
    if "const" in schema and value != schema["const"]:
        return f"expected {_shown(schema['const'])}, got {_shown(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"expected one of {', '.join(map(_shown, schema['enum']))}, got {_shown(value)}"
    if "minimum" in schema and _is_number(value) and value < schema["minimum"]:
        return f"expected >= {schema['minimum']}, got {_shown(value)}"
    if "maximum" in schema and _is_number(value) and value > schema["maximum"]:
        return f"expected <= {schema['maximum']}, got {_shown(value)}"
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        return "expected a non-empty string"
    if "minItems" in schema and isinstance(value, list) and len(value) < schema["minItems"]:
        return f"expected at least {schema['minItems']} items, got {len(value)}"
    if "minProperties" in schema and isinstance(value, dict) and len(value) < schema["minProperties"]:
        return f"expected at least {schema['minProperties']} entries, got {len(value)}"
    return None


def _walk_object(value: dict, schema: dict) -> _Problem | None:
    for key in schema.get("required", ()):
        if key not in value:
            return [key], "missing (required)"
    properties, others = schema.get("properties", {}), schema.get("additionalProperties")
    for key, item in value.items():
        if not isinstance(key, str):
            return [], f"expected string keys, got {_shown(key)}"
        sub = properties.get(key, others)
        if sub is not None and (found := _walk(item, sub)) is not None:
            found[0].append(key)
            return found
    return None


def _path(parts: list) -> str:
    """``$.systems["a b"].det.pfa[2]`` from the walk's parts (innermost first)."""
    path = "$"
    for part in reversed(parts):
        path = f"{path}[{part}]" if isinstance(part, int) else _key(path, part)
    return path


@functools.cache
def _jsonschema_validator() -> object:
    import jsonschema

    return jsonschema.Draft202012Validator(EVALUATION_SCHEMA)


def _trimmed(value: object) -> object:
    """``value`` with every list cut to its first ``JSONSCHEMA_ITEMS`` items: jsonschema's second
    opinion on the shape at a bounded cost (the walk has checked every item)."""
    if isinstance(value, list):
        return [_trimmed(item) for item in value[:JSONSCHEMA_ITEMS]]
    if isinstance(value, dict):
        return {key: _trimmed(item) for key, item in value.items()}
    return value


def _jsonschema_problem(doc: object) -> str | None:
    """jsonschema's verdict on the same schema (the test extra installs it): anything the walk's
    subset of keywords would miss."""
    try:
        import jsonschema
    except ImportError:
        return None
    error = jsonschema.exceptions.best_match(_jsonschema_validator().iter_errors(_trimmed(doc)))
    if error is None:
        return None
    path = _path([p if isinstance(p, int) else str(p) for p in reversed(error.absolute_path)])
    message = error.message.splitlines()[0] if error.message else "invalid"
    return f"{path}: {message if len(message) <= 120 else message[:117] + '...'}"


# --------------------------------------------------------------------------- cross-references


def _cross_reference_problem(doc: dict) -> str | None:
    systems = doc["systems"]
    if doc["reference"] not in systems:
        return f"$.reference: {_shown(doc['reference'])} is not one of $.systems"
    for name, system in systems.items():
        path = _key("$.systems", name)
        det, histogram = system["det"], system["histogram"]
        if len(det["pmiss"]) != len(det["pfa"]):
            return (f"{path}.det: expected pmiss and pfa of one length, got {len(det['pmiss'])} "
                    f"and {len(det['pfa'])}")
        edges = histogram["edges"]
        if any(later < earlier for earlier, later in zip(edges, edges[1:], strict=False)):
            return f"{path}.histogram.edges: expected non-decreasing bin edges"
        for label in ("bonafide", "spoof"):
            if len(histogram[label]) != len(edges) - 1:
                return (f"{path}.histogram.{label}: expected {len(edges) - 1} counts (one per bin of "
                        f"{len(edges)} edges), got {len(histogram[label])}")
    for i, pair in enumerate(doc["pairs"]):
        path = f"$.pairs[{i}]"
        for side in ("a", "b"):
            if pair[side] not in systems:
                return f"{path}.{side}: {_shown(pair[side])} is not one of $.systems"
        if pair["bonafide_to_spoof"] + pair["spoof_to_bonafide"] != pair["flips"]:
            return (f"{path}.flips: expected bonafide_to_spoof + spoof_to_bonafide "
                    f"({pair['bonafide_to_spoof']} + {pair['spoof_to_bonafide']}), got {pair['flips']}")
        if len(pair["files"]) != pair["flips"]:
            return f"{path}.files: expected every flipped file ({pair['flips']}), got {len(pair['files'])}"
    return None
