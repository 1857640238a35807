"""The reviewer report: data against the JSON schema, derived verdicts, renderings, CLI contract."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.__main__ import main
from harness.core.audits import FAIL, NOT_APPLICABLE, PASS
from harness.core.introspect import Structure
from harness.rawnet2.audits import CHECKS
from harness.rawnet2.bench import timed_forms
from harness.rawnet2.registry import SUBJECTS, in_family
from harness.report import (
    QUICK,
    REPORT_SCHEMA,
    render_html,
    render_json,
    render_markdown,
    verdict,
)
from tests.helpers import replace_build_report

SOUND = Structure(registered_parameters=100, used_parameters=100, state_dict_keys=10, batchnorms=2,
                  batchnorms_reached_by_eval=2, forward_error=None)


def _synthetic_report() -> dict:
    """A small report in the shape build_report returns, for rendering and CLI tests."""
    variant = {
        "registered_parameters": 100, "used_parameters": 100, "state_dict_keys": 10, "batchnorms": 2,
        "batchnorms_reached_by_eval": 2, "forward_error": None, "audit": dict.fromkeys(CHECKS, PASS),
        "verdict": "ship: passes", "ship": True, "reasons": ["passes"], "description": "d", "source": "s",
        "declared_defects": {}, "findings": {}, "audit_notes": {}, "input_shape": [2, 1, 1000],
    }
    broken = {**variant, "used_parameters": None, "forward_error": "RuntimeError: <script>x | y</script>",
              "audit": {**variant["audit"], "skip_wiring": FAIL}, "verdict": "do not ship: a | b",
              "ship": False, "declared_defects": {"skip_wiring": "why"}}
    bench_row = {"variant": "skip_modules", "device": "cpu", "batch": 1, "length": 2000, "median_ms": 10.0,
                 "iqr_ms": 1.0, "repeats": 3, "flops": 10**9, "samples_per_s": 100.0,
                 "real_time_factor": 0.08, "gflops_per_s": 100.0, "peak_fraction": 0.5, "form": "eager"}
    return {
        "variants": {"skip_modules": variant, "legacy": broken},
        "equivalence": [{"a": "tuple_blocks", "b": "skip_modules", "mode": "eval", "max_abs_diff": 0.25,
                         "equivalent": False, "weights": "copy_weights",
                         "tolerance": {"name": "EXACT", "rtol": 0.0, "atol": 0.0, "reason": "r"}}],
        "benchmarks": [bench_row],
        "checkpoints": [{"source": "legacy", "target": "tuple_blocks", "policy": "preserve-function",
                         "loads": False, "max_abs_diff": None, "function_preserved": None,
                         "detail": "no room"}],
        "decisions": {"corpus": "the <b>corpus</b>", "n": 4, "n_bonafide": 2, "n_spoof": 2, "quick": True,
                      "not_run": ["x"], "rows": [
                          {"a": "skip_modules", "b": "tuple_blocks", "kind": "variant", "how": "copy_weights",
                           "threshold": -0.5, "n": 4, "flips": 1, "bonafide_to_spoof": 1,
                           "spoof_to_bonafide": 0, "max_abs_score_diff": 0.25, "eer_a": 0.0, "eer_b": 0.5,
                           "flipped": ["U|1"], "margin": 0.01}]},
        "timing": {"device": "cpu", "matmul_peak_gflops_per_s": 200.0, "caveat": "noisy",
                   "machine": {"torch_version": "2", "torch_threads": 2, "cpu": "cpu", "gpu": None},
                   "ratios": [{"batch": 1, "length": 2000, "kind": "time over its reference's",
                               "a": "tuple_blocks", "b": "skip_modules", "ratio": 1.02}]},
        "meta": {"quick": True, "generated_utc": "now", "audit_batch": 2,
                 "compare_batch": 2, "checks": list(CHECKS), "not_run": ["compiled"]},
    }


# --------------------------------------------------------------------------- the real thing, once


def test_quick_report_json_validates_and_follows_the_declarations(tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "report.json"
    assert main(["report", "--quick", "--format", "json", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # the report went to the file, progress to stderr
    assert "auditing skip_modules" in captured.err and f"wrote {out}" in captured.err

    report = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(report, REPORT_SCHEMA)
    assert set(report["variants"]) == set(SUBJECTS)
    for name, v in report["variants"].items():
        assert set(v["audit"]) == set(CHECKS), name
        # The verdict follows the declarations: only a variant declaring no defect may ship.
        assert v["ship"] == (not SUBJECTS[name].expected_defects), (name, v["verdict"])
        assert v["verdict"].startswith("ship: " if v["ship"] else "do not ship: ")
    configs = len(QUICK.batches) * len(QUICK.lengths)
    assert len(report["benchmarks"]) == configs * len(timed_forms())
    for row in report["checkpoints"]:
        if "tuple_blocks" in (row["source"], row["target"]):
            assert not row["loads"], row  # its state_dict cannot hold the blocks
        elif row["source"] == row["target"] or (row["policy"] == "preserve-function" and row["loads"]):
            assert row["function_preserved"], row
    # Decisions: every scored variant with a reference next to it, every quick form next to eager;
    # a variant holding its reference's function (matched weights) decides alike.
    decisions = report["decisions"]
    pairs = {(row["a"], row["b"]): row for row in decisions["rows"]}
    for name, variant in SUBJECTS.items():
        reference = variant.reference or ("skip_modules" if in_family(variant) and name != "skip_modules"
                                          else None)
        if variant.runs and variant.score_transform is not None and reference is not None:
            assert (reference, name) in pairs or any(name in item for item in decisions["not_run"]), name
    assert pairs["skip_modules", "basic_blocks"]["flips"] == 0
    assert pairs["skip_modules", "basic_blocks"]["max_abs_score_diff"] == 0.0
    for row in decisions["rows"]:  # a decision flips only where b moved a score past a's margin
        assert row["flips"] == 0 or row["max_abs_score_diff"] >= row["margin"], row
    markdown = render_markdown(report)  # the JSON round-trip renders like the in-memory data
    assert all(v["verdict"] in markdown for v in report["variants"].values())
    assert "## Decisions" in markdown


# --------------------------------------------------------------------------- schema


def test_schema_accepts_the_synthetic_report() -> None:
    jsonschema.validate(_synthetic_report(), REPORT_SCHEMA)


@pytest.mark.parametrize("breakage", [
    lambda r: r.pop("benchmarks"),
    lambda r: r["variants"]["skip_modules"].pop("verdict"),
    lambda r: r["variants"]["skip_modules"]["audit"].update(registration="ok"),
    lambda r: r["variants"]["skip_modules"].update(state_dict_keys=True),
    lambda r: r["equivalence"][0].update(mode="inference"),
    lambda r: r["equivalence"][0].update(max_abs_diff=-1.0),
    lambda r: r["benchmarks"][0].update(median_ms=0),
    lambda r: r["benchmarks"][0].update(batch=1.5),
], ids=["no-benchmarks", "no-verdict", "bad-audit-result", "bool-as-int", "bad-mode", "negative-diff",
        "zero-time", "float-batch"])
def test_schema_rejects_a_broken_report(breakage) -> None:
    report = _synthetic_report()
    breakage(report)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)


# --------------------------------------------------------------------------- verdict


results_strategy = st.fixed_dictionaries({c: st.sampled_from([PASS, FAIL, NOT_APPLICABLE]) for c in CHECKS})


@given(
    results=results_strategy,
    declared=st.sets(st.sampled_from(list(CHECKS))),
    hidden=st.integers(0, 50),
    missed_norms=st.integers(0, 2),
    raises=st.booleans(),
)
def test_verdict_ships_only_a_sound_model(results, declared, hidden, missed_norms, raises) -> None:
    structure = Structure(registered_parameters=100, used_parameters=None if raises else 100 + hidden,
                          state_dict_keys=10, batchnorms=2, batchnorms_reached_by_eval=2 - missed_norms,
                          forward_error="RuntimeError: boom" if raises else None)
    judged = verdict(structure, results, dict.fromkeys(declared, "why"))
    failed = [c for c, r in results.items() if r == FAIL]
    assert judged.ship == (not failed and not raises and not hidden and not missed_norms)
    assert judged.line.startswith("ship: " if judged.ship else "do not ship: ")
    assert all(check in judged.line for check in failed)
    undeclared = [c for c in failed if c not in declared]
    assert ("undeclared" in judged.line) == bool(undeclared)


def test_verdict_names_each_structural_defect() -> None:
    hidden = Structure(registered_parameters=16_705, used_parameters=581_185, state_dict_keys=11,
                       batchnorms=16, batchnorms_reached_by_eval=1, forward_error=None)
    line = verdict(hidden, dict.fromkeys(CHECKS, PASS), {}).line
    assert "564,480 of the 581,185 parameters the forward uses are unregistered" in line
    assert "eval() misses 15 of 16 BatchNorms" in line
    raising = Structure(registered_parameters=1, used_parameters=None, state_dict_keys=1, batchnorms=0,
                        batchnorms_reached_by_eval=0, forward_error="RuntimeError: Given groups=1, ...")
    assert verdict(raising, {}, {}).line == "do not ship: forward raises RuntimeError on a fresh model"


# --------------------------------------------------------------------------- renderings


def test_markdown_has_every_section_and_escapes_pipes() -> None:
    text = render_markdown(_synthetic_report())
    for title in ("Verdict", "Structure", "Audit matrix", "Equivalence", "Checkpoint compatibility",
                  "Forward timing", "Targets as measured"):
        assert f"\n## {title}\n" in text
    assert "do not ship: a \\| b" in text  # a pipe inside a cell does not split the row
    assert "| skip_wiring | pass | fail |" in text


def test_html_is_self_contained_and_escaped() -> None:
    report = _synthetic_report()
    report["equivalence"][0]["stages"] = [
        {"ref": "conv1.0", "other": "stem.0", "max_abs_diff": 0.0},
        {"ref": "res_block1.1", "other": "layers.0.bn1", "max_abs_diff": 4.3}]
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "&lt;script&gt;" in page
    # The charts are inline SVG: the SVG namespace is the only URI in the page.
    assert page.count("<svg") == 2 and "res_block1.1" in page
    page = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in page


def test_json_refuses_non_finite_numbers() -> None:
    report = _synthetic_report()
    assert json.loads(render_json(report)) == report
    report["equivalence"][0]["max_abs_diff"] = float("nan")
    with pytest.raises(ValueError):
        render_json(report)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def synthetic(monkeypatch) -> list[dict]:
    """build_report replaced by the synthetic report; records the arguments of each call."""
    return replace_build_report(monkeypatch, _synthetic_report())


@pytest.mark.parametrize("fmt, marker", [("markdown", "# RawNet2 variants"), ("html", "<!DOCTYPE html>"),
                                         ("json", '"variants"')])
def test_cli_prints_each_format_to_stdout(synthetic, capsys, fmt: str, marker: str) -> None:
    assert main(["report", "--quick", "--format", fmt]) == 0
    captured = capsys.readouterr()
    assert marker in captured.out
    assert "measuring" in captured.err
    assert [(call["quick"], call["device"]) for call in synthetic] == [(True, "cpu")]


def test_cli_output_into_a_missing_directory_fails_before_measuring(synthetic, tmp_path, capsys) -> None:
    target = tmp_path / "missing" / "report.md"
    assert main(["report", "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert synthetic == [] and not target.parent.exists()


def test_cli_failed_write_keeps_the_old_file_and_leaves_no_temp(synthetic, tmp_path, capsys,
                                                                monkeypatch) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report", encoding="utf-8")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["report", "--output", str(target)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_cli_replaces_an_existing_output_atomically(synthetic, tmp_path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")
    assert main(["report", "--format", "html", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_refuses_cuda_without_a_gpu(capsys) -> None:
    assert main(["report", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --device cuda: CUDA is not available on this machine\n"
