"""Scoring real audio end to end: files -> clips -> batches -> scores, library and CLI.

Every forward here is at the model's real input length (64,600 samples, ~0.15-0.3 s per
clip on the 2-core CPU), so each test scores as few clips as its claim needs.
The batching and bookkeeping properties run on a stand-in model instead. Every runnable
variant in the registry is scored (``runnable_name``), a team's included; what a variant
is expected to get wrong comes from its spec, never from a list here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import SUBJECTS, HarnessError, build, get_audio_model
from harness.__main__ import main
from harness.core.introspect import batchnorms
from harness.core.tolerances import BATCHING, EXACT, assert_close
from harness.rawnet2.audio import SAMPLE_RATE, load_clip
from harness.rawnet2.registry import in_family
from harness.rawnet2.score_command import RANDOM_WEIGHTS_SEED, score_transform, scoring_contract
from harness.rawnet2.score_results import PROGRESS_MIN_FILES, FileScore, Progress
from harness.rawnet2.scorelog import header_line, parse_score_log
from harness.rawnet2.scoring import ForwardFailed, iter_scores, score_files, score_waveforms
from tests.helpers import AUDIO, AUDIO_FILES, REPO, snapshot

# Stand-in models (MODULE:ATTR, so nothing declares their contract) count their calls: score them as they
# are (the deployment forms: test_score_forms.py), as probabilities of [B, 1, 64600] clips.
EAGER = ("--form", "eager", "--score", "probability", "--input-shape", "1,64600")
HELLO, NUMBERS = AUDIO_FILES[0], AUDIO_FILES[1]


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
        calibrate_batchnorms(model, AUDIO_FILES)
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
        """Every runnable variant of the family that can hold the (legacy) checkpoint: the reference,
        built by hand, and every other one through the converter (preserve-function)."""
        return [name for name in SUBJECTS
                if SUBJECTS[name].runs and in_family(SUBJECTS[name]) and holds_a_checkpoint(name)]

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
        self[form] = model, scores_of(score_files(model, AUDIO_FILES, batch_size=len(AUDIO_FILES)))
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


def scoring_of(name: str) -> dict:
    """What ``score`` feeds the variant and how it reads its output (its spec's contract and transform)."""
    spec = SUBJECTS[name]
    return {"contract": scoring_contract(spec), "transform": score_transform(spec)}


def test_a_files_score_does_not_depend_on_its_batch_mates(runnable_name: str, fixture_scores: FixtureScores):
    variant = runnable_name
    if variant in FixtureScores.forms():  # trained-like weights, hello's score among all four fixtures
        model, scores = fixture_scores[variant]
        in_batch = scores[:1]
    else:
        model = random_model(variant)
        in_batch = scores_of(score_files(model, [HELLO, NUMBERS], batch_size=2, **scoring_of(variant)))[:1]
    alone = scores_of(score_files(model, [HELLO], batch_size=1, **scoring_of(variant)))
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


@given(picks=st.lists(st.integers(0, 4), min_size=1, max_size=12), batch_size=st.integers(1, 5),
       workers=st.sampled_from([0, 2]))
def test_score_files_keeps_order_batches_good_files_and_reports_progress(
    pool: list[str], picks: list[int], batch_size: int, workers: int
):
    files = [pool[i] for i in picks]
    model, calls = MeanScore(), []
    results = score_files(model, files, batch_size=batch_size, progress=lambda *a: calls.append(a),
                          workers=workers)
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
    with pytest.raises(ForwardFailed, match=r"the output shape \[2, 2, 8\] is not \[B, 1\]"):
        score_waveforms(model, torch.zeros(2, 8))


def test_decoding_in_worker_processes_changes_nothing_but_the_wall_time(pool: list[str]):
    files = [pool[i] for i in (0, 3, 1, 4, 2, 0, 1, 3, 2)]
    in_process = score_files(MeanScore(), files, batch_size=2, workers=0)
    assert score_files(MeanScore(), files, batch_size=2, workers=2) == in_process  # same clips, same batches
    # each chunk ends with the last file of a full batch (failures before it included): the unit
    # that --output writes and fsyncs
    chunks = list(iter_scores(MeanScore(), files, batch_size=2, workers=2))
    assert [[r.file for r in c] for c in chunks] == [files[0:3], files[3:6], files[6:9]]
    assert [r for c in chunks for r in c] == in_process


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
    # eager: what is checked here is each file's outcome (forms: test_score_forms.py)
    argv = ["score", *files, "--checkpoint", str(legacy_checkpoint), "--format", "json", "--form", "eager"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert (document["score"], document["score_means"]) == ("probability", "spoof")
    out = document["results"]
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
    assert main(["score", HELLO, missing, "--form", "eager"]) == 1
    captured = capsys.readouterr()
    header, hello_row, missing_row = captured.out.splitlines()
    assert header.split()[:2] == ["file", "score"]
    assert header.endswith("score (probability: a probability in [0, 1], higher = spoof)")
    assert missing_row.startswith(missing) and missing_row.endswith("error: no such file")
    expected = score_waveforms(random_model("skip_modules"), torch.from_numpy(load_clip(HELLO))[None])
    assert hello_row.startswith(HELLO) and hello_row.split()[-1] == f"{expected.item():.6f}"
    assert captured.err.startswith("warning: no --checkpoint: skip_modules has random weights (seed 0)")
    assert "scored" not in captured.err  # no progress for fewer than PROGRESS_MIN_FILES files


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


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_batch_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (Terminal(), io.StringIO()):
        progress = Progress(10, stream=stream)
        progress.update(4, 1)
        progress.message("warning: a.wav: something")
        progress.update(10, 1)
        progress.close()
        text = stream.getvalue()
        assert "warning: a.wav: something\n" in text
        if isinstance(stream, Terminal):  # tqdm redraws one line in place
            assert "\r" in text and "10/10" in text and "1 failed" in text and "scored" not in text
        else:
            assert text.splitlines() == ["scored 4/10 files (1 failed)", "warning: a.wav: something",
                                         "scored 10/10 files (1 failed)"]


# --- score --output: JSON Lines as computed, --resume after a kill ------------------------------

STAND_IN_SOURCE = '''
import os
import time

import torch
import torch.nn as nn


class MeanScore(nn.Module):
    """Each clip's score is the sigmoid of its mean. With SCORE_STAND_IN_HANG_AFTER=N in the
    environment (not an argument: a score log's fingerprint holds those), every forward after
    the N-th hangs (for an hour): a run that is only ever stopped by a kill. (score's check of
    the model before any file is decoded is a forward too.)"""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        hang_after = os.environ.get("SCORE_STAND_IN_HANG_AFTER")
        self.hang_after, self.forwards = None if hang_after is None else int(hang_after), 0

    def forward(self, x):
        self.forwards += 1
        if self.hang_after is not None and self.forwards > self.hang_after:
            time.sleep(3600)
        return torch.sigmoid(self.scale * x.mean(dim=-1) * 1000)
'''


@pytest.fixture
def stand_in(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """``--variant`` for a cheap stand-in model (MODULE:ATTR), importable here and in a subprocess."""
    root = tmp_path_factory.getbasetemp() / "stand_in"
    root.mkdir(exist_ok=True)
    (root / "score_stand_in.py").write_text(STAND_IN_SOURCE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return "score_stand_in:MeanScore"


def short_wavs(root: Path, n: int) -> list[str]:
    """``n`` short distinct clips (so distinct scores), every 7th one unreadable."""
    root.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"clip{i:03d}.wav"
        if i % 7 == 3:
            path.write_text("not audio\n")
        else:
            sf.write(path, np.full(400, (i - n / 2) * 1e-4, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(path))
    return paths


def records(path: Path) -> list[dict]:
    """A score log's records (its first line, the header, checked and left out)."""
    header, *lines = path.read_bytes().splitlines()
    assert set(json.loads(header)) == {"score_log", "fingerprint"}, header
    return [json.loads(line) for line in lines]


def test_output_is_json_lines_in_input_order_like_the_json_on_stdout(
    tmp_path: Path, stand_in: str, capsys: pytest.CaptureFixture
):
    files = short_wavs(tmp_path / "in", 9)
    out = tmp_path / "s.jsonl"
    argv = ["score", *files, "--variant", stand_in, *EAGER, "--batch-size", "2"]
    assert main([*argv, "--format", "json"]) == 1
    on_stdout = json.loads(capsys.readouterr().out)["results"]
    assert main([*argv, "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # the results are in the file only
    assert records(out) == on_stdout and [r["file"] for r in on_stdout] == files
    assert out.read_bytes().endswith(b"\n") and len(out.read_bytes().splitlines()) == 1 + len(files)
    assert "scored 9/9 files (1 failed)" in captured.err
    assert captured.err.rstrip().endswith("1 of 9 files failed")


def test_resume_skips_what_is_recorded_drops_a_half_written_line_and_appends_the_rest(
    tmp_path: Path, stand_in: str, capsys: pytest.CaptureFixture
):
    files = short_wavs(tmp_path / "in", 10)
    files.insert(6, files[1])  # a file given twice is scored twice, and needs two records
    out = tmp_path / "s.jsonl"
    argv = ["score", *files, "--variant", stand_in, *EAGER, "--batch-size", "3", "--output", str(out)]
    assert main(argv) == 1
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)  # the header, then one record per file
    assert len(lines) == 12 and json.loads(lines[0])["score_log"] == 1
    for kept in (0, 1, 3, 6, 8, 12):
        # what a kill while writing line `kept` + 1 leaves: whole lines, then part of one (0: of the header)
        out.write_bytes(b"".join(lines[:kept]) + (lines[kept][:9] if kept < len(lines) else b""))
        capsys.readouterr()
        assert main([*argv, "--resume"]) == 1  # the exit code covers every file, recorded ones included
        assert out.read_bytes() == full, f"resumed after {kept} lines"
        err = capsys.readouterr().err
        if kept > 1:
            assert f"resuming {out}: {kept - 1} of 11 files already recorded, {12 - kept} to score" in err
        assert err.rstrip().endswith("1 of 11 files failed")
    # without --resume an existing output is refused; --force starts it over
    assert main(argv) == 2
    out.write_text('{"file": "other.wav", "score": 0.5}\n')
    assert main([*argv, "--force"]) == 1 and out.read_bytes() == full


def test_resume_without_an_output_file_yet_is_a_fresh_run(tmp_path: Path, stand_in: str):
    files = short_wavs(tmp_path / "in", 5)
    out = tmp_path / "s.jsonl"
    assert main(["score", *files, "--variant", stand_in, *EAGER, "--output", str(out), "--resume"]) == 1
    assert [r["file"] for r in records(out)] == files


def test_output_resumed_with_the_real_model_scores_like_the_uninterrupted_run(
    tmp_path: Path, legacy_checkpoint: Path, fixture_scores: FixtureScores, capsys: pytest.CaptureFixture
):
    out = tmp_path / "s.jsonl"
    argv = ["score", *AUDIO_FILES, "--checkpoint", str(legacy_checkpoint), "--batch-size", "2",
            "--form", "eager", "--output", str(out)]
    assert main(argv) == 0
    first = records(out)
    assert [r["file"] for r in first] == AUDIO_FILES
    # the scores the same converted checkpoint gave all four fixtures in one batch
    assert_close(torch.tensor([r["score"] for r in first]), fixture_scores["skip_modules"][1], BATCHING)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1] + lines[2][:20])  # killed while writing the first batch's second line
    assert main([*argv, "--resume"]) == 0
    resumed = records(out)
    assert [r["file"] for r in resumed] == AUDIO_FILES
    # fixture 2 is now scored with fixture 3, not 1: its batch mates do not change its score
    assert_close(torch.tensor([r["score"] for r in resumed]), torch.tensor([r["score"] for r in first]),
                 BATCHING, "resumed vs uninterrupted")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_a_killed_run_leaves_no_decoder_behind_and_resumed_gives_the_uninterrupted_output(
    tmp_path: Path, stand_in: str
):
    # The demo: a run killed (SIGKILL, no chance to clean up) after a few batches, then the same
    # command with --resume: every file exactly once, the scores of an uninterrupted run. Only the
    # run itself is killed: its decoding workers must die with it, never live on re-parented to init.
    files = short_wavs(tmp_path / "in", 40)
    out, reference = tmp_path / "s.jsonl", tmp_path / "reference.jsonl"
    argv = ["score", *files, "--variant", stand_in, *EAGER, "--batch-size", "4"]
    # the check before scoring, 3 batches written, then it waits for the kill
    hangs = {**os.environ, "SCORE_STAND_IN_HANG_AFTER": "4"}
    with open(tmp_path / "stderr", "wb") as err:
        run = subprocess.Popen([sys.executable, "-m", "harness", *argv, "--output", str(out)], env=hangs,
                               cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not out.exists() or out.read_bytes().count(b"\n") < 13:
                assert run.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, "no batch written in 60 s"
                time.sleep(0.01)
            workers = children(run.pid)
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            deadline = time.monotonic() + 10
            while any(alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)  # whatever is left, so that a failure leaks nothing
            run.wait()
    assert run.returncode == -signal.SIGKILL
    if len(os.sched_getaffinity(0)) > 1:  # one core: decoding runs in the process itself
        assert len(workers) == 2, workers
    assert not [w for w in workers if alive(w)], "decoding workers outlived the killed run"
    killed = records(out)
    assert 12 <= len(killed) < len(files) and [r["file"] for r in killed] == files[: len(killed)]
    assert main([*argv, "--output", str(out), "--resume"]) == 1
    assert main([*argv, "--output", str(reference)]) == 1
    resumed, uninterrupted = records(out), records(reference)
    assert [r["file"] for r in resumed] == files and [r["file"] for r in uninterrupted] == files
    assert [sorted(r) for r in resumed] == [sorted(r) for r in uninterrupted]
    assert_close(torch.tensor([r.get("score", -1.0) for r in resumed]),
                 torch.tensor([r.get("score", -1.0) for r in uninterrupted]), BATCHING,
                 "resumed vs uninterrupted")


def test_a_damaged_output_file_is_refused_naming_the_line():
    header = header_line({"score": "probability", "score_means": "spoof"})
    good = header + b'{"file": "a.wav", "score": 0.25}\n{"file": "b.wav", "error": "no such file"}\n'
    parsed = parse_score_log(good + b'{"file": "c.w', "s.jsonl")
    assert [r for _, r, _ in parsed.records] == [FileScore("a.wav", score=0.25),
                                                 FileScore("b.wav", error="no such file")]
    assert parsed.keep == len(good)  # the half-written last line is not a record
    for bad in (b"\n", b"[1, 2]\n", b'{"file": "c.wav"}\n', b'{"file": "c.wav", "score": 0.5, "x": 1}\n',
                b'{"file": 3, "score": 0.5}\n', b"\xff\xfe\n", b'{"file": "c.wav", "score": 0.5\n'):
        with pytest.raises(HarnessError, match=r"^s\.jsonl: line 4: not a score record"):
            parse_score_log(good + bad, "s.jsonl")
    for bad, why in ((b'{"file": "c.wav", "score": NaN}\n', "score nan is outside [0.0, 1.0]"),
                     (b'{"file": "c.wav", "score": true}\n', "score True is not a number")):
        with pytest.raises(HarnessError, match=rf"^s\.jsonl: line 4: {re.escape(why)}"):
            parse_score_log(good + bad, "s.jsonl")


def hostile_output(case: str, tmp: Path, audio: str) -> tuple[list[str], str]:
    """Set up ``case`` in ``tmp``: the extra arguments, and the start of the one-line refusal."""
    out = tmp / "s.jsonl"
    if case == "directory":
        out.mkdir()
        return ["--output", str(out)], f"{out}: is a directory"
    if case == "trailing separator":
        return ["--output", f"{tmp / 'new'}{os.sep}"], f"{tmp / 'new'}{os.sep}: ends with"
    if case == "fifo":
        os.mkfifo(out)
        return ["--output", str(out)], f"{out}: is a FIFO (named pipe), not a regular file"
    if case == "device":
        return ["--output", os.devnull, "--force"], f"{os.devnull}: is a character device, not a regular file"
    if case == "empty path":
        return ["--output", ""], "empty path ('') given for the output"
    if case == "symlink to an input":
        out.symlink_to(audio)
        return ["--output", str(out)], f"{out}: is a symbolic link (to {audio!r})"
    if case == "dangling symlink":  # following it would create a file elsewhere
        out.symlink_to(tmp / "elsewhere.jsonl")
        return ["--output", str(out)], f"{out}: is a symbolic link"
    if case == "symlink with --resume":
        out.symlink_to(audio)
        return ["--output", str(out), "--resume"], f"{out}: is a symbolic link"
    if case == "symlink loop":
        out.symlink_to(out)
        return ["--output", str(out)], f"{out}: is a symbolic link"
    if case == "existing file":
        out.write_text('{"file": "a.wav", "score": 0.5}\n')
        return ["--output", str(out)], f"{out}: already exists; --resume finishes it, --force overwrites it"
    if case == "an input, with --force":
        return ["--output", audio, "--force"], f"{audio}: is the input file {audio!r}"
    if case == "a hard link to an input, with --force":
        os.link(audio, out)
        return ["--output", str(out), "--force"], f"{out}: is the input file {audio!r}"
    if case == "the checkpoint, with --resume":
        checkpoint = tmp / "model.pt"
        checkpoint.write_bytes(b"weights")
        return (["--checkpoint", str(checkpoint), "--output", str(checkpoint), "--resume"],
                f"{checkpoint}: is the checkpoint {str(checkpoint)!r}, which this run reads")
    if case == "missing directory":
        return ["--output", str(tmp / "no" / "s.jsonl")], f"{tmp / 'no' / 's.jsonl'}: directory"
    if case == "a log without a header, with --resume":
        out.write_text('{"file": "a.wav", "score": 0.5}\n{"file": "b.wav", "score": 0.5 oops}\n{"file"')
        return ["--output", str(out), "--resume"], f"{out}: line 1 is not a score-log header"
    if case == "--format with --output":
        return ["--output", str(out), "--format", "json"], "--format is for stdout"
    if case == "--resume without --output":
        return ["--resume"], "--resume applies to --output PATH"
    raise AssertionError(case)


HOSTILE_OUTPUTS = [
    "directory", "trailing separator", "fifo", "device", "empty path", "symlink to an input",
    "dangling symlink", "symlink with --resume", "symlink loop", "existing file", "an input, with --force",
    "a hard link to an input, with --force", "the checkpoint, with --resume", "missing directory",
    "a log without a header, with --resume", "--format with --output", "--resume without --output",
]


@pytest.mark.parametrize("case", HOSTILE_OUTPUTS)
def test_a_hostile_output_path_is_refused_before_any_work_and_nothing_changes(
    case: str, tmp_path: Path, stand_in: str, capsys: pytest.CaptureFixture
):
    audio = tmp_path / "in.wav"
    audio.write_bytes(Path(HELLO).read_bytes())
    extra, message = hostile_output(case, tmp_path, str(audio))
    before = snapshot(tmp_path, AUDIO)
    assert main(["score", str(audio), "--variant", stand_in, *EAGER, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    # one line, and before any work: the model is not even built (it would warn of random weights)
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1, captured.err
    assert snapshot(tmp_path, AUDIO) == before


def test_force_replaces_a_symlinked_output_itself_never_what_it_points_to(tmp_path: Path, stand_in: str):
    audio, out = tmp_path / "in.wav", tmp_path / "s.jsonl"
    audio.write_bytes(Path(HELLO).read_bytes())
    out.symlink_to(audio)
    before = snapshot(tmp_path)
    assert main(["score", str(audio), "--variant", stand_in, *EAGER, "--output", str(out), "--force"]) == 0
    assert not out.is_symlink() and [r["file"] for r in records(out)] == [str(audio)]
    after = snapshot(tmp_path)
    del before[str(out)], after[str(out)]
    assert after == before


def test_resume_and_force_cannot_be_given_together(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_:
        main(["score", HELLO, "--output", str(tmp_path / "s.jsonl"), "--resume", "--force"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()


def test_out_of_range_audio_is_scored_with_a_one_line_warning(
    tmp_path: Path, stand_in: str, capsys: pytest.CaptureFixture
):
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    sf.write(loud, np.array([0.1, -1.75, 0.5] * 200, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    sf.write(quiet, np.full(600, 0.5, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert main(["score", str(loud), str(quiet), "--variant", stand_in, *EAGER, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert [sorted(r) for r in json.loads(captured.out)["results"]] == [["file", "score"]] * 2
    warnings = [line for line in captured.err.splitlines() if str(loud) in line or str(quiet) in line]
    assert warnings == [f"warning: {loud}: peak 1.75 is outside [-1, 1] (float samples beyond full scale); "
                        "scored as it is"]


def test_decoder_chatter_on_the_c_stderr_is_kept_off_the_terminal(
    tmp_path: Path, stand_in: str, capfd: pytest.CaptureFixture
):
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3 (needs 1.1 or later)")
    mp3 = tmp_path / "full.mp3"
    sf.write(mp3, np.sin(np.arange(48_000) / 10).astype(np.float32) / 2, SAMPLE_RATE, format="MP3")
    cut, stub = tmp_path / "x.mp3", tmp_path / "stub.mp3"
    data = mp3.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # libmpg123 prints "Warning: Xing stream size off by more..."
    stub.write_bytes(data[:300])
    assert main(["score", str(cut), str(stub), "--variant", stand_in, *EAGER, "--format", "json"]) == 1
    captured = capfd.readouterr()  # file descriptors 1 and 2, not just sys.stdout/stderr
    assert [r["error"] for r in json.loads(captured.out)["results"]] == [
        "truncated: the header declares 48000 frames, the file holds 24815",
        "not a readable audio file: libsndfile: cannot read the start of the stream (truncated or damaged)",
    ]
    assert "Xing" not in captured.err and "mpg123" not in captured.err.lower()
    # after the random-weights warning and the line naming the form that ran
    assert captured.err.splitlines()[2:] == ["2 of 2 files failed"]


class InterruptedOnSecondBatch(MeanScore):
    """Stand-in whose second batch gets Ctrl-C (its first forward is score's check of the model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.batch_sizes) == 2:
            raise KeyboardInterrupt
        return super().forward(x)


def test_ctrl_c_keeps_what_is_recorded_and_says_how_to_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    files = short_wavs(tmp_path / "in", 6)
    out = tmp_path / "s.jsonl"
    stand_in = f"{__name__}:{InterruptedOnSecondBatch.__name__}"  # this module, as pytest imported it
    argv = ["score", *files, "--variant", stand_in, *EAGER, "--batch-size", "2", "--output", str(out)]
    assert main(argv) == 130
    assert [r["file"] for r in records(out)] == files[:2]
    assert capsys.readouterr().err.rstrip().endswith(
        f"interrupted: 2 of 6 files are recorded in {out}; the same command with --resume scores the rest")
