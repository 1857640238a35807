"""Golden outputs per subject, vouched for by an independent functional reference.

A normal run compares; only ``pytest --update-golden`` rewrites ``tests/golden/*.json``,
and only after the outputs matched ``reference_forward`` (plain F.conv1d / F.batch_norm
from the weights and the guide's architecture), so a golden file never records a bug.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import HarnessError, build
from harness.core.tolerances import EXACT, GOLDEN, REFERENCE_FORWARD, assert_close
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.golden import (
    GOLDEN_MODES,
    GOLDEN_SEED,
    GoldenRecord,
    compare_golden,
    first_divergence,
    golden_input,
    golden_model,
    golden_outputs,
    golden_path,
    golden_sources,
    read_golden,
    reference_forward,
    write_golden,
)
from harness.rawnet2.registry import SUBJECTS, spec

MAX_GOLDEN_BYTES = 50_000
# The variants the guide's functional reference can vouch for (their spec names the function).
VOUCHED = [name for name, variant in SUBJECTS.items() if variant.architecture is not None]
FILE_OWNERS = [name for name, variant in SUBJECTS.items() if variant.golden_modes]


def architecture(name: str):
    return spec(name).architecture


def test_outputs_match_golden_file(runnable_name: str, update_golden: bool):
    """Every runnable variant, every mode, against the file that holds it: its own for the modes
    it records itself, its reference's for the modes where it must compute the reference's
    function (weights matched by structure, so it needs no file of its own there)."""
    name, variant = runnable_name, spec(runnable_name)
    model, x = golden_model(name), golden_input(name)
    sources = golden_sources(name)
    assert set(sources) == set(GOLDEN_MODES), (
        f"{name}: modes {sorted(set(GOLDEN_MODES) - set(sources))} are held to no golden file; "
        "declare a reference for them or run `pytest --update-golden`")
    outputs = golden_outputs(model, x)
    # Vouch before any rewrite, and say where the model departs when it does: the outputs
    # must be what the guide's architecture computes from these weights.
    departures = {}
    if variant.architecture is not None:
        departures = {mode: first_divergence(model, x, variant.architecture, train=mode == "train",
                                             tol=REFERENCE_FORWARD) for mode in GOLDEN_MODES}
        departures = {mode: where for mode, where in departures.items() if where is not None}
    if update_golden and variant.golden_modes:
        assert not departures, f"{name}: not recording outputs that depart from the guide: {departures}"
        own = {mode: outputs[mode] for mode in variant.golden_modes}
        write_golden(golden_path(name), GoldenRecord(name, GOLDEN_SEED, tuple(x.shape), own))
    problems = []
    for owner in dict.fromkeys(sources.values()):
        path = golden_path(owner)
        try:
            golden = read_golden(path)
        except HarnessError as exc:
            pytest.fail(str(exc))
        assert (golden.variant, golden.seed, golden.input_shape) == (owner, GOLDEN_SEED, tuple(x.shape))
        modes = [mode for mode, held_by in sources.items() if held_by == owner]
        held = {mode: golden.outputs[mode] for mode in modes if mode in golden.outputs}
        diffs = compare_golden({mode: outputs[mode] for mode in modes},
                               GoldenRecord(owner, golden.seed, golden.input_shape, held), GOLDEN)
        if not all(d.ok for d in diffs):
            problems.append(f"outputs moved from {path.name} (tolerance: {GOLDEN.reason}):")
            problems += [f"  {d.describe()}" for d in diffs]
    if departures:
        problems.append("the model departs from the guide's architecture (reference_forward) at:")
        problems += [f"  {mode}: {where}" for mode, where in departures.items()]
    if problems:
        problems.append("If the change is intended, rewrite with `pytest --update-golden` and say why.")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_a_variant_with_a_reference_needs_no_golden_file_of_its_own():
    assert golden_sources("basic_blocks") == {"train": "skip_modules", "eval": "skip_modules"}
    assert golden_sources("tuple_blocks") == {"train": "skip_modules", "eval": "tuple_blocks"}
    assert not golden_path("basic_blocks").exists()


@given(
    name=st.sampled_from(VOUCHED),
    train=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    length=st.integers(64, 512),
)
def test_reference_forward_matches_every_subject(name: str, train: bool, seed: int, batch: int, length: int):
    model = seed_weights(build(name), seed)
    x = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))
    where = first_divergence(model, x, architecture(name), train=train, tol=REFERENCE_FORWARD)
    assert where is None, f"{name} {'train' if train else 'eval'} departs from the guide at {where}"


@pytest.mark.parametrize(
    ("break_model", "stage"),
    [
        (lambda m: m.res_block3.__setitem__(5, nn.LeakyReLU(0.2)), "res_block3 main path"),
        (lambda m: setattr(m.skip4[1], "eps", 1e-3), "skip4"),
        (lambda m: setattr(m, "global_pool", nn.AdaptiveMaxPool1d(1)), "pooled (fc1 input)"),
        (lambda m: setattr(m, "sigmoid", nn.Identity()), "output (sigmoid)"),
    ],
    ids=["block3-slope", "skip4-eps", "max-pool", "no-sigmoid"],
)
def test_first_divergence_names_the_stage_that_changed(break_model, stage: str):
    model, x, spec = golden_model("skip_modules"), golden_input(), architecture("skip_modules")
    assert first_divergence(model, x, spec, train=False, tol=REFERENCE_FORWARD) is None
    break_model(model)
    where = first_divergence(model, x, spec, train=False, tol=REFERENCE_FORWARD)
    assert where is not None and where.startswith(f"{stage}: max abs diff"), where


def test_first_divergence_points_at_a_missing_shortcut():
    """skip_modules judged against legacy_effective's wiring: everything agrees up to block 2's
    residual addition, which only skip_modules makes."""
    model, spec = golden_model("skip_modules"), architecture("legacy_effective")
    where = first_divergence(model, golden_input(), spec, train=True, tol=REFERENCE_FORWARD)
    assert where is not None
    assert where.startswith("res_block2 output (main path + shortcut): max abs diff"), where


def test_reference_names_a_missing_tensor_and_the_guides_layers():
    model, x, spec = golden_model("skip_modules"), golden_input(), architecture("skip_modules")
    model.res_block2[4] = nn.Identity()  # the second BatchNorm gone
    message = ("res_block2 has no tensor '4.running_mean'; the guide's res_block2 "
               "is Conv1d, BatchNorm1d, LeakyReLU, Conv1d, BatchNorm1d, LeakyReLU with biases")
    with pytest.raises(HarnessError, match=re.escape(message)):
        reference_forward(model, x, spec, train=False)
    assert first_divergence(model, x, spec, train=False, tol=REFERENCE_FORWARD) == f"weights: {message}"


def test_golden_files_tell_the_equivalence_story():
    """Read back from the files: the statements of tests/test_equivalence.py hold for them too."""
    files = {name: read_golden(golden_path(name)).outputs for name in FILE_OWNERS}
    with torch.no_grad():  # tuple_blocks holds no train file: it is held to skip_modules' there
        train = copy.deepcopy(golden_model("tuple_blocks")).train()(golden_input())
    assert_close(train, files["skip_modules"]["train"], GOLDEN, "train: same as skip_modules' file")
    differing = (("tuple_blocks", "eval"), ("legacy_effective", "train"), ("legacy_effective", "eval"))
    for other, mode in differing:
        moved = (files[other][mode] - files["skip_modules"][mode]).abs().max()
        assert moved > 1e-3, f"{other} {mode} should differ from skip_modules"


def test_golden_files_are_small_json():
    for name in FILE_OWNERS:
        path = golden_path(name)
        assert path.stat().st_size < MAX_GOLDEN_BYTES
        assert json.loads(path.read_text())["outputs"].keys() == set(spec(name).golden_modes)
    directories = {golden_path(name).parent for name in FILE_OWNERS}
    recorded = {p for directory in directories for p in directory.glob("*.json")}
    assert recorded == {golden_path(name) for name in FILE_OWNERS}, "a golden file nobody owns"


def test_golden_outputs_are_input_dependent_and_unsaturated():
    """A golden file that cannot move is no gate: scores (as probabilities) stay off the flat ends
    and differ between samples."""
    for name in FILE_OWNERS:
        transform = spec(name).score_transform
        for mode, out in read_golden(golden_path(name)).outputs.items():
            scores = transform(out) if transform is not None else out
            log_probabilities = transform is not None and transform.kind == "log_softmax"
            probability = scores.exp() if log_probabilities else scores
            assert bool(((probability > 0.05) & (probability < 0.95)).all()), f"{name} {mode} saturated"
            assert out.max() - out.min() > 1e-3, f"{name} {mode} ignores its input"


# --- golden file handling ------------------------------------------------------------------


def record(outputs: dict[str, torch.Tensor]) -> GoldenRecord:
    return GoldenRecord("skip_modules", GOLDEN_SEED, tuple(golden_input().shape), outputs)


def sample_outputs() -> dict[str, torch.Tensor]:
    return {mode: torch.rand(4, 1) for mode in GOLDEN_MODES}


def test_golden_round_trip_is_exact(tmp_path: Path):
    outputs = sample_outputs()
    write_golden(tmp_path / "g.json", record(outputs))
    back = read_golden(tmp_path / "g.json")
    for mode in GOLDEN_MODES:
        assert_close(back.outputs[mode], outputs[mode], EXACT)
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no temp file left


def test_missing_golden_file_is_an_error_and_is_not_created(tmp_path: Path):
    with pytest.raises(HarnessError, match=r"does not exist; run `pytest --update-golden` to record it"):
        read_golden(tmp_path / "missing.json")
    assert not (tmp_path / "missing.json").exists()


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "outputs": {}}', '{"format": 1}', "[]"])
def test_malformed_golden_file_is_an_error(tmp_path: Path, content: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HarnessError, match="golden file .* is (unreadable|malformed)"):
        read_golden(path)


def test_failed_write_keeps_the_old_golden_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "g.json"
    write_golden(path, record(sample_outputs()))
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # fails after the bytes went to the temp file
    with pytest.raises(HarnessError, match="cannot write: disk full"):
        write_golden(path, record(sample_outputs()))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_mismatch_reports_max_differences_and_the_samples_that_moved():
    outputs = sample_outputs()
    golden = record({mode: t.clone() for mode, t in outputs.items()})
    outputs["eval"][2] += 1e-3
    outputs["train"] += 1e-7  # float noise, inside GOLDEN
    diffs = {d.mode: d for d in compare_golden(outputs, golden, GOLDEN)}
    assert diffs["train"].ok and diffs["train"].moved == ()
    assert not diffs["eval"].ok and diffs["eval"].moved == (2,)
    assert diffs["eval"].max_abs == pytest.approx(1e-3, rel=1e-3)
    text = diffs["eval"].describe()
    assert text.startswith("eval: max abs diff 0.001, max rel diff") and text.endswith("samples moved: [2]")


def test_mismatch_reports_missing_modes_and_shape_changes():
    golden = record({"train": torch.rand(4, 1), "eval": torch.rand(4, 1)})
    diffs = {d.mode: d for d in compare_golden({"train": torch.rand(4, 3)}, golden, GOLDEN)}
    assert diffs["train"].describe() == "train: shape (4, 3), golden (4, 1)"
    assert diffs["eval"].describe() == "eval: missing from this run"
