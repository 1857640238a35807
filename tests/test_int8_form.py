"""``score --form onnxruntime-int8``: the int8 form runs, is cached under its own key, is never picked
by ``auto`` unless the variant's spec opts in, and its calibration files are inputs the run never
overwrites."""

from __future__ import annotations

import json

import pytest

from harness.__main__ import main
from harness.core.quantize import quantize_missing
from tests.helpers import SCORE_TINY, TINY, TINY_FILES, restored_registry

pytestmark = pytest.mark.skipif(quantize_missing() is not None, reason=f"int8 needs {quantize_missing()}")
INT8 = [*SCORE_TINY[:-1], "onnxruntime-int8", "--format", "json"]


def test_the_int8_form_scores_and_its_quantization_is_cached(own_export_cache, capsys) -> None:
    assert main(INT8) == 0
    first = capsys.readouterr()
    assert "as onnxruntime-int8 (" in first.err and "calibrated on" in first.err
    scores = [r["score"] for r in json.loads(first.out)["results"]]
    assert len(scores) == len(TINY_FILES) and all(0.0 <= s <= 1.0 for s in scores)
    assert main(INT8) == 0
    second = capsys.readouterr()
    assert "cached export" in second.err and second.out == first.out
    assert main([*SCORE_TINY[:-2], "--format", "json"]) == 0  # --form auto
    assert "int8" not in capsys.readouterr().err


def test_calibration_files_are_read_never_written(own_export_cache, tmp_path, capsys) -> None:
    assert main([*INT8[:-2], "--calibrate-on", TINY_FILES[0], "--output", TINY_FILES[0]]) == 2
    assert "which this run reads" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert main([*INT8, "--calibrate-on", str(bad)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the random-weights warning
    assert last.startswith("error: --calibrate-on") and "bad.wav" in last


@pytest.mark.parametrize("forms, picked", [(["onnxruntime"], "onnxruntime (") ,
                                           (["onnxruntime", "onnxruntime-int8"], "onnxruntime-int8 (")])
def test_auto_takes_the_int8_form_only_where_the_spec_opts_in(own_export_cache, tmp_path, capsys, forms,
                                                              picked) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[tool.rawnet2-harness.variants.tiny]\nfactory = "{TINY}"\nscore = "probability"\n'
                        f"forms = {forms!r}\n".replace("'", '"'))
    with restored_registry():
        assert main(["--registry", str(registry), "score", *TINY_FILES, "--variant", "tiny"]) == 0
    assert f"score: tiny as {picked}" in capsys.readouterr().err

