"""score's hostile corpus: a score log never mixes runs, nothing a run reads is its output, a model it
cannot score is refused in one line, names cannot forge rows, SIGTERM stops a run cleanly.

Every refusal is checked the same way: exit code 2, exactly one ``error:`` line on stderr,
nothing on stdout, and nothing on disk changed (bytes, inode and mode of every file under the
test's directory). The models are cheap stand-ins registered from a TOML file written here.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from harness.__main__ import main
from harness.core.contract import ScoreTransform
from harness.core.errors import HarnessError
from harness.rawnet2.audio import SAMPLE_RATE
from harness.rawnet2.registry import SUBJECTS, unregister
from harness.rawnet2.score_results import FileScore, render_table, write_stdout
from harness.rawnet2.scorelog import header_line, parse_score_log, read_score_log

MODELS = '''
import os
import signal
from typing import NamedTuple

import torch
import torch.nn as nn


class MeanScore(nn.Module):
    """Each clip's score is the sigmoid of its mean (x 1000)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((), scale))

    def forward(self, x):
        return torch.sigmoid(self.scale * x.mean(dim=-1) * 1000)


class Logits(MeanScore):
    def forward(self, x):
        return self.scale * x.mean(dim=-1) * 1000


class Pair(NamedTuple):
    score: torch.Tensor
    extra: torch.Tensor


class DictOut(MeanScore):
    def forward(self, x):
        return {"score": super().forward(x)}


class TupleOut(MeanScore):
    def forward(self, x):
        return Pair(super().forward(x), x)


class NoneOut(MeanScore):
    def forward(self, x):
        return None


class TwoInputs(MeanScore):
    def forward(self, x, lengths):
        return super().forward(x)


def float64_model():
    return MeanScore().double()


def half_model():
    return MeanScore().half()


class SigtermOnSecondBatch(MeanScore):
    """Its third forward (score's check of the model, one batch, then this) gets SIGTERM."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        if self.forwards == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)
'''

# name -> (factory, extra TOML lines)
VARIANTS = {
    "prod": ("MeanScore", 'weights = "w.pt"\noutput = "probability"'),
    "prod_logits": ("Logits", 'output = "logits"'),
    "prod_sigmoid": ("Logits", 'output = "logits"\nscore = "sigmoid[0]"'),
    "dict_out": ("DictOut", 'output = "probability"'),
    "tuple_out": ("TupleOut", 'output = "probability"'),
    "none_out": ("NoneOut", 'output = "probability"'),
    "two_inputs": ("TwoInputs", 'output = "probability"'),
    "float64": ("float64_model", 'output = "probability"'),
    "half": ("half_model", 'output = "probability"'),
    "sigterm": ("SigtermOnSecondBatch", 'output = "probability"'),
}


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path/team``: the stand-in models, their TOML registry and ``w.pt`` (prod's registered
    weights, scale 2); the variants are unregistered afterwards."""
    root = tmp_path / "team"
    root.mkdir()
    (root / "score_log_models.py").write_text(MODELS)
    tables = [f'[tool.rawnet2-harness.variants.{name}]\nfactory = "score_log_models:{factory}"\n'
              f"input_shape = [1, 4000]\n{extra}\n" for name, (factory, extra) in VARIANTS.items()]
    (root / "registry.toml").write_text("\n".join(tables))
    torch.save({"scale": torch.tensor(2.0)}, root / "w.pt")
    monkeypatch.syspath_prepend(str(root))
    yield root
    origin = str((root / "registry.toml").resolve())
    for name in [n for n, spec in SUBJECTS.items() if spec.origin == origin]:
        unregister(name)
    sys.modules.pop("score_log_models", None)


