"""score's deployment forms: every form gives eager's scores within its tolerance, on real audio.

``harness.rawnet2.deploy.deployment_model`` builds the form; ``auto`` takes the fastest one
the machine and the spec allow. Forms per variant come from the registry.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from harness import build
from harness.__main__ import main
from harness.core.errors import HarnessError
from harness.core.onnx import onnx_missing
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, assert_close
from harness.rawnet2.deploy import deployment_model
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.registry import SUBJECTS
from harness.rawnet2.scoring import score_files

AUDIO = Path(__file__).parent / "data" / "audio"
FILES = [str(AUDIO / name) for name in ("hello.wav", "numbers.wav", "hello_44k_stereo.wav", "hello_16k.flac")]
# The tolerance each form is held to: the deployment form it is made of.
TOLERANCE = {"optimized": DEPLOYMENT_TOLERANCES["folded"],
             "onnxruntime": DEPLOYMENT_TOLERANCES["onnxruntime"]}
REQUIRES = {"optimized": "folded", "onnxruntime": "onnxruntime"}


@functools.cache
def eager_scores(name: str) -> torch.Tensor:
    model = seed_weights(build(name), 3).eval()
    return torch.tensor([r.score for r in score_files(model, FILES, batch_size=3)])


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
    scores = torch.tensor([r.score for r in score_files(built, FILES, batch_size=3)])
    assert_close(scores, eager_scores(runnable_name), TOLERANCE[form], f"{runnable_name} {form} vs eager")


def test_auto_takes_the_fastest_form_the_spec_allows_and_says_why_it_passed_others_over():
    if onnx_missing() is None:
        assert deployment_model(build("skip_modules"), SUBJECTS["skip_modules"])[1].startswith("onnxruntime")
    _, ran = deployment_model(build("tuple_blocks"), SUBJECTS["tuple_blocks"])
    assert ran.startswith("eager on cpu (auto; passed over onnxruntime: ")
    assert "optimized: tuple_blocks does not list folded among its forms" in ran


def test_score_names_the_form_that_ran_on_stderr(capsys):
    argv = ["score", FILES[0], "--variant", "skip_modules", "--form", "optimized", "--format", "json"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "score: skip_modules as optimized (folded eager, CPU batches in chunks of 2) on cpu" in err


def test_a_form_that_cannot_run_is_a_usage_error(capsys):
    assert main(["score", FILES[0], "--variant", "tuple_blocks", "--form", "optimized"]) == 2
    assert capsys.readouterr().err.strip().endswith("tuple_blocks does not list folded among its forms")
