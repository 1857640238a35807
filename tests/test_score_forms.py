"""score's deployment forms: every form gives eager's scores within its tolerance, on real audio.

``harness.rawnet2.deploy.deployment_model`` builds the form; ``auto`` takes the fastest one
the machine and the spec allow. Forms per variant come from the registry.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from harness import build
from harness.__main__ import main
from harness.core.errors import HarnessError
from harness.core.onnx import OnnxRuntimeSession, onnx_missing
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, assert_close
from harness.rawnet2.audio import SAMPLE_RATE, load_clip
from harness.rawnet2.deploy import deployment_model
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.registry import SUBJECTS
from harness.rawnet2.score_command import RANDOM_WEIGHTS_SEED, score_transform, scoring_contract
from harness.rawnet2.scoring import score_files
from tests.helpers import AUDIO, AUDIO_FILES, PeakNormalised, needs_onnx

# The tolerance each form is held to: the deployment form it is made of.
TOLERANCE = {"optimized": DEPLOYMENT_TOLERANCES["folded"],
             "onnxruntime": DEPLOYMENT_TOLERANCES["onnxruntime"]}
REQUIRES = {"optimized": "folded", "onnxruntime": "onnxruntime"}


def scores(model: object, name: str) -> torch.Tensor:
    """The fixtures' scores, each variant fed its own contract and read through its own transform.
    Decoded in this process: worker processes give the same clips (test_score_cli) and cost a fork
    per call; what is compared here is the forms."""
    spec = SUBJECTS[name]
    results = score_files(model, AUDIO_FILES, batch_size=3, contract=scoring_contract(spec),
                          transform=score_transform(spec), workers=0)
    return torch.tensor([r.score for r in results])


@functools.cache
def eager_scores(name: str) -> torch.Tensor:
    return scores(seed_weights(build(name), 3).eval(), name)


@pytest.mark.parametrize("form", ["optimized", "onnxruntime"])
def test_every_form_scores_real_audio_like_eager(runnable_name: str, form: str):
    spec = SUBJECTS[runnable_name]
    model = seed_weights(build(runnable_name), 3)
    if form == "onnxruntime" and onnx_missing():
        pytest.skip(f"ONNX form unavailable: {onnx_missing()}")
    if REQUIRES[form] not in spec.forms:
        # Asked for by name, a form the spec rules out is refused, with the reason.
        with pytest.raises(HarnessError, match=f"--form {form}: {runnable_name} does not list"):
            deployment_model(model, spec, form)
        return
    built, ran = deployment_model(model, spec, form)
    assert ran.startswith(form)
    assert_close(scores(built, runnable_name), eager_scores(runnable_name), TOLERANCE[form],
                 f"{runnable_name} {form} vs eager")


def test_auto_takes_the_fastest_form_the_spec_allows_and_says_why_it_passed_others_over():
    if onnx_missing() is None:
        assert deployment_model(build("skip_modules"), SUBJECTS["skip_modules"])[1].startswith("onnxruntime")
    _, ran = deployment_model(build("tuple_blocks"), SUBJECTS["tuple_blocks"])
    assert ran.startswith("eager on cpu (auto; passed over onnxruntime: ")
    assert "optimized: tuple_blocks does not list folded among its forms" in ran


def test_score_names_the_form_that_ran_on_stderr(capsys):
    argv = ["score", AUDIO_FILES[0], "--variant", "skip_modules", "--form", "optimized", "--format", "json"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "score: skip_modules as optimized (folded eager, CPU batches in chunks of 2) on cpu" in err


def test_a_form_that_cannot_run_is_a_usage_error(capsys):
    assert main(["score", AUDIO_FILES[0], "--variant", "tuple_blocks", "--form", "optimized"]) == 2
    assert capsys.readouterr().err.strip().endswith("tuple_blocks does not list folded among its forms")


# --- a form is verified on what it scores -----------------------------------------------------------


BRANCHY = ["--variant", "tests.helpers:PeakNormalised", "--score", "probability", "--input-shape", "1,4000"]


def frozen_quiet_graph(monkeypatch: pytest.MonkeyPatch) -> OnnxRuntimeSession:
    """``PeakNormalised`` (score's seeded weights) traced on quiet input, so the graph never divides;
    and made the form ``deployment_model`` gives score, whatever --form asks."""
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = PeakNormalised().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TracerWarning about the branch is the point
        torch.onnx.export(model, (torch.full((2, 1, 4000), 0.1),), buffer, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch", 2: "time"}})
    session = OnnxRuntimeSession(buffer.getvalue())
    def deployment_model(*args: object, **kwargs: object) -> tuple[OnnxRuntimeSession, str]:
        return session, "onnxruntime (frozen) on cpu"

    monkeypatch.setattr("harness.rawnet2.deploy.deployment_model", deployment_model)
    return session


@pytest.fixture
def loud_and_quiet(tmp_path: Path) -> list[str]:
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    t = np.arange(4000, dtype=np.float32)
    sf.write(loud, 1.75 * np.sin(t / 7), SAMPLE_RATE, subtype="FLOAT")
    sf.write(quiet, 0.3 * np.sin(t / 5), SAMPLE_RATE, subtype="FLOAT")
    return [str(loud), str(quiet)]


def scores_printed(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[float], str]:
    code = main(["score", *argv, "--format", "json"])
    captured = capsys.readouterr()
    scores = [r["score"] for r in json.loads(captured.out)["results"]] if code == 0 else []
    return code, scores, captured.err


@needs_onnx
def test_a_frozen_graph_never_scores_auto_falls_back_and_a_named_form_is_refused(
    loud_and_quiet: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    code, eager, _ = scores_printed([*loud_and_quiet, *BRANCHY, "--form", "eager"], capsys)
    assert code == 0
    session = frozen_quiet_graph(monkeypatch)
    clip = torch.from_numpy(load_clip(loud_and_quiet[0], 4000))[None, None]
    frozen = float(session(clip).flatten()[0])
    assert abs(frozen - eager[0]) > 1e-3, "the frozen graph scores loud audio like eager: no test"
    # auto: the difference on the first batch is said, and eager scores every file
    code, scores, err = scores_printed([*loud_and_quiet, *BRANCHY, "--form", "auto"], capsys)
    assert code == 0 and scores == eager
    assert "score: --form auto: onnxruntime (frozen) on cpu differs from eager on the first batch: max abs " \
           "difference" in err and "scoring with eager instead" in err
    # a named form: refused in one line naming the difference; nothing scored
    code, scores, err = scores_printed([*loud_and_quiet, *BRANCHY, "--form", "onnxruntime"], capsys)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: --form onnxruntime: onnxruntime (frozen) on cpu differs "
                                           "from eager on the first batch: max abs difference")


@needs_onnx
def test_quiet_audio_first_still_shows_a_branch_frozen_on_quiet_input(
    loud_and_quiet: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    # the first batch is quiet, where the frozen graph is right: its copy made loud shows the branch
    frozen_quiet_graph(monkeypatch)
    code, _, err = scores_printed([loud_and_quiet[1], *BRANCHY, "--form", "onnxruntime"], capsys)
    assert code == 2
    last = err.splitlines()[-1]
    assert "differs from eager on the first batch scaled to peak 4: max abs difference" in last


def test_the_branchy_model_scores_like_eager_in_every_form_that_runs(
    loud_and_quiet: list[str], capsys: pytest.CaptureFixture
):
    # whatever the real forms do with the branch (export refuses it, or the graph keeps it),
    # score gives eager's numbers or refuses: never another graph's
    code, eager, _ = scores_printed([*loud_and_quiet, *BRANCHY, "--form", "eager"], capsys)
    assert code == 0
    for form in ("auto", "optimized", "onnxruntime"):
        code, scores, err = scores_printed([*loud_and_quiet, *BRANCHY, "--form", form], capsys)
        if code == 2:
            assert form != "auto" and err.count("error:") == 1 and "Traceback" not in err, err
            continue
        assert code == 0, err
        assert_close(torch.tensor(scores), torch.tensor(eager), DEPLOYMENT_TOLERANCES["onnxruntime"], form)


@pytest.mark.slow
@pytest.mark.usefixtures("team_scored")
def test_the_team_model_scores_like_eager_in_every_form(capsys: pytest.CaptureFixture):
    # [B, T] input, a GRU and log_softmax: exported at its own contract (or refused in one line), verified
    # on the first batch; the scores are eager's within the form's tolerance, or the run is refused
    hello = str(AUDIO / "hello.wav")
    code, eager, _ = scores_printed([hello, AUDIO_FILES[1], "--variant", "asv", "--form", "eager"], capsys)
    assert code == 0 and all(s <= 0 for s in eager)
    for form in ("auto", "onnxruntime"):
        code, scores, err = scores_printed([hello, AUDIO_FILES[1], "--variant", "asv", "--form", form],
                                           capsys)
        if code == 2:
            assert form != "auto" and err.count("error:") == 1 and "Traceback" not in err, err
            continue
        assert code == 0, err
        assert_close(torch.tensor(scores), torch.tensor(eager), DEPLOYMENT_TOLERANCES["onnxruntime"], form)