@pytest.fixture
def clips(tmp_path: Path) -> list[str]:
    """Three short distinct clips."""
    root = tmp_path / "audio"
    root.mkdir()
    paths = []
    for i in range(3):
        path = root / f"clip{i}.wav"
        sf.write(path, np.full(400, (i - 1) * 1e-4, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(path))
    return paths


def score(team: Path, *argv: str) -> int:
    return main(["--registry", str(team / "registry.toml"), "score", *argv, "--form", "eager"])


def disk_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, inode, mode, and bytes or link target."""
    state: dict[str, tuple] = {}
    for where, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(where, name)
            info = os.lstat(path)
            content = (os.readlink(path) if stat.S_ISLNK(info.st_mode) else
                       Path(path).read_bytes() if stat.S_ISREG(info.st_mode) else None)
            state[path] = (stat.S_IFMT(info.st_mode), info.st_ino, stat.S_IMODE(info.st_mode), content)
    return state


def refused(run: Callable[[], int], root: Path, capsys: pytest.CaptureFixture, message: str) -> str:
    """``run()`` exits 2 with the one line ``error: MESSAGE...`` (returned), prints nothing and changes
    nothing under ``root``."""
    capsys.readouterr()
    before = disk_state(root)
    assert run() == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), captured.err
    assert "Traceback" not in captured.err
    assert disk_state(root) == before
    return errors[0]


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()[1:]]


# --- a score log is one run's -------------------------------------------------------------------


def test_a_log_resumed_under_another_configuration_is_refused_naming_what_differs(
    tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    out = tmp_path / "s.jsonl"
    other = tmp_path / "other.pt"
    torch.save({"scale": torch.tensor(3.0)}, other)
    assert score(team, *clips[:2], "--variant", "prod", "--output", str(out)) == 0
    assert [r["file"] for r in log_records(out)] == clips[:2]
    base = [*clips, "--output", str(out), "--resume"]
    cases = [
        (["--variant", "prod", "--checkpoint", str(other)], "checkpoint_sha256 (null in the log, \""),
        (["--variant", "prod_sigmoid"], 'variant ("prod" in the log, "prod_sigmoid" now), factory'),
        (["--variant", "prod", "--kwargs", '{"scale": 3.0}'], 'kwargs ({} in the log, {"scale": 3.0} now)'),
        (["--variant", "prod", "--batch-size", "2"], "batch_size (8 in the log, 2 now)"),
        (["--variant", "prod", "--input-shape", "1,2000"], "length (4000 in the log, 2000 now)"),
        (["--variant", "prod", "--score-means", "bonafide"],
         'score_means ("spoof" in the log, "bonafide" now)'),
    ]
    for extra, difference in cases:
        line = refused(lambda extra=extra: score(team, *base, *extra), tmp_path, capsys,
                       f"{out}: was written under another configuration: ")
        assert difference in line, line
    # the same options finish it
    assert score(team, *clips, "--variant", "prod", "--output", str(out), "--resume") == 0
    assert [r["file"] for r in log_records(out)] == clips


def test_the_registered_weights_count_in_the_fingerprint_and_mean_no_random_weights_warning(
    tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    out = tmp_path / "s.jsonl"
    assert score(team, clips[0], "--variant", "prod", "--output", str(out)) == 0
    assert "random weights" not in capsys.readouterr().err  # w.pt holds its weights
    fingerprint = json.loads(out.read_bytes().splitlines()[0])["fingerprint"]
    assert len(fingerprint["weights_sha256"]) == 64 and fingerprint["checkpoint_sha256"] is None
    torch.save({"scale": torch.tensor(5.0)}, team / "w.pt")  # new weights under the same name
    refused(lambda: score(team, *clips, "--variant", "prod", "--output", str(out), "--resume"), tmp_path,
            capsys, f"{out}: was written under another configuration: weights_sha256 (")


@pytest.mark.parametrize("case", ["no header", "UTF-16", "UTF-8 BOM", "score -5", "score 1e308",
                                  "a file not given", "a duplicate record", "another run holds it",
                                  "another run holds it, --force"])
def test_a_log_that_is_not_this_runs_is_refused_and_never_appended_to(
    case: str, tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    out = tmp_path / "s.jsonl"
    argv = [*clips, "--variant", "prod", "--output", str(out), "--resume"]
    assert score(team, *clips[:2], "--variant", "prod", "--output", str(out)) == 0
    header, *lines = out.read_bytes().splitlines(keepends=True)
    record = b'{"file": "%s", "score": %s}\n'
    held = None
    if case == "no header":
        out.write_bytes(b"".join(lines))
        message = f"{out}: line 1 is not a score-log header"
    elif case == "UTF-16":
        out.write_bytes(b"\xff\xfe" + (header + b"".join(lines)).decode().encode("utf-16-le"))
        message = f"{out}: is UTF-16 (little-endian byte-order mark), not a UTF-8 score log"
    elif case == "UTF-8 BOM":
        out.write_bytes(b"\xef\xbb\xbf" + header + b"".join(lines))
        message = f"{out}: is a UTF-8 byte-order mark, not a UTF-8 score log"
    elif case.startswith("score "):
        value = case.split()[1].encode()
        out.write_bytes(header + lines[0] + record % (clips[1].encode(), value))
        shown = {b"-5": "-5", b"1e308": "1e+308"}[value]  # as json.loads reads it: an int, a float
        message = f"{out}: line 3: score {shown} is outside [0.0, 1.0] (probability: a probability)"
    elif case == "a file not given":
        out.write_bytes(header + b"".join(lines) + record % (b"elsewhere.wav", b"0.5"))
        message = f"{out}: records 1 file(s) not given this time: 'elsewhere.wav' (line 4)"
    elif case == "a duplicate record":
        out.write_bytes(header + b"".join(lines) + lines[0])
        message = f"{out}: {clips[0]!r} is recorded 2 times (lines 2, 4) but given 1 time(s)"
    else:
        held = os.open(out, os.O_RDONLY)
        fcntl.flock(held, fcntl.LOCK_EX)
        message = f"{out}: another score run is writing this log"
        if case.endswith("--force"):
            argv[-1] = "--force"
    try:
        refused(lambda: score(team, *argv), tmp_path, capsys, message)
    finally:
        if held is not None:
            os.close(held)


def test_resumed_in_another_order_the_log_is_the_uninterrupted_runs(
    tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    out, reference = tmp_path / "s.jsonl", tmp_path / "reference.jsonl"
    assert score(team, *clips, "--variant", "prod", "--batch-size", "1", "--output", str(out)) == 0
    mode = stat.S_IMODE(out.stat().st_mode)
    order = [clips[2], clips[0], clips[1]]
    common = ["--variant", "prod", "--batch-size", "1"]
    assert score(team, *order, *common, "--output", str(out), "--resume") == 0
    assert score(team, *order, *common, "--output", str(reference)) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == mode
    fingerprint, records = read_score_log(out)
    assert fingerprint["variant"] == "prod" and [r.file for r in records] == order


def test_a_score_the_transform_cannot_give_is_never_written():
    header = header_line({"score": "log_softmax[1]", "score_means": "bonafide"})
    parsed = parse_score_log(header + b'{"file": "a.wav", "score": -3.5}\n', "s.jsonl")
    assert [r for _, r, _ in parsed.records] == [FileScore("a.wav", score=-3.5)]
    with pytest.raises(HarnessError, match=r"line 2: score 0\.5 is outside \[-inf, 0\.0\] .*log-probability"):
        parse_score_log(header + b'{"file": "a.wav", "score": 0.5}\n', "s.jsonl")


# --- what a run reads is never its output -------------------------------------------------------


@pytest.mark.parametrize("case", ["registered weights", "registry file", "kwargs file", "factory source",
                                  "hard link to the weights", "checkpoint", "audio"])
@pytest.mark.parametrize("force", [False, True])
def test_no_file_the_run_reads_is_its_output(
    case: str, force: bool, tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    kwargs = team / "kwargs.json"
    kwargs.write_text('{"scale": 1.0}')
    checkpoint = tmp_path / "other.pt"
    torch.save({"scale": torch.tensor(3.0)}, checkpoint)
    targets = {"registered weights": (team / "w.pt", "the registered weights of prod"),
               "registry file": (team / "registry.toml", "the registry file of prod"),
               "kwargs file": (kwargs, "the --kwargs file"),
               "factory source": (team / "score_log_models.py", "the factory's source of prod"),
               "hard link to the weights": (tmp_path / "link.pt", "the registered weights of prod"),
               "checkpoint": (checkpoint, "the checkpoint"),
               "audio": (Path(clips[1]), "the input file")}
    if case == "hard link to the weights":
        os.link(team / "w.pt", tmp_path / "link.pt")
    output, what = targets[case]
    argv = [*clips, "--variant", "prod", "--kwargs", f"@{kwargs}", "--output", str(output),
            *(["--checkpoint", str(checkpoint)] if case == "checkpoint" else []),
            *(["--force"] if force else [])]
    refused(lambda: score(team, *argv), tmp_path, capsys, f"{output}: is {what} ")


# --- a model score cannot read ------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "message"), [
    ("prod_logits", "prod_logits declares output 'logits' and no score transform"),
    ("score_log_models:MeanScore", "score_log_models:MeanScore declares output 'any' and no score transform"),
    ("dict_out", "variant 'dict_out' cannot score audio: the output is dict, not a tensor"),
    ("tuple_out", "variant 'tuple_out' cannot score audio: the output is Pair, not a tensor"),
    ("none_out", "variant 'none_out' cannot score audio: the output is NoneType, not a tensor"),
    ("two_inputs", "variant 'two_inputs' cannot score audio: the model's forward raised TypeError: "),
    ("float64", "float64: scale is torch.float64; score feeds float32 audio to a float32 model"),
    ("half", "half: scale is torch.float16; score feeds float32 audio to a float32 model"),
])
def test_a_model_score_cannot_read_is_refused_in_one_line(
    variant: str, message: str, tmp_path: Path, team: Path, clips: list[str], capsys: pytest.CaptureFixture
):
    out = tmp_path / "s.jsonl"
    argv = [*clips, "--variant", variant, "--output", str(out)]
    refused(lambda: score(team, *argv), tmp_path, capsys, message)


def test_a_declared_sigmoid_turns_logits_into_probabilities(team: Path, clips: list[str],
                                                            capsys: pytest.CaptureFixture):
    assert score(team, *clips, "--variant", "prod_sigmoid", "--format", "json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["score"] == "sigmoid[0]"
    assert document["scores_are"].startswith("sigmoid[0]: a probability")
    scores = torch.tensor([r["score"] for r in document["results"]])
    assert ((scores > 0) & (scores < 1)).all() and scores[0] < 0.5 < scores[2]


# --- what the user sees ---------------------------------------------------------------------------


def test_a_file_name_can_never_forge_a_row(tmp_path: Path, team: Path, clips: list[str],
                                           capsys: pytest.CaptureFixture):
    forged = tmp_path / "a.wav\nevil.wav  0.000001"
    forged.write_bytes(Path(clips[0]).read_bytes())
    assert score(team, str(forged), clips[1], "--variant", "prod") == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3 and rows[1].startswith(repr(str(forged))) and not rows[2].startswith("evil")
    table = render_table([FileScore("b\x1b[2Jc.wav", score=0.5), FileScore("ok.wav", error="x\ny")],
                         ScoreTransform("probability"))
    assert table.count("\n") == 3 and "\x1b" not in table and "error: 'x\\ny'" in table


def test_a_non_utf8_file_name_prints_on_a_utf8_stdout(tmp_path: Path, team: Path, clips: list[str],
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.wav"  # Latin-1 bytes: not UTF-8
    Path(os.fsdecode(raw)).write_bytes(Path(clips[0]).read_bytes())
    name = os.fsdecode(raw)
    for fmt in ("table", "json"):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # what PYTHONIOENCODING=utf-8 gives
        monkeypatch.setattr(sys, "stdout", stdout)
        assert score(team, name, "--variant", "prod", "--format", fmt) == 0
        stdout.flush()
        text = stdout.buffer.getvalue().decode("utf-8")
        assert "caf\\udce9.wav" in text
        if fmt == "json":
            assert json.loads(text)["results"][0]["file"] == name
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    write_stdout("é\udce9\n", stream)
    assert stream.buffer.getvalue() == b"\\xe9\\udce9\n"


def test_sigterm_stops_a_run_cleanly_keeping_what_is_recorded(tmp_path: Path, team: Path,
                                                              capsys: pytest.CaptureFixture):
    files = []
    for i in range(6):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, np.full(400, i * 1e-4, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
        files.append(str(path))
    out = tmp_path / "s.jsonl"
    assert score(team, *files, "--variant", "sigterm", "--batch-size", "2", "--output", str(out)) == 143
    assert [r["file"] for r in log_records(out)] == files[:2]
    assert capsys.readouterr().err.rstrip().endswith(
        f"interrupted: 2 of 6 files are recorded in {out}; the same command with --resume scores the rest")
