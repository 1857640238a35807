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


def validate_evaluation(doc: object) -> None:
    """Raise ``HarnessError`` (one line: the JSON path and what was expected) unless ``doc`` is an
    evaluation document every renderer can render."""
    problem = _walk(doc, EVALUATION_SCHEMA, "$")
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


def _is_type(value: object, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "array": list, "object": dict}[name])


def _walk(value: object, schema: dict, path: str) -> str | None:
    """The first way ``value`` breaks ``schema`` (the keywords EVALUATION_SCHEMA uses), or None."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return f"{path}: expected {' or '.join(types)}, got {_shown(value)}"
        if value is None:
            return None
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {_shown(schema['const'])}, got {_shown(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: expected one of {', '.join(map(_shown, schema['enum']))}, got {_shown(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: expected a finite number, got {value}"  # JSON holds no NaN or Infinity
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        return f"{path}: expected >= {schema['minimum']}, got {_shown(value)}"
    if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
        return f"{path}: expected <= {schema['maximum']}, got {_shown(value)}"
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        return f"{path}: expected a non-empty string"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"{path}: expected at least {schema['minItems']} items, got {len(value)}"
        for i, item in enumerate(value):
            if "items" in schema and (problem := _walk(item, schema["items"], f"{path}[{i}]")):
                return problem
    if isinstance(value, dict):
        return _walk_object(value, schema, path)
    return None


def _walk_object(value: dict, schema: dict, path: str) -> str | None:
    if len(value) < schema.get("minProperties", 0):
        return f"{path}: expected at least {schema['minProperties']} entries, got {len(value)}"
    for key in schema.get("required", ()):
        if key not in value:
            return f"{_key(path, key)}: missing (required)"
    properties = schema.get("properties", {})
    for key, item in value.items():
        if not isinstance(key, str):
            return f"{path}: expected string keys, got {_shown(key)}"
        sub = properties.get(key, schema.get("additionalProperties"))
        if isinstance(sub, dict) and (problem := _walk(item, sub, _key(path, key))):
            return problem
    return None


@functools.cache
def _jsonschema_validator() -> object:
    import jsonschema

    return jsonschema.Draft202012Validator(EVALUATION_SCHEMA)


def _jsonschema_problem(doc: object) -> str | None:
    """jsonschema's verdict on the same schema (the test extra installs it): anything the walk's
    subset of keywords would miss."""
    try:
        import jsonschema
    except ImportError:
        return None
    error = jsonschema.exceptions.best_match(_jsonschema_validator().iter_errors(doc))
    if error is None:
        return None
    path = "$"
    for part in error.absolute_path:
        path = f"{path}[{part}]" if isinstance(part, int) else _key(path, str(part))
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
