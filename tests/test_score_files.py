"""Score files for ``evaluate``: the score log ``score --output`` really writes, ``score --format json``'s
document and the ASVspoof text formats read with their orientation, random scores read back exactly in
each format, every refusal one line naming the file and the line; ASVspoof 2019 ASV scores likewise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.contract import ScoreTransform
from harness.core.score_files import (
    KIND_CM_2019,
    KIND_DOCUMENT,
    KIND_LOG,
    KIND_TWO_COLUMNS,
    ScoreFileError,
    read_asv_scores,
    read_scores,
)
from harness.rawnet2.scorelog import fingerprint, header_line, record_line
from harness.rawnet2.scoring import FileScore
from tests.helpers import refusal

CM_2019 = """\
LA_E_2834763 A11 spoof -3.1415
LA_E_8877452 A14 spoof -0.5
LA_E_6828287 - bonafide 4.25e-2
LA_E_1228117 A07 spoof 1
"""
TWO_COLUMNS = """\
LA_E_9332881 -5.8546
LA_E_7294490 1.25
"""
ASV_2019 = """\
bonafide target 2.5
bonafide nontarget -3.25
spoof spoof 0.5
bonafide target 1.75
spoof spoof -1
"""


def write(tmp_path: Path, content: str | bytes, name: str = "scores.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read_refusal(read: Callable[[Path], object], path: Path, expected: str) -> None:
    """``read(path)`` is refused in one line that starts with the path and holds ``expected``."""
    message = refusal(lambda: read(path), expected, error=ScoreFileError)
    assert message.startswith(f"{path}: "), message


def score_log(results: list[FileScore], means: str = "spoof", score: str = "probability") -> bytes:
    """A log as ``score --output`` writes it: the real header and record writers."""
    print_ = fingerprint(variant="legacy", factory="legacy.model:RawNet2", kwargs={}, checkpoint=None,
                         weights=None, form="eager", device="cpu", length=64_600, sample_rate=16_000,
                         transform=ScoreTransform.parse(score, means), options={"batch_size": 8})
    return header_line(print_) + b"".join(record_line(r) for r in results)


def document(results: list[FileScore], means: str = "bonafide") -> str:
    """``score --format json``'s document (harness.rawnet2.score_command)."""
    return json.dumps({"variant": "asv", "score": "log_softmax[1]", "score_means": means,
                       "scores_are": "log-probabilities", "results": [r.as_json() for r in results]},
                      indent=2)


RESULTS = [FileScore("/data/LA/flac/LA_E_1.flac", score=0.25), FileScore("/data/LA/flac/LA_E_2.flac",
                                                                         error="decode failed: not audio"),
           FileScore("clips/LA_E_3.wav", score=1.0)]


def test_the_score_log_score_writes(tmp_path: Path) -> None:
    read = read_scores(write(tmp_path, score_log(RESULTS), "run.jsonl"))
    assert read.kind == KIND_LOG
    assert read.scores == {"LA_E_1": 0.25, "LA_E_3": 1.0}
    assert read.failed == ("LA_E_2",)
    assert read.score_means == "spoof"
    bonafide = read_scores(write(tmp_path, score_log(RESULTS, "bonafide")))
    assert bonafide.score_means == "bonafide"


def test_json_lines_without_a_header(tmp_path: Path) -> None:
    read = read_scores(write(tmp_path, b"".join(record_line(r) for r in RESULTS)))
    assert (read.kind, read.score_means, read.failed) == (KIND_LOG, None, ("LA_E_2",))
    assert read.scores == {"LA_E_1": 0.25, "LA_E_3": 1.0}


def test_the_document_score_format_json_prints(tmp_path: Path) -> None:
    read = read_scores(write(tmp_path, document(RESULTS), "scores.json"))
    assert (read.kind, read.score_means) == (KIND_DOCUMENT, "bonafide")
    assert read.scores == {"LA_E_1": 0.25, "LA_E_3": 1.0} and read.failed == ("LA_E_2",)


