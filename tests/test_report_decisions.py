"""The report's decisions section on a team's own labelled corpus (``report --protocol/--audio-root``):
the rows come from that protocol's files, and a variant holding its reference's function decides alike."""

from __future__ import annotations

from harness.__main__ import main
from harness.report.decisions import decisions_section
from tests.helpers import assert_one_error_line


def test_the_decisions_are_taken_on_the_given_protocol(fixture_corpus, tmp_path, one_thread) -> None:
    lines = fixture_corpus.protocol.read_text().splitlines()
    protocol = tmp_path / "team.txt"  # two of each class: the team's own protocol, not the bundled one
    protocol.write_text("\n".join([*lines[:2], *lines[-2:]]) + "\n")
    said: list[str] = []
    section = decisions_section(["skip_modules", "basic_blocks"], quick=True, forms=["folded"],
                                progress=said.append, protocol=str(protocol),
                                audio_root=str(fixture_corpus.directory))
    assert str(protocol) in section["corpus"] and (section["n"], section["n_bonafide"]) == (4, 2)
    rows = {(row["a"], row["b"]): row for row in section["rows"]}
    same = rows["skip_modules", "basic_blocks"]
    assert (same["n"], same["flips"], same["max_abs_score_diff"]) == (4, 0, 0.0)
    assert rows["skip_modules", "skip_modules (folded)"]["n"] == 4
    assert "decisions: basic_blocks vs skip_modules" in said


def test_audio_root_without_a_protocol_is_refused_before_any_work(capsys) -> None:
    assert main(["report", "--quick", "--audio-root", "/nonexistent"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--audio-root applies to --protocol")
