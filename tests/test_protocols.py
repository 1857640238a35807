"""Protocols for ``evaluate``: every shape read from realistic lines, every hostile file refused in one
line naming the file and the line, random protocols read back with their labels and attacks, and
audio found by one listing per folder.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core import protocols
from harness.core.protocols import (
    KIND_2019,
    KIND_2021,
    KIND_2021_DF,
    KIND_CSV,
    Protocol,
    ProtocolError,
    audio_files,
    file_stem,
    read_protocol,
)
from tests.helpers import refusal

# Lines as the distributions write them (ASVspoof 2019 LA/PA CM protocols, the 2021 keys' README).
LA_2019 = """\
LA_0039 LA_E_2834763 - A11 spoof
LA_0014 LA_E_8877452 - A14 spoof
LA_0040 LA_E_6828287 - - bonafide
LA_0028 LA_E_1228117 - A07 spoof
"""
PA_2019 = """\
PA_0079 PA_E_1000001 aaa AA spoof
PA_0079 PA_E_1000002 bbc - bonafide
PA_0082 PA_E_1000003 cca CB spoof
"""
LA_2021 = """\
LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval
LA_0009 LA_E_1000001 alaw ita_tx bonafide bonafide notrim eval
LA_0010 LA_E_1000002 opus sin_tx A10 spoof notrim progress
LA_0011 LA_E_1000003 none loc_tx - bonafide notrim hidden
"""
PA_2021 = """\
PA_0010 PA_E_1000001 R3 M3 d4 r1 m1 s4 c4 spoof notrim eval
PA_0010 PA_E_1000002 R3 M3 D2 - - - - bonafide notrim eval
PA_0012 PA_E_1000003 R1 M2 d1 r2 m3 s2 c3 spoof trim hidden
"""
DF_2021 = """\
LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -
LA_0023 DF_E_2000012 low_mp3 asvspoof - bonafide notrim eval bonafide - - - -
TEF2 DF_E_2000013 high_m4a vcc2020 Task1-team20 spoof notrim eval unknown Task1 team20 F eng
"""
DF_2021_STAGE1 = """\
LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress
LA_0023 DF_E_2000012 low_mp3 asvspoof - bonafide notrim eval
"""
IN_THE_WILD = """\
file,speaker,label
0.wav,Alec Guinness,spoof
1.wav,Alec Guinness,spoof
2.wav,Barack Obama,bona-fide
3.wav,"Cooper, Alice",Bona-Fide
4.wav,Donald Trump,BONAFIDE
5.wav,Donald Trump,bona fide
"""

FORMATS = {
    "la2019": (LA_2019, KIND_2019, ["LA_E_2834763", "LA_E_8877452", "LA_E_6828287", "LA_E_1228117"],
               [False, False, True, False], ["A11", "A14", "bonafide", "A07"]),
    "pa2019": (PA_2019, KIND_2019, ["PA_E_1000001", "PA_E_1000002", "PA_E_1000003"], [False, True, False],
               ["AA", "bonafide", "CB"]),
    "la2021": (LA_2021, KIND_2021, ["LA_E_9332881", "LA_E_1000001", "LA_E_1000002", "LA_E_1000003"],
               [False, True, False, True], ["A07", "bonafide", "A10", "bonafide"]),
    "pa2021": (PA_2021, KIND_2021, ["PA_E_1000001", "PA_E_1000002", "PA_E_1000003"], [False, True, False],
               ["c4-s4", "bonafide", "c3-s2"]),
    "df2021": (DF_2021, KIND_2021_DF, ["DF_E_2000011", "DF_E_2000012", "DF_E_2000013"], [False, True, False],
               ["A14", "bonafide", "Task1-team20"]),
    "df2021_stage1": (DF_2021_STAGE1, KIND_2021_DF, ["DF_E_2000011", "DF_E_2000012"], [False, True],
                      ["A14", "bonafide"]),
    "in_the_wild": (IN_THE_WILD, KIND_CSV, ["0", "1", "2", "3", "4", "5"],
                    [False, False, True, True, True, True],
                    ["spoof", "spoof", "bonafide", "bonafide", "bonafide", "bonafide"]),
}


def write(tmp_path: Path, content: str | bytes, name: str = "protocol.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read_refusal(path: Path) -> str:
    """Reading ``path`` as a protocol is refused in one line that starts with the path."""
    message = refusal(lambda: read_protocol(path), error=ProtocolError)
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_reads_its_labels_and_attacks(tmp_path: Path, name: str) -> None:
    text, kind, utterances, bonafide, attacks = FORMATS[name]
    protocol = read_protocol(write(tmp_path, text, "meta.csv" if kind == KIND_CSV else "key.txt"))
    assert protocol.kind == kind
    assert protocol.utterances == tuple(utterances)
    assert protocol.is_bonafide.tolist() == bonafide
    assert protocol.attacks == tuple(attacks)
    assert (protocol.n_bonafide, protocol.n_spoof) == (sum(bonafide), len(bonafide) - sum(bonafide))
    expected_audio = [f"{u}.wav" for u in utterances] if kind == KIND_CSV else [None] * len(utterances)
    assert list(protocol.audio) == expected_audio


def test_labels_are_read_only(tmp_path: Path) -> None:
    protocol = read_protocol(write(tmp_path, LA_2019))
    with pytest.raises(ValueError):
        protocol.is_bonafide[0] = True


@pytest.mark.parametrize("variant", ["crlf", "bom", "trailing_blank_lines", "blank_line_inside"])
def test_harmless_variations_are_accepted(tmp_path: Path, variant: str) -> None:
    text = {"crlf": LA_2019.replace("\n", "\r\n"), "bom": "\ufeff" + LA_2019,
            "trailing_blank_lines": LA_2019 + "\n\n  \n",
            "blank_line_inside": LA_2019.replace("\n", "\n\n", 1)}[variant]
    protocol = read_protocol(write(tmp_path, text))
    assert protocol.utterances == tuple(FORMATS["la2019"][2])
    assert protocol.attacks == tuple(FORMATS["la2019"][4])


def test_csv_with_crlf_and_bom(tmp_path: Path) -> None:
    protocol = read_protocol(write(tmp_path, "\ufeff" + IN_THE_WILD.replace("\n", "\r\n"), "meta.csv"))
    assert protocol.kind == KIND_CSV and protocol.utterances == tuple(FORMATS["in_the_wild"][2])


# --- refusals: one line, the file and the line ----------------------------------------------------

REFUSED = {
    "unknown_shape": ("LA_0039 LA_E_1 A11 spoof\n",
                      "line 1 has 4 columns; expected an ASVspoof 2019 protocol"),
    "one_column": ("LA_E_1\n", "line 1 has 1 column; expected"),
    "json": ('{"file": "a.wav", "score": 1}\n',
             "line 1 is a CSV header without a file and a label column"),
    "mixed_shapes": (LA_2019 + LA_2021, "line 5 has 8 columns; line 1 has 5 (an ASVspoof 2019 protocol)"),
    "bad_key": (LA_2019 + "LA_0040 LA_E_9 - - genuine\n",
                "line 5: key 'genuine' in column 5; expected bonafide"),
    "duplicate": (LA_2019 + "LA_0040 LA_E_8877452 - - bonafide\n",
                  "lines 2 and 5 both hold utterance 'LA_E_8877452'"),
    "empty": ("", "is empty; expected"),
    "blank": ("\n \n\r\n", "is empty; expected"),
    "no_spoof": ("LA_0040 LA_E_1 - - bonafide\nLA_0040 LA_E_2 - - bonafide\n",
                 "all 2 utterances are bona fide"),
    "no_bonafide": ("LA_0040 LA_E_1 - A07 spoof\n", "all 1 utterances are spoof and none is bona fide"),
    "nul_byte": (LA_2019.encode().replace(b"LA_E_8877452", b"LA_E_88\x00452"), "line 2 holds a NUL byte"),
    "utf16": (LA_2019.encode("utf-16"), "line 1 holds a NUL byte (UTF-16 or binary?)"),
    "latin1": (LA_2019.encode() + "LA_0040 LA_E_\u00e9 - - bonafide\n".encode("latin-1"),
               "line 5 is not UTF-8"),
    "separator_in_id": (LA_2019 + "LA_0040 ../../etc/passwd - - bonafide\n",
                        "line 5: utterance id '../../etc/passwd' names a path"),
    "dotdot_id": (LA_2019 + "LA_0040 .. - - bonafide\n", "line 5: utterance id '..' names a path"),
    "long_line": (LA_2019 + "LA_0040 LA_E_9 - " + "A" * 70_000 + " spoof\n",
                  "line 5 is 70,023 characters long"),
    "csv_no_label": ("file,speaker\n0.wav,x\n",
                     "line 1 is a CSV header without a file and a label column (its columns: file, speaker)"),
    "csv_bad_label": (IN_THE_WILD + "6.wav,x,fake\n", "line 8: label 'fake'; expected bona-fide"),
    "csv_fields": ("file,speaker,label\n0.wav,spoof\n", "line 2 has 2 fields; the CSV header (line 1) has 3"),
    "csv_two_file_columns": ("file,label,file\n0.wav,spoof,1.wav\n", "the CSV header has 2 'file' columns"),
    "csv_absolute": (IN_THE_WILD + "/etc/passwd,x,spoof\n",
                     "line 8: file '/etc/passwd' is an absolute path"),
    "csv_climbs": (IN_THE_WILD + "../x.wav,x,spoof\n",
                   "line 8: file '../x.wav' climbs out of the audio root"),
    "csv_empty_file": (IN_THE_WILD + ",x,spoof\n", "line 8: file '' is empty"),
    "csv_header_only": ("file,speaker,label\n", "holds a header and no utterance"),
    "csv_same_stem": ("file,label\na/x.wav,spoof\nb/x.flac,bonafide\n",
                      "lines 2 and 3 both hold utterance 'x'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals_are_one_line_naming_file_and_line(tmp_path: Path, case: str) -> None:
    content, expected = REFUSED[case]
    message = read_refusal(write(tmp_path, content))
    assert expected in message, message


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    message = read_refusal(write(tmp_path, "\n\n" + LA_2019 + "\nLA_0040 LA_E_9 - - genuine\n"))
    assert "line 8: key 'genuine'" in message, message


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    assert "is a directory" in read_refusal(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "FIFO" in read_refusal(fifo)  # never opened: a FIFO would block the read forever
    assert "no such file" in read_refusal(tmp_path / "missing.txt")


def test_a_file_over_the_size_cap_is_refused_before_reading(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocols, "MAX_TEXT_BYTES", 64)
    message = read_refusal(write(tmp_path, LA_2019))
    assert f"is {len(LA_2019)} bytes; a protocol or score file is at most 64" in message


# --- random protocols read back --------------------------------------------------------------------

ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=12)
attack_ids = st.sampled_from(["A07", "A10", "A19", "AA", "CB", "Task1-team20"])
entries = st.lists(st.tuples(ids, st.booleans(), attack_ids), min_size=2, max_size=40,
                   unique_by=lambda entry: entry[0]).filter(
    lambda rows: any(bona for _, bona, _ in rows) and not all(bona for _, bona, _ in rows))


def render(shape: str, rows: list[tuple[str, bool, str]]) -> str:
    lines = []
    for utt, bona, attack in rows:
        key = "bonafide" if bona else "spoof"
        shown = "-" if bona else attack
        lines.append({
            "2019": f"LA_0001 {utt} - {shown} {key}",
            "2021": f"LA_0001 {utt} alaw ita_tx {shown} {key} notrim eval",
            "df": f"LA_0001 {utt} nocodec asvspoof {shown} {key} notrim eval {attack} - - - -",
            "csv": f"{utt}.wav,speaker {utt},{'bona-fide' if bona else 'spoof'}",
        }[shape])
    header = "file,speaker,label\n" if shape == "csv" else ""
    return header + "\n".join(lines) + "\n"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(["2019", "2021", "df", "csv"]), rows=entries)
def test_random_protocols_read_back(tmp_path: Path, shape: str, rows: list[tuple[str, bool, str]]) -> None:
    protocol = read_protocol(write(tmp_path, render(shape, rows)))
    assert protocol.utterances == tuple(utt for utt, _, _ in rows)
    assert protocol.is_bonafide.tolist() == [bona for _, bona, _ in rows]
    named = shape != "csv"
    assert protocol.attacks == tuple("bonafide" if bona else (attack if named else "spoof")
                                     for _, bona, attack in rows)


parts = st.text(alphabet="ab.c_-", min_size=1, max_size=6).filter(lambda part: part != ".")


@given(st.lists(parts, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_file_stem_is_the_paths_stem(names: list[str], absolute: bool, trailing: bool) -> None:
    path = ("/" if absolute else "") + "/".join(names) + ("/" if trailing else "")
    assert file_stem(path) == PurePosixPath(path).stem


# --- audio --------------------------------------------------------------------------------------------


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_asvspoof_audio_root_flac_then_wav_then_subfolders(tmp_path: Path) -> None:
    protocol = read_protocol(write(tmp_path, LA_2019))
    root = tmp_path / "ASVspoof2019_LA_eval"
    a, b, c, d = FORMATS["la2019"][2]
    expected = [touch(root / f"{a}.flac"), touch(root / f"{b}.wav"), touch(root / "flac" / f"{c}.flac"),
                touch(root / "wav" / f"{d}.wav")]
    touch(root / "flac" / f"{a}.flac")  # the root's own file comes first
    touch(root / f"{b}.txt")
    assert audio_files(protocol, str(root)) == expected


def test_missing_audio_is_one_error_naming_how_many_and_the_first_few(tmp_path: Path) -> None:
    rows = "".join(f"LA_0001 LA_E_{i} - A07 spoof\n" for i in range(120)) + "LA_0001 LA_E_b - - bonafide\n"
    protocol = read_protocol(write(tmp_path, rows))
    root = tmp_path / "audio"
    for i in range(121):
        if i not in (1, 2, 9, 30, 31, 32, 33, 34):
            touch(root / "flac" / f"LA_E_{i}.flac")
    touch(root / "flac" / "LA_E_b.flac")
    with pytest.raises(ProtocolError) as info:
        audio_files(protocol, str(root))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{protocol.path}: ")
    assert f"8 of 121 protocol utterances have no audio under {root}" in message
    assert message.endswith("LA_E_1, LA_E_2, LA_E_9, LA_E_30, LA_E_31 and 3 more"), message


def test_audio_lookup_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = "".join(f"LA_0001 LA_E_{i} - A07 spoof\n" for i in range(200)) + "LA_0001 LA_E_b - - bonafide\n"
    protocol = read_protocol(write(tmp_path, rows))
    for utt in protocol.utterances:
        touch(tmp_path / "audio" / "flac" / f"{utt}.flac")
    calls = []
    real_scandir = os.scandir

    def counted(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(protocols.os, "scandir", counted)
    assert len(audio_files(protocol, str(tmp_path / "audio"))) == 201
    assert len(calls) == 3  # the root, flac/, wav/: never one call per utterance


def test_csv_audio_is_relative_to_the_csv_folder_by_default(tmp_path: Path) -> None:
    corpus = tmp_path / "release_in_the_wild"
    corpus.mkdir()
    protocol = read_protocol(write(corpus, "file,label\n0.wav,spoof\nclips/1.flac,bona-fide\n", "meta.csv"))
    expected = [touch(corpus / "0.wav"), touch(corpus / "clips" / "1.flac")]
    assert audio_files(protocol, None) == expected
    other = tmp_path / "elsewhere"
    touch(other / "0.wav")
    missing = r"1 of 2 protocol utterances have no audio under .*elsewhere: clips/1.flac$"
    with pytest.raises(ProtocolError, match=missing):
        audio_files(protocol, str(other))


def test_a_hostile_protocol_built_in_code_is_refused_too(tmp_path: Path) -> None:
    hostile = Protocol(str(tmp_path / "p.txt"), KIND_2019, ("../secret", "x"), np.array([True, False]),
                       ("bonafide", "A07"), (None, None))
    with pytest.raises(ProtocolError, match="utterance id '../secret' names a path"):
        audio_files(hostile, str(tmp_path))
    hostile_csv = Protocol(str(tmp_path / "m.csv"), KIND_CSV, ("secret", "x"), np.array([True, False]),
                           ("bonafide", "spoof"), ("../secret.wav", "x.wav"))
    with pytest.raises(ProtocolError, match="is not a path inside the audio root"):
        audio_files(hostile_csv, str(tmp_path))


def test_audio_root_must_be_a_directory(tmp_path: Path) -> None:
    protocol = read_protocol(write(tmp_path, LA_2019))
    with pytest.raises(ProtocolError, match="the audio root is not a directory"):
        audio_files(protocol, str(tmp_path / "protocol.txt"))
