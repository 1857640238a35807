"""``score`` from a warm export cache without torch (``harness.rawnet2.score_cached``).

A run that scored with ONNX Runtime leaves a request record; the same command again scores from
it with ``import torch`` impossible, prints what the model path printed, writes the same score
log, and any changed file the model was built from sends it back to the model path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.__main__ import main
from harness.core.export_cache import CACHE_DIR_ENV
from tests.helpers import REPO, SCORE_TINY, TINY_FILES, needs_onnx

# Runs ``python -m harness ARGV`` with torch made unimportable: any import of it fails the run.
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from harness.__main__ import main; "
                 "sys.exit(main(sys.argv[1:]))")
FAST = "(from the cache, without torch)"


def without_torch(argv: list[str], cache: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, CACHE_DIR_ENV: str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@needs_onnx
def test_the_same_command_again_scores_without_torch_and_prints_the_same(own_export_cache, tmp_path,
                                                                        capsys) -> None:
    log = tmp_path / "model_path.jsonl"
    assert main([*SCORE_TINY, "--format", "json", "--no-cache"]) == 0  # the model path, leaving no record
    first = capsys.readouterr()
    assert main([*SCORE_TINY, "--output", str(log)]) == 0  # the model path, leaving the record
    assert FAST not in capsys.readouterr().err
    again = without_torch([*SCORE_TINY, "--format", "json"], own_export_cache)
    assert again.returncode == 0, again.stderr
    assert FAST in again.stderr and again.stdout == first.out
    cached_log = tmp_path / "cached.jsonl"
    again = without_torch([*SCORE_TINY, "--output", str(cached_log)], own_export_cache)
    assert again.returncode == 0, again.stderr
    assert cached_log.read_bytes() == log.read_bytes()  # header (fingerprint) and records alike


@needs_onnx
def test_a_changed_factory_source_sends_the_run_back_to_the_model(own_export_cache, registered, tmp_path,
                                                                 capsys) -> None:
    module = tmp_path / "tinymodel.py"
    module.write_text(textwrap.dedent('''
        import torch
        import torch.nn as nn

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(1, 1, kernel_size=32, stride=32)

            def forward(self, x):
                return torch.sigmoid(self.conv(x).mean(dim=-1))
    '''))
    registry = tmp_path / "registry.toml"
    registry.write_text('[tool.rawnet2-harness.variants.tiny]\nfactory = "tinymodel:Tiny"\n'
                        'input_shape = [1, 16000]\nscore = "probability"\n')
    argv = ["--registry", str(registry), "score", *TINY_FILES, "--variant", "tiny", "--form", "onnxruntime"]
    assert main(argv) == 0
    capsys.readouterr()
    assert FAST in without_torch(argv, own_export_cache).stderr
    module.write_text(module.read_text() + "\n# an edit the record must see\n")
    assert main(argv) == 0
    assert FAST not in capsys.readouterr().err  # the model path ran, and exported afresh


@needs_onnx
def test_other_options_are_another_request(own_export_cache, capsys) -> None:
    assert main(SCORE_TINY) == 0
    capsys.readouterr()
    for extra in (["--score-means", "bonafide"], ["--batch-size", "1"]):
        run = without_torch([*SCORE_TINY, *extra], own_export_cache)
        if extra[0] == "--batch-size":  # batching is not part of the export: the record serves it
            assert run.returncode == 0 and FAST in run.stderr, run.stderr
        else:  # another meaning of the score: no record, and the model path needs torch
            assert run.returncode != 0 and FAST not in run.stderr