@pytest.mark.parametrize(("text", "kind", "expected"), [
    (CM_2019, KIND_CM_2019, {"LA_E_2834763": -3.1415, "LA_E_8877452": -0.5, "LA_E_6828287": 0.0425,
                             "LA_E_1228117": 1.0}),
    (TWO_COLUMNS, KIND_TWO_COLUMNS, {"LA_E_9332881": -5.8546, "LA_E_7294490": 1.25}),
])
@pytest.mark.parametrize("variant", ["as_is", "crlf", "bom", "trailing_blank_lines", "tabs"])
def test_text_formats(tmp_path: Path, text: str, kind: str, expected: dict[str, float], variant: str) -> None:
    text = {"as_is": text, "crlf": text.replace("\n", "\r\n"), "bom": "\ufeff" + text,
            "trailing_blank_lines": text + "\n \n\n", "tabs": text.replace(" ", "\t")}[variant]
    read = read_scores(write(tmp_path, text))
    assert (read.kind, read.scores, read.failed, read.score_means) == (kind, expected, (), None)


def test_a_log_with_crlf_and_bom_is_read(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + score_log(RESULTS).replace(b"\n", b"\r\n")
    assert read_scores(write(tmp_path, data)).scores == {"LA_E_1": 0.25, "LA_E_3": 1.0}


# --- refusals ------------------------------------------------------------------------------------------

RECORD_2 = '{"file": "b.wav", "score": 0.5}\n'
REFUSED = {
    "empty": ("", "is empty; expected a score log"),
    "blank": ("\n\n", "is empty"),
    "mixed_columns": (TWO_COLUMNS + CM_2019,
                      "line 3 has 4 columns; line 1 has 2 (two columns): one file holds"),
    "three_columns": ("LA_E_1 spoof 0.5\n", "line 1 has 3 columns; expected a score log"),
    "not_a_number": (TWO_COLUMNS + "LA_E_3 high\n", "line 3: score 'high' is not a number"),
    "nan": ("LA_E_1 0.5\nLA_E_2 nan\n", "line 2: score 'nan' is not finite"),
    "inf": ("LA_E_1 -inf\n", "line 1: score '-inf' is not finite"),
    "overflow": ("LA_E_1 0.5\n\nLA_E_2 1e400\n", "line 3: score '1e400' is not finite"),
    "duplicate": (TWO_COLUMNS + "LA_E_9332881 0.5\n", "line 1 and line 3 both hold utterance 'LA_E_9332881'"),
    "cm_bad_key": (CM_2019 + "LA_E_9 A07 fake 0.1\n",
                   "line 5: key 'fake' in column 3; expected bonafide or spoof"),
    "nul": (TWO_COLUMNS.encode().replace(b"1.25", b"1\x0025"), "line 2 holds a NUL byte"),
    "latin1": (TWO_COLUMNS.encode() + "LA_E_\u00e9 0.5\n".encode("latin-1"), "line 3 is not UTF-8"),
    "long_line": (TWO_COLUMNS + "LA_E_3 " + "1" * 70_000 + "\n", "line 3 is 70,007 characters long"),
    "json_then_text": ('{"file": "a.wav", "score": 0.5}\nLA_E_1 0.5\n', "line 2 is not JSON"),
    "bad_json": (RECORD_2 + '{"file": "c.wav", "score": }\n', "line 2 is not JSON"),
    "two_values_on_a_line": (RECORD_2 + '{"file": "c.wav", "score": 1}, {"file": "d.wav", "score": 1}\n',
                             "line 2 is not JSON"),
    "extra_key": (RECORD_2 + '{"file": "c.wav", "score": 1, "label": "spoof"}\n',
                  'line 2 is not {"file": PATH, "score": NUMBER} or {"file": PATH, "error": TEXT}'),
    "string_score": (RECORD_2 + '{"file": "c.wav", "score": "0.5"}\n', "line 2: score '0.5' is not a number"),
    "bool_score": (RECORD_2 + '{"file": "c.wav", "score": true}\n', "line 2: score True is not a number"),
    "json_nan": (RECORD_2 + '{"file": "c.wav", "score": NaN}\n', "line 2: score nan is not finite"),
    "json_huge_int": (RECORD_2 + '{"file": "c.wav", "score": 1' + "0" * 400 + '}\n',
                      "line 2: score 1000000000000000000000000000000000000... is not finite"),
    "json_duplicate_stem": (RECORD_2 + '{"file": "other/b.flac", "error": "x"}\n',
                            "line 1 and line 2 both hold utterance 'b'"),
    "second_header": (score_log(RESULTS) + score_log(RESULTS), "line 5 is a second score-log header"),
    "header_only": (score_log([]), "holds a score-log header and no record"),
    "bad_header": ('{"score_log": 2, "fingerprint": {}}\n' + RECORD_2, "line 1 is not a score-log header"),
    "bad_means": ('{"score_log": 1, "fingerprint": {"score_means": "real"}}\n' + RECORD_2,
                  "line 1: the fingerprint's score_means is 'real'; expected one of spoof, bonafide"),
    "document_bad_means": (document(RESULTS, "fake"), "the document's score_means is 'fake'"),
    "document_results_not_a_list": (json.dumps({"results": {"a": 1}}), '"results" is dict; expected a list'),
    "document_empty_results": (json.dumps({"results": []}), '"results" is empty'),
    "document_bad_record": (json.dumps({"results": [{"file": "a.wav", "score": 1}, {"file": "b.wav"}]}),
                            "results[1] is not"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals_are_one_line_naming_file_and_line(tmp_path: Path, case: str) -> None:
    content, expected = REFUSED[case]
    read_refusal(read_scores, write(tmp_path, content), expected)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScoreFileError, match="is a directory"):
        read_scores(tmp_path)


# --- random scores read back exactly -----------------------------------------------------------------

ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1,
              max_size=16)
finite = st.floats(allow_nan=False, allow_infinity=False)
systems = st.dictionaries(ids, finite, min_size=1, max_size=30)


def render(kind: str, scores: dict[str, float]) -> str | bytes:
    if kind == "log":
        return score_log([FileScore(f"/corpus/flac/{u}.flac", score=s) for u, s in scores.items()],
                         score="log_softmax[1]", means="bonafide")
    if kind == "document":
        return document([FileScore(f"{u}.wav", score=s) for u, s in scores.items()])
    if kind == "cm2019":
        return "".join(f"{u} A07 {'spoof' if i % 2 else 'bonafide'} {s!r}\n"
                       for i, (u, s) in enumerate(scores.items()))
    return "".join(f"{u} {s!r}\n" for u, s in scores.items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["log", "document", "cm2019", "two"]), scores=systems)
