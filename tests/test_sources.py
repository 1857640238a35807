"""The variants' code is the fix guide's code: token for token, comments and layout aside."""

from __future__ import annotations

import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

from harness.rawnet2.registry import VARIANT_INFO

GUIDE = Path(__file__).parent / "data" / "rawnet2_fix_guide.md"
SHARED_GUIDE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "rawnet2_fix_guide.md"
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
           tokenize.ENDMARKER}


def code_tokens(source: str) -> list[str]:
    source = inspect.cleandoc("\n" + source) if source.startswith((" ", "\t")) else source
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.string for t in tokens if t.type not in _LAYOUT]


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def guide_forward(block: str) -> str:
    return block[block.index("    def forward"):]


def test_vendored_guide_matches_shared_copy():
    if not SHARED_GUIDE.exists():
        pytest.skip(f"no shared guide at {SHARED_GUIDE} (only present beside the team checkout)")
    assert GUIDE.read_text() == SHARED_GUIDE.read_text()


def test_guide_has_the_three_code_blocks():
    blocks = guide_blocks()
    assert len(blocks) == 3
    assert blocks[0].lstrip().startswith("def forward")


def test_legacy_forward_is_the_guides_current_implementation():
    expected = code_tokens(inspect.cleandoc("\n" + guide_blocks()[0]))
    actual = code_tokens(inspect.getsource(VARIANT_INFO["legacy"].factory.forward))
    assert actual == expected


@pytest.mark.parametrize("name, block", [("tuple_blocks", 1), ("skip_modules", 2)])
def test_fixed_class_is_the_guides_code_verbatim(name: str, block: int):
    expected = code_tokens(guide_blocks()[block])
    actual = code_tokens(inspect.getsource(VARIANT_INFO[name].factory))
    assert actual == expected
