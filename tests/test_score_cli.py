"""Scoring real audio end to end: files -> clips -> batches -> scores, library and CLI.

Every forward here is at the model's real input length (64,600 samples, ~0.15-0.3 s per
clip on the 2-core CPU), so each test scores as few clips as its claim needs.
The batching and bookkeeping properties run on a stand-in model instead. Every runnable
variant in the registry is scored (``runnable_name``), a team's included; what a variant
is expected to get wrong comes from its spec, never from a list here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import SUBJECTS, build, get_audio_model
from harness.__main__ import main
from harness.core.introspect import batchnorms
from harness.core.tolerances import BATCHING, EXACT, assert_close
from harness.rawnet2.audio import (
    PROGRESS_MIN_FILES,
    RANDOM_WEIGHTS_SEED,
    SAMPLE_RATE,
    FileScore,
    ForwardFailed,
    load_clip,
    score_files,
    score_waveforms,
)

AUDIO = Path(__file__).parent / "data" / "audio"
FIXTURES = [str(AUDIO / n) for n in ("hello.wav", "numbers.wav", "hello_44k_stereo.wav", "hello_16k.flac")]
HELLO, NUMBERS = FIXTURES[0], FIXTURES[1]


def batch_dependence(variant: str) -> str | None:
    """Why a file's eval-mode score depends on its batch mates, as its spec declares (None: it must not)."""
    return SUBJECTS[variant].declared_defects.get("batch_independence")


def holds_a_checkpoint(variant: str) -> bool:
    """Whether the variant's state_dict can hold a trained model's weights: not when its spec declares
    the state_dict round trip broken (tuple_blocks: the blocks live in tuples state_dict() never sees)."""
    return "state_dict_roundtrip" not in SUBJECTS[variant].declared_defects


def random_model(variant: str) -> nn.Module:
    """What the CLI scores with when no checkpoint is given."""
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return get_audio_model(variant)


def scores_of(results: list[FileScore]) -> torch.Tensor:
    assert all(r.error is None for r in results), results
    return torch.tensor([r.score for r in results])


# --- real models on real audio -----------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legacy checkpoint (102 keys, shared skip included) whose BatchNorms hold
    statistics of speech, as training leaves them: random weights with identity
    statistics score every clip alike to six decimals."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build("legacy")
        for bn in (h.obj for h in batchnorms(model)):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.normal_(bn.bias, std=0.1)
        shared_skip, model.skip = model.skip, None  # the only way its forward runs
        calibrate_batchnorms(model, FIXTURES)
        model.skip = shared_skip
    path = tmp_path_factory.mktemp("checkpoints") / "legacy.pt"
    torch.save(model.state_dict(), path)
    return path