def test_random_scores_read_back_exactly(tmp_path: Path, kind: str, scores: dict[str, float]) -> None:
    read = read_scores(write(tmp_path, render(kind, scores)))
    assert read.scores == scores  # exact: every score written as repr, read as float() does
    assert all(math.copysign(1, read.scores[u]) == math.copysign(1, s) for u, s in scores.items())
    assert read.failed == ()


# --- ASV scores ----------------------------------------------------------------------------------------


def test_asv_scores_by_class(tmp_path: Path) -> None:
    asv = read_asv_scores(write(tmp_path, ASV_2019.replace("\n", "\r\n")))
    assert asv.target.tolist() == [2.5, 1.75]
    assert asv.nontarget.tolist() == [-3.25]
    assert asv.spoof.tolist() == [0.5, -1.0]
    assert asv.target.dtype.name == "float64" and not asv.target.flags.writeable


ASV_REFUSED = {
    "other_pair": (ASV_2019 + "bonafide spoof 1.0\n",
                   "line 6: 'bonafide spoof' is not one of bonafide target, bonafide nontarget, spoof spoof"),
    "no_nontarget": ("bonafide target 1\nspoof spoof 0\n", "holds no 'bonafide nontarget' line"),
    "no_target": ("bonafide nontarget 1\nspoof spoof 0\n", "holds no 'bonafide target' line"),
    "no_spoof": ("bonafide target 1\nbonafide nontarget 0\n", "holds no 'spoof spoof' line"),
    "nan": (ASV_2019 + "spoof spoof nan\n", "line 6: score 'nan' is not finite"),
    "not_a_number": (ASV_2019 + "spoof spoof x\n", "line 6: score 'x' is not a number"),
    "columns": (ASV_2019 + "LA_0007 LA_E_5013670 spoof spoof -4.8\n",
                "line 6 has 5 columns; expected ASVspoof 2019"),
    "empty": ("", "is empty; expected ASVspoof 2019 ASV scores"),
}


@pytest.mark.parametrize("case", ASV_REFUSED)
def test_asv_refusals_are_one_line(tmp_path: Path, case: str) -> None:
    content, expected = ASV_REFUSED[case]
    read_refusal(read_asv_scores, write(tmp_path, content), expected)
