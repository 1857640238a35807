"""A registry file is validated whole before anything is registered: types, enums, known checks,
names, references in any order, and a path that must be a small regular file.

Each case: one ``HarnessError`` line naming the file and the table (exit 2 from the CLI), and
nothing registered.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.core.contract import InputContract, ScoreTransform
from harness.core.errors import HarnessError
from harness.rawnet2.registry import MAX_REGISTRY_BYTES, SPEC_KEYS, SUBJECTS, VariantSpec, load_registry_file
from tests.helpers import restored_registry

TABLE = "[tool.rawnet2-harness.variants.x]\nfactory = 'fixed.skip_modules:RawNet2'\n"


@pytest.fixture
def registry(tmp_path: Path):
    """Write a registry file; every variant it registered is removed afterwards."""
    path = tmp_path / "reg.toml"

    def write(text: str) -> Path:
        path.write_text(text, encoding="utf-8")
        return path

    with restored_registry():
        yield write


@pytest.mark.parametrize(("text", "message"), [
    ("[tool]\nrawnet2-harness = 'x'\n", r"\[tool.rawnet2-harness\] must be a table, got str"),
    ("tool = 5\n", r"\[tool\] must be a table, got int"),
    ("[tool.rawnet2-harness]\nvariants = [1]\n",
     r"\[tool.rawnet2-harness.variants\] must be a table, got list"),
    (TABLE + "runs = 'no'\n", r"runs must be true or false, got str 'no'"),
    (TABLE + "reference_modes = 5\n", r"reference_modes must be a list of train, eval, got int 5"),
    (TABLE + "reference_modes = ['test']\n", r"reference_modes \['test'\] are not among train, eval"),
    (TABLE + "layout = 'bogus'\n", r"layout 'bogus' is not one of legacy, tuple_blocks, skip_modules"),
    (TABLE + "expected_defects = {skip_wirring = 'typo'}\n", r"unknown check\(s\) skip_wirring; known: "),
    (TABLE + "output = 'scores'\n", r"output 'scores' is not one of probability, logits, any"),
    (TABLE + "input_shape = [1, 0]\n", r"input_shape must be positive integers"),
    (TABLE + "input_shape = ['1']\n", r"input_shape must be a list of positive integers"),
    (TABLE + "input_shape = [1, 100]\nmin_length = 200\n", r"shorter than min_length 200"),
    (TABLE + "score = 'log_softmax'\n", r"score 'log_softmax' needs its column: log_softmax\[k\]"),
    (TABLE + "score = 'argmax[1]'\n", r"score 'argmax\[1\]' is not one of probability"),
    (TABLE + "score_means = 'real'\n", r"score_means 'real' is not one of spoof, bonafide"),
    ("[tool.rawnet2-harness.variants.x]\nfactory = 5\n", r"factory must be a 'MODULE:ATTR' string, got int"),
    ("[tool.rawnet2-harness.variants.'fixed.skip_modules:RawNet2']\nfactory = 'fixed.skip_modules:RawNet2'\n",
     r"never MODULE:ATTR"),
    ("[tool.rawnet2-harness.variants.'']\nfactory = 'fixed.skip_modules:RawNet2'\n", r"non-empty word"),
    (TABLE + "reference = 'nowhere'\n", r"reference 'nowhere' is not registered"),
    ("[tool.rawnet2-harness.variants.a]\nfactory = 'm:f'\nreference = 'b'\n"
     "[tool.rawnet2-harness.variants.b]\nfactory = 'm:f'\nreference = 'a'\n", r"references form a cycle"),
])
def test_a_bad_registry_is_one_line_naming_file_and_table_and_registers_nothing(registry, text, message):
    path = registry(text)
    before = dict(SUBJECTS)
    with pytest.raises(HarnessError, match=message) as caught:
        load_registry_file(path)
    assert "\n" not in str(caught.value) and str(path.resolve().parent) in str(caught.value)
    assert dict(SUBJECTS) == before


@pytest.mark.parametrize("key", SPEC_KEYS)
def test_every_key_a_table_may_hold_is_type_checked_naming_what_it_must_be(registry, key: str):
    # A TOML date is no key's type: each key must refuse it with its own wording, so a field added
    # to VariantSpec is either given a TOML type and wording or kept out of the tables.
    factory = "" if key == "factory" else "factory = 'fixed.skip_modules:RawNet2'\n"
    path = registry(f"[tool.rawnet2-harness.variants.x]\n{factory}{key} = 1979-05-27\n")
    refusal = rf"variants\.x\]: {key} must be .+, got date datetime\.date\(1979, 5, 27\)$"
    with pytest.raises(HarnessError, match=refusal):
        load_registry_file(path)


def test_a_tables_keys_are_spec_fields_never_its_name_or_origin():
    fields = [f.name for f in dataclasses.fields(VariantSpec)]
    assert list(SPEC_KEYS) == [f for f in fields if f in SPEC_KEYS]  # in the dataclass's order
    assert {"name", "origin"}.isdisjoint(SPEC_KEYS)  # the table's own name and the file's path


def test_references_may_come_in_any_order(registry):
    # a -> b -> c, written in that order: each is registered after the variant it names.
    factory = "factory = 'fixed.skip_modules:RawNet2'\n"
    path = registry("".join(f"[tool.rawnet2-harness.variants.{name}]\n{factory}"
                            + (f"reference = '{ref}'\n" if ref else "")
                            for name, ref in (("a", "b"), ("b", "c"), ("c", None))))
    specs = load_registry_file(path)
    assert [s.name for s in specs] == ["a", "b", "c"]
    assert SUBJECTS["a"].reference == "b" and SUBJECTS["b"].reference == "c"


def test_declared_contract_and_score_are_read(registry):
    path = registry(TABLE + "input_shape = [64600]\nmin_length = 2315\nscore = 'log_softmax[1]'\n"
                            "score_means = 'bonafide'\noutput = 'logits'\n")
    load_registry_file(path)
    spec = SUBJECTS["x"]
    assert spec.input_contract() == InputContract((64600,), 2315)
    assert spec.score_transform == ScoreTransform("log_softmax", 1, "bonafide")


@pytest.mark.parametrize("kind", ["fifo", "directory", "too-large", "utf-16"])
def test_a_registry_path_must_be_a_small_utf8_regular_file(tmp_path: Path, kind: str):
    path = tmp_path / "reg.toml"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
        message = "is a FIFO"
    elif kind == "directory":
        path.mkdir()
        message = "is a directory"
    elif kind == "too-large":
        path.write_bytes(b"#" * (MAX_REGISTRY_BYTES + 1))
        message = "too large for a registry file"
    else:
        path.write_text(TABLE, encoding="utf-16")
        message = "not UTF-8 text"
    with pytest.raises(HarnessError, match=message):
        load_registry_file(path)


def test_dev_zero_as_registry_is_refused_at_once():
    with pytest.raises(HarnessError, match="is a character device"):
        load_registry_file("/dev/zero")


# In-process: main() reads ./pyproject.toml on every call, as a fresh process does (a real process per
# verb costs a torch import; the audit verb's own real process: test_hostile_models).
BAD_DEFAULT_PYPROJECT_ARGV = {
    "audit": ["audit", "skip_modules"],
    "compare": ["compare", "skip_modules", "basic_blocks"],
    "migrate": ["migrate", "in.pt", "out.pt", "--to", "skip_modules"],
    "report": ["report", "--quick"],
}


@pytest.mark.parametrize("command", list(BAD_DEFAULT_PYPROJECT_ARGV))
def test_a_bad_default_pyproject_is_exit_2_with_one_line_for_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str
):
    (tmp_path / "pyproject.toml").write_text("tool = 5\n")
    monkeypatch.chdir(tmp_path)
    before = dict(SUBJECTS)
    assert main(BAD_DEFAULT_PYPROJECT_ARGV[command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "must be a table" in err
    assert dict(SUBJECTS) == before and sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]
