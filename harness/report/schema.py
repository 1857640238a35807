"""The report's JSON contract: what other tools may read, and what every renderer relies on.

Complete: a report that validates against ``REPORT_SCHEMA`` renders in every format
(``harness.report.render``); ``validate`` checks one (jsonschema, from the test extra,
when installed; the structural checks below always).
"""

from __future__ import annotations

from harness.core.audits import FAIL, NOT_APPLICABLE, PASS

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _object(required: dict, **extra: dict) -> dict:
    """An object that must hold ``required`` (name -> schema); extra keys are allowed everywhere."""
    return {"type": "object", "required": list(required), "properties": {**required, **extra}}


_TOLERANCE = _object({"name": {"type": "string"}, "rtol": {"type": "number"}, "atol": {"type": "number"},
                      "reason": {"type": "string"}})

# The JSON contract. Other tools read these keys; extra keys are allowed everywhere.
# used_parameters is null for a model whose forward raises (legacy): it uses no defined
# set of parameters. Every key a renderer reads is required here, so a report that
# validates renders.
REPORT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "rawnet2-harness report",
    **_object({
        "variants": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": _object({
                "registered_parameters": {"type": "integer", "minimum": 0},
                "used_parameters": {"type": ["integer", "null"], "minimum": 0},
                "state_dict_keys": {"type": "integer", "minimum": 0},
                "batchnorms": {"type": "integer", "minimum": 0},
                "batchnorms_reached_by_eval": {"type": "integer", "minimum": 0},
                "forward_error": {"type": ["string", "null"]},
                "audit": {"type": "object", "additionalProperties": {"enum": [PASS, FAIL, NOT_APPLICABLE]}},
                "verdict": {"type": "string", "minLength": 1},
                "ship": {"type": "boolean"},
                "declared_defects": {"type": "object", "additionalProperties": {"type": "string"}},
                "input_shape": {"type": ["array", "null"], "items": {"type": "integer"}},
            }),
        },
        "equivalence": {"type": "array", "items": _object({
            "a": {"type": "string", "minLength": 1},
            "b": {"type": "string", "minLength": 1},
            "mode": {"enum": ["train", "eval"]},
            "max_abs_diff": {"type": ["number", "null"], "minimum": 0},
            "equivalent": {"type": "boolean"},
            "weights": {"type": "string"},
            "tolerance": _TOLERANCE,
        })},
        "checkpoints": {"type": "array", "items": _object({
            "source": {"type": "string"}, "target": {"type": "string"}, "policy": {"type": "string"},
            "loads": {"type": "boolean"}, "function_preserved": {"type": ["boolean", "null"]},
            "max_abs_diff": _NUMBER_OR_NULL, "detail": {"type": "string"},
        })},
        "benchmarks": {"type": "array", "items": _object({
            "variant": {"type": "string", "minLength": 1},
            "device": {"type": "string", "minLength": 1},
            "batch": {"type": "integer", "minimum": 1},
            "length": {"type": "integer", "minimum": 1},
            "median_ms": {"type": "number", "exclusiveMinimum": 0},
            "iqr_ms": {"type": "number", "minimum": 0},
            "repeats": {"type": "integer", "minimum": 1},
            "samples_per_s": {"type": "number"},
            "real_time_factor": {"type": "number"},
            "gflops_per_s": {"type": "number"},
            "peak_fraction": {"type": "number"},
            "form": {"type": "string"},
        })},
        "decisions": _object({
            "corpus": {"type": "string"},
            "n": {"type": "integer", "minimum": 0},
            "n_bonafide": {"type": "integer", "minimum": 0},
            "n_spoof": {"type": "integer", "minimum": 0},
            "quick": {"type": "boolean"},
            "not_run": _STRINGS,
            "rows": {"type": "array", "items": _object({
                "a": {"type": "string", "minLength": 1}, "b": {"type": "string", "minLength": 1},
                "kind": {"enum": ["variant", "form"]}, "how": {"type": "string"},
                "threshold": {"type": "number"}, "n": {"type": "integer", "minimum": 1},
                "flips": {"type": "integer", "minimum": 0},
                "bonafide_to_spoof": {"type": "integer", "minimum": 0},
                "spoof_to_bonafide": {"type": "integer", "minimum": 0},
                "max_abs_score_diff": {"type": "number", "minimum": 0},
                "eer_a": {"type": "number"}, "eer_b": {"type": "number"}, "flipped": _STRINGS,
                "margin": {"type": "number", "minimum": 0},
            })},
        }),
        "timing": _object({
            "device": {"type": "string"},
            "matmul_peak_gflops_per_s": {"type": "number"},
            "caveat": {"type": "string"},
            "machine": _object({"torch_version": {"type": "string"}, "torch_threads": {"type": "integer"},
                                "cpu": {"type": "string"}}, gpu={"type": ["string", "null"]}),
            "ratios": {"type": "array", "items": _object({
                "batch": {"type": "integer"}, "length": {"type": "integer"}, "kind": {"type": "string"},
                "a": {"type": "string"}, "b": {"type": "string"}, "ratio": {"type": "number"}})},
        }),
        "meta": _object({
            "quick": {"type": "boolean"},
            "generated_utc": {"type": "string"},
            "audit_batch": {"type": "integer", "minimum": 1},
            "compare_batch": {"type": "integer", "minimum": 1},
            "checks": _STRINGS,
            "not_run": _STRINGS,
        }),
    }),
}


def validate(report: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``report`` breaks the contract (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(report, REPORT_SCHEMA)
