"""``python -m harness evaluate``: systems from score files and from variants, the gate's exit codes,
orientation, resumable score logs, and legacy checkpoint -> legacy / skip_modules / tuple_blocks.

The metrics themselves are pinned against independent routes in tests/test_metrics.py; here
the command must hand each system's oriented scores to them, count flips as constructed, and
exit 0/1/2 as the issue says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.__main__ import main
from harness.core.contract import InputContract
from harness.core.metrics import asv_error_rates, compute_eer, min_tdcf
from harness.report.evaluation_schema import validate_evaluation
from tests.helpers import CORPUS_REGISTRY, needs_onnx, restored_registry

# A protocol of 6 bona fide and 9 spoofs (3 attacks) with scores where higher = bona fide.
BONA = [f"LA_E_B{i}" for i in range(6)]
SPOOF = [f"LA_E_S{i}" for i in range(9)]
ATTACKS = ["A07", "A08", "A09"]
SCORES_A = dict(zip(BONA, [2.0, 1.5, 1.2, 0.9, 0.5, -0.2], strict=True)) | dict(
    zip(SPOOF, [-2.0, -1.6, -1.1, -0.8, -0.5, -0.3, 0.1, 0.4, -1.3], strict=True))
# B moves exactly two utterances across the threshold 0: LA_E_B4 down (bona fide -> spoof decision) and
# LA_E_S5 up (spoof -> bona fide), by 1.0 each; everything else stays.
FLIPPED = {"LA_E_B4": -0.5, "LA_E_S5": 0.7}
SCORES_B = SCORES_A | FLIPPED


def _arrays(scores: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([scores[u] for u in BONA]), np.array([scores[u] for u in SPOOF])


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    protocol = tmp_path / "protocol.txt"
    protocol.write_text("".join(f"LA_0001 {u} - - bonafide\n" for u in BONA)
                        + "".join(f"LA_0002 {u} - {ATTACKS[i % 3]} spoof\n" for i, u in enumerate(SPOOF)))
    cm = tmp_path / "cm_scores.txt"  # ASVspoof 2019 CM score format: UTT ATTACK KEY SCORE
    cm.write_text("".join(f"{u} - bonafide {SCORES_A[u]}\n" for u in BONA)
                  + "".join(f"{u} {ATTACKS[i % 3]} spoof {SCORES_A[u]}\n" for i, u in enumerate(SPOOF)))
    two = tmp_path / "two_columns.txt"
    two.write_text("".join(f"{u} {s}\n" for u, s in SCORES_B.items()))
    asv = tmp_path / "asv.txt"  # ASVspoof 2019 ASV score format: KEY_SOURCE KEY SCORE
    rng = np.random.default_rng(0)
    asv.write_text("".join(f"bonafide target {v:.6f}\n" for v in rng.normal(3, 1, 40))
                   + "".join(f"bonafide nontarget {v:.6f}\n" for v in rng.normal(-3, 1, 60))
                   + "".join(f"spoof spoof {v:.6f}\n" for v in rng.normal(1, 1.5, 50)))
    return {"protocol": protocol, "cm": cm, "two": two, "asv": asv}


def _evaluate(files: dict[str, Path], *extra: str, capsys) -> tuple[int, dict | None, str]:
    code = main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"a={files['cm']}",
                 "--scores", f"b={files['two']}", "--format", "json", *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("definition", ["2021", "2019"])
def test_score_files_in_both_formats_give_the_official_metrics_and_the_constructed_flips(
        files, capsys, definition) -> None:
    code, doc, err = _evaluate(files, "--asv-scores", str(files["asv"]), "--tdcf", definition,
                             "--threshold", "0", capsys=capsys)
    assert code == 0, err
    validate_evaluation(doc)
    asv_lines = [line.split() for line in files["asv"].read_text().splitlines()]
    rates = asv_error_rates(*(np.array([float(v) for s, k, v in asv_lines if k == key])
                              for key in ("target", "nontarget", "spoof")))
    for name, scores in (("a", SCORES_A), ("b", SCORES_B)):
        bona, spoof = _arrays(scores)
        eer, threshold = compute_eer(bona, spoof)
        system = doc["systems"][name]
        assert (system["eer"], system["eer_threshold"]) == (eer, threshold)
        assert system["min_tdcf"] == min_tdcf(bona, spoof, rates, definition=definition)[0]
        assert {a: v["n"] for a, v in system["per_attack"].items()} == {a: 3 for a in ATTACKS}
    assert doc["tdcf"]["definition"] == definition and doc["reference"] == "a"
    (pair,) = doc["pairs"]
    assert (pair["flips"], pair["bonafide_to_spoof"], pair["spoof_to_bonafide"]) == (2, 1, 1)
    assert sorted(f["file"] for f in pair["files"]) == sorted(FLIPPED)
    assert pair["max_abs_score_diff"] == pytest.approx(1.0)


def test_the_gate_exits_1_with_one_line_per_failed_condition_and_0_when_each_holds(files, capsys) -> None:
    code, doc, err = _evaluate(files, "--threshold", "0", "--max-flips", "1", "--max-eer-increase", "0",
                               capsys=capsys)
    eer_a, eer_b = doc["systems"]["a"]["eer"], doc["systems"]["b"]["eer"]
    assert eer_b > eer_a  # the construction makes b worse
    assert code == 1 and doc["gate"]["passed"] is False
    failed = [line for line in err.splitlines() if line.startswith("gate failed: ")]
    assert len(failed) == 2 and "a vs b: 2 decisions flip" in failed[1] and failed[0].startswith(
        "gate failed: b: EER")
    increase = 100 * (eer_b - eer_a)
    code, doc, err = _evaluate(files, "--threshold", "0", "--max-flips", "2", "--max-eer-increase",
                               f"{increase + 1e-6}", capsys=capsys)
    assert code == 0 and doc["gate"] == {"passed": True, "reasons": [], "conditions": {
        "max_eer_increase_pp": pytest.approx(increase + 1e-6), "max_flips": 2}}


def test_usage_errors_exit_2_in_one_line(files, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("a b c d\n")
    assert main(["evaluate", "--protocol", str(bad), "--scores", f"a={files['cm']}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 1 has 4 columns" in err
    short = tmp_path / "short.txt"  # two protocol utterances without a score, one score it lacks
    short.write_text("".join(f"{u} {s}\n" for u, s in SCORES_A.items() if u not in ("LA_E_B0", "LA_E_S3"))
                     + "LA_E_extra 0.5\n")
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"s={short}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: s: no score for 2 of 15 protocol utterances: LA_E_B0, LA_E_S3"
    assert main(["evaluate", "--protocol", str(files["protocol"])]) == 2
    assert "give --variant NAME or --scores NAME=FILE" in capsys.readouterr().err


def test_scores_outside_the_protocol_are_counted_not_refused(files, tmp_path, capsys) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text(files["two"].read_text() + "LA_E_unlisted 0.5\nLA_E_other -1\n")
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"x={extra}",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["systems"]["x"]["not_in_protocol"] == 2


def test_orientation_is_stated_and_a_spoof_oriented_file_is_negated(files, tmp_path, capsys) -> None:
    flipped = tmp_path / "spoof_high.txt"
    flipped.write_text("".join(f"{u} {-s}\n" for u, s in SCORES_A.items()))
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"n={flipped}",
                 "--higher-means", "spoof", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    system = doc["systems"]["n"]
    assert (system["eer"], system["eer_threshold"]) == compute_eer(*_arrays(SCORES_A))
    assert "negated here because a high score means spoof: n" in doc["orientation"]
    log = tmp_path / "log.jsonl"  # a score log says what its scores mean: a contradicting flag is refused
    log.write_text(json.dumps({"score_log": 1, "fingerprint": {"score_means": "bonafide"}}) + "\n"
                   + "".join(json.dumps({"file": f"/x/{u}.flac", "score": s}) + "\n"
                             for u, s in SCORES_A.items()))
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"l={log}",
                 "--higher-means", "spoof"]) == 2
    assert "contradicts" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_markdown_and_html_outputs_name_the_verdict(files, tmp_path, capsys, fmt) -> None:
    out = tmp_path / f"result.{fmt}"
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"a={files['cm']}",
                 "--scores", f"b={files['two']}", "--format", fmt, "--output", str(out)]) == 0
    text = out.read_text()
    assert "PASSED" in text and ("<svg" in text) == (fmt == "html")
    assert main(["evaluate", "--protocol", str(files["protocol"]), "--scores", f"a={files['cm']}",
                 "--output", str(files["cm"])]) == 2  # never over an input
    assert "which this run reads" in capsys.readouterr().err


# --- variants scored here --------------------------------------------------------------------------


@pytest.fixture()
def band_registry():
    with restored_registry():
        yield str(CORPUS_REGISTRY)


def test_a_variant_is_scored_on_the_corpus_and_a_killed_run_resumes_from_its_logs(
        fixture_corpus, band_registry, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "eval.json"
    argv = ["--registry", band_registry, "evaluate", "--protocol", str(fixture_corpus.protocol),
            "--audio-root", str(fixture_corpus.directory), "--variant", "band_energy", "--form", "eager",
            "--format", "json", "--output", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    logs = sorted(p.name for p in (tmp_path / "eval.scores").iterdir())
    assert logs == ["band_energy.jsonl"]
    import harness.rawnet2.evaluate_systems as systems

    def no_scoring(*args, **kwargs):
        raise AssertionError("every file is in the log: nothing is scored again")

    monkeypatch.setattr(systems, "scoring_model", no_scoring)
    out.unlink()
    assert main(argv) == 0
    assert json.loads(out.read_text())["systems"] == doc["systems"]


def _legacy_checkpoint(path: Path) -> Path:
    from harness.rawnet2.checkpoints import legacy_effective_state_dict
    from harness.rawnet2.equivalence import seed_weights
    from harness.rawnet2.registry import build

    torch.save(legacy_effective_state_dict(seed_weights(build("legacy"), 3)), path)
    return path


def _family_at(monkeypatch, samples: int | None) -> None:
    """Score the family at ``samples`` (the default suite's twin of the full-length run)."""
    if samples is None:
        return
    import harness.rawnet2.evaluate_systems as systems

    monkeypatch.setattr(systems, "scoring_contract", lambda target: InputContract((1, samples)))


def _few_lines(protocol: Path, tmp_path: Path, per_class: int) -> Path:
    """The corpus protocol cut to ``per_class`` bona fide lines and as many spoofs, attacks mixed."""
    lines = protocol.read_text().splitlines()
    bona = [line for line in lines if line.endswith(" bonafide")][:per_class]
    spoof = [line for line in lines if line.endswith(" spoof")][::3][:per_class]
    path = tmp_path / "few.txt"
    path.write_text("\n".join(bona + spoof) + "\n")
    return path


@pytest.mark.parametrize("samples, per_class", [
    pytest.param(1000, 4, id="short-clips"),
    pytest.param(None, 8, id="full-length", marks=pytest.mark.slow)])
def test_legacy_checkpoint_gives_skip_modules_the_same_decisions_and_tuple_blocks_its_own(
        fixture_corpus, tmp_path, capsys, monkeypatch, samples, per_class) -> None:
    from harness.rawnet2.scorelog import read_score_log

    _family_at(monkeypatch, samples)
    checkpoint = _legacy_checkpoint(tmp_path / "legacy.pt")
    protocol = _few_lines(fixture_corpus.protocol, tmp_path, per_class)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--protocol", str(protocol), "--audio-root", str(fixture_corpus.directory),
                 "--variant", "legacy", "--variant", "skip_modules", "--variant", "tuple_blocks",
                 "--checkpoint", str(checkpoint), "--form", "eager", "--format", "json",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    pairs = {(p["a"], p["b"]): p for p in doc["pairs"]}
    same = pairs["legacy", "skip_modules"]
    assert (same["flips"], same["max_abs_score_diff"]) == (0, 0.0)
    assert "weights from" in doc["systems"]["skip_modules"]["source"]
    assert "by structural matching" in doc["systems"]["tuple_blocks"]["source"]
    # tuple_blocks' flips, counted here from the score logs (a high score means spoof: negated)
    threshold = doc["threshold"]["value"]
    decided = {}
    for name in ("legacy", "tuple_blocks"):
        _, records = read_score_log(tmp_path / "eval.scores" / f"{name}.jsonl")
        decided[name] = {Path(r.file).stem: -r.score > threshold for r in records}
    expected = sum(decided["legacy"][u] != decided["tuple_blocks"][u] for u in decided["legacy"])
    assert pairs["legacy", "tuple_blocks"]["flips"] == expected
    assert pairs["legacy", "tuple_blocks"]["max_abs_score_diff"] > 0


@needs_onnx
def test_forms_of_one_variant_are_systems_and_their_decisions_compared(
        fixture_corpus, band_registry, tmp_path, capsys) -> None:
    protocol = _few_lines(fixture_corpus.protocol, tmp_path, 4)
    assert main(["--registry", band_registry, "evaluate", "--protocol", str(protocol), "--audio-root",
                 str(fixture_corpus.directory), "--variant", "band_energy", "--form", "eager", "--form",
                 "onnxruntime", "--format", "json", "--max-flips", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["systems"]) == ["band_energy [eager]", "band_energy [onnxruntime]"]
    (pair,) = doc["pairs"]
    assert pair["kind"] == "form" and pair["flips"] == 0 and 0 < pair["max_abs_score_diff"] < 1e-4
    assert doc["reference"] == "band_energy [eager]" and doc["gate"]["passed"]