def calibrate_batchnorms(model: nn.Module, files: list[str]) -> None:
    """Set every reachable BatchNorm's running statistics to those of the files' clips
    (every 16th sample: statistics need no more, and a short forward is cheap)."""
    clips = torch.from_numpy(np.stack([load_clip(f)[::16] for f in files]))[:, None]
    bns = [h.obj for h in batchnorms(model)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics outright
    with torch.no_grad():
        model.train()(clips)
    for bn in bns:
        bn.momentum = 0.1


class FixtureScores(dict):
    """Runnable form of the legacy checkpoint -> (model, its scores of all the fixtures in
    one batch). Filled on first use: the most expensive step here, so each xdist worker
    pays only for the forms its tests need."""

    REFERENCE = "legacy_effective"  # the checkpoint's own function: what every converted form must score

    @staticmethod
    def forms() -> list[str]:
        """Every runnable variant that can hold the checkpoint: the reference, built by hand, and
        every other one through the converter (preserve-function)."""
        return [name for name in SUBJECTS if SUBJECTS[name].runs and holds_a_checkpoint(name)]

    @classmethod
    def converted_forms(cls) -> list[str]:
        return [name for name in cls.forms() if name != cls.REFERENCE]

    def __init__(self, checkpoint: Path) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def __missing__(self, form: str) -> tuple[nn.Module, torch.Tensor]:
        if form not in self.forms():
            raise KeyError(form)
        if form == self.REFERENCE:
            # the reference, built without the converter: the legacy class, its weights, skip cleared
            model = build("legacy")
            model.load_state_dict(torch.load(self.checkpoint, weights_only=True))
            model.skip = None
            model.eval()
        else:
            model = get_audio_model(form, self.checkpoint, policy="preserve-function")
        self[form] = model, scores_of(score_files(model, FIXTURES, batch_size=len(FIXTURES)))
        return self[form]


@pytest.fixture(scope="module")
def fixture_scores(legacy_checkpoint: Path) -> FixtureScores:
    return FixtureScores(legacy_checkpoint)


@pytest.mark.parametrize("form", FixtureScores.converted_forms())
def test_converted_legacy_checkpoint_scores_real_audio_like_legacy_effective(
    form: str, fixture_scores: FixtureScores
):
    legacy, converted = fixture_scores[FixtureScores.REFERENCE][1], fixture_scores[form][1]
    assert_close(converted, legacy, EXACT, f"{form} (preserve-function) vs legacy_effective")
    # the scores come from the audio: the two utterances differ by more than float noise
    assert ((legacy > 0) & (legacy < 1)).all()
    assert not torch.isclose(legacy[0], legacy[1], rtol=BATCHING.rtol, atol=BATCHING.atol)


def test_the_checkpoint_forms_are_every_runnable_variant_but_tuple_blocks():
    # The example behind FixtureScores.forms(): only tuple_blocks' spec says its state_dict cannot hold one.
    runnable = [name for name, spec in SUBJECTS.items() if spec.runs and spec.origin == "built in"]
    assert [name for name in runnable if name not in FixtureScores.forms()] == ["tuple_blocks"]


def test_a_files_score_does_not_depend_on_its_batch_mates(runnable_name: str, fixture_scores: FixtureScores):
    variant = runnable_name
    if variant in FixtureScores.forms():  # trained-like weights, hello's score among all four fixtures
        model, scores = fixture_scores[variant]
        in_batch = scores[:1]
    else:
        model = random_model(variant)
        in_batch = scores_of(score_files(model, [HELLO, NUMBERS], batch_size=2))[:1]
    alone = scores_of(score_files(model, [HELLO], batch_size=1))
    if (why := batch_dependence(variant)) is not None:  # the declared defect, shown: same file, other score
        assert not torch.isclose(in_batch, alone, rtol=BATCHING.rtol, atol=BATCHING.atol).any(), (
            f"{variant} no longer depends on its batch ({why}): update its spec's expected_defects"
        )
    else:
        assert_close(in_batch, alone, BATCHING, f"{variant}: hello alone vs in a batch")


def test_legacy_as_found_cannot_score_and_says_why():
    # a fresh legacy model raises on its first forward (its shared skip is block 6's)
    reason = r"forward raised RuntimeError: .*to have 128 channels, but got 32"
    with pytest.raises(ForwardFailed, match=reason):
        score_files(build("legacy").eval(), [HELLO])


# --- batching and bookkeeping, on a stand-in model --------------------------------------------


class MeanScore(nn.Module):
    """Stand-in model: each clip's score is the sigmoid of its mean; no batch interaction."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # gives the model a device
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        return torch.sigmoid(self.scale * x.mean(dim=-1) * 1000)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three distinct good clips and two bad files."""
    root = tmp_path_factory.mktemp("pool")
    paths = []
    for i in range(3):
        path = root / f"good{i}.wav"
        sf.write(path, np.full(400, (i - 1) * 0.01, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(path))
    (root / "text.wav").write_text("not audio")
    return [*paths, str(root / "text.wav"), str(root / "missing.wav")]


@given(picks=st.lists(st.integers(0, 4), min_size=1, max_size=12), batch_size=st.integers(1, 5))
def test_score_files_keeps_order_batches_good_files_and_reports_progress(
    pool: list[str], picks: list[int], batch_size: int
):
    files = [pool[i] for i in picks]
    model, calls = MeanScore(), []
    results = score_files(model, files, batch_size=batch_size, progress=lambda *a: calls.append(a))
    assert [r.file for r in results] == files
    good = [i < 3 for i in picks]
    for r, ok in zip(results, good, strict=True):
        assert (r.error is None) == ok and (r.score is None) != ok
    good_files = [f for f, ok in zip(files, good, strict=True) if ok]
    expected = torch.sigmoid(torch.tensor([load_clip(f).mean() * 1000 for f in good_files]))
    if any(good):
        assert_close(scores_of([r for r in results if r.error is None]), expected, BATCHING)
    # full batches of usable files, then the remainder; progress ends at (total, total, failed)
    n_good = sum(good)
    full, rest = divmod(n_good, batch_size)
    assert model.batch_sizes == [batch_size] * full + ([rest] if rest else [])
    assert calls[-1] == (len(files), len(files), len(files) - n_good)
    assert [c[0] for c in calls] == sorted({c[0] for c in calls})


def test_a_non_finite_score_is_that_files_error(pool: list[str]):
    model = MeanScore()
    nn.init.constant_(model.scale, float("nan"))
    results = score_files(model, pool[:1])
    assert results == [FileScore(pool[0], error="the model gave a non-finite score (nan)")]


def test_score_waveforms_refuses_a_model_without_one_score_per_clip():
    model = nn.Conv1d(1, 2, 1)
    with pytest.raises(ForwardFailed, match=r"shape \[2, 1\]; got \[2, 2, 8\]"):
        score_waveforms(model, torch.zeros(2, 8))


# --- the CLI -----------------------------------------------------------------------------------


def bad_files(root: Path) -> list[str]:
    truncated, empty, text = root / "truncated.wav", root / "empty.flac", root / "notes.wav"
    data = Path(HELLO).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    text.write_text("not audio\n")
    return [str(truncated), str(empty), str(text), str(root / "missing.wav")]


def test_cli_json_reports_each_bad_file_and_scores_the_rest(
    tmp_path: Path, legacy_checkpoint: Path, fixture_scores: FixtureScores, capsys: pytest.CaptureFixture
):
    truncated, empty, text, missing = bad_files(tmp_path)
    files = [truncated, empty, HELLO, text, missing]
    assert len(files) >= PROGRESS_MIN_FILES
    argv = ["score", *files, "--checkpoint", str(legacy_checkpoint), "--format", "json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert [row["file"] for row in out] == files
    error, score = ["error", "file"], ["file", "score"]
    assert [sorted(row) for row in out] == [error, error, score, error, error]
    assert out[0]["error"].startswith("truncated: the header declares 42578 bytes")
    assert out[1]["error"] == "empty file (0 bytes)"
    assert out[3]["error"].startswith("not a readable audio file")
    assert out[4]["error"] == "no such file"
    # hello's score is the one the same converted checkpoint gave it among the fixtures
    assert_close(torch.tensor([out[2]["score"]]), fixture_scores["skip_modules"][1][:1], BATCHING)
    assert "Traceback" not in captured.err and "warning" not in captured.err
    assert "scored 5/5 files (4 failed)" in captured.err
    assert captured.err.rstrip().endswith("4 of 5 files failed")


def test_cli_table_without_checkpoint_scores_with_seeded_random_weights(capsys: pytest.CaptureFixture):
    missing = str(AUDIO / "missing.wav")
    assert main(["score", HELLO, missing]) == 1
    captured = capsys.readouterr()
    header, hello_row, missing_row = captured.out.splitlines()
    assert header.split() == ["file", "score"]
    assert missing_row.startswith(missing) and missing_row.endswith("error: no such file")
    expected = score_waveforms(random_model("skip_modules"), torch.from_numpy(load_clip(HELLO))[None])
    assert hello_row.startswith(HELLO) and hello_row.split()[-1] == f"{expected.item():.6f}"
    assert captured.err.startswith("warning: no --checkpoint: skip_modules has random weights (seed 0)")
    assert "scored" not in captured.err  # no progress for fewer than PROGRESS_MIN_FILES files


def test_cli_scores_with_every_runnable_variant(runnable_name: str, capsys: pytest.CaptureFixture):
    assert main(["score", HELLO, "--variant", runnable_name, "--format", "json"]) == 0
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)
    expected = score_waveforms(random_model(runnable_name), torch.from_numpy(load_clip(HELLO))[None])
    assert row["file"] == HELLO
    assert_close(torch.tensor([row["score"]], dtype=expected.dtype), expected.flatten(), EXACT,
                 f"{runnable_name}: CLI score vs score_waveforms")
    assert captured.err.startswith(f"warning: no --checkpoint: {runnable_name} has random weights")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        (["--variant", "resnet"], "error: unknown variant 'resnet'"),
        (["--checkpoint", HELLO], f"error: {HELLO}: not a PyTorch or safetensors checkpoint"),
        (
            ["--variant", "tuple_blocks", "--checkpoint", "{ckpt}"],
            "error: {ckpt}: cannot convert to tuple_blocks",
        ),
    ],
)
def test_cli_refuses_an_impossible_run_before_scoring(
    argv: list[str], message: str, legacy_checkpoint: Path, capsys: pytest.CaptureFixture
):
    argv = [a.replace("{ckpt}", str(legacy_checkpoint)) for a in argv]
    message = message.replace("{ckpt}", str(legacy_checkpoint))
    assert main(["score", HELLO, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and len(captured.err.strip().splitlines()) == 1
