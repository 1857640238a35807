"""The ``evaluate`` output: its schema (one-line errors naming the JSON path), the Markdown, JSON
and HTML renderings (hostile names escaped, no scripts or remote assets) and the DET and
histogram charts (probit axes, monotone curves, EER points on the diagonal)."""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from html.parser import HTMLParser
from xml.etree import ElementTree

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.errors import HarnessError
from harness.report.det_chart import (
    DET_LOWER,
    DET_UPPER,
    DetAxes,
    det_svg,
    histogram_svg,
    markup_text,
    nice_ticks,
    probit_fraction,
)
from harness.report.evaluation_render import (
    EVALUATION_FORMATS,
    FLIPS_SHOWN,
    markdown_text,
    render_evaluation,
)
from harness.report.evaluation_schema import EVALUATION_SCHEMA, JSONSCHEMA_ITEMS, validate_evaluation
from tests.helpers import refusal

HOSTILE = "<script>x</script>|a`b"
NEWLINE = "two\nlines | `x`"
SVG = "{http://www.w3.org/2000/svg}"
SCHEMA = jsonschema.Draft202012Validator(EVALUATION_SCHEMA)  # once: jsonschema.validate re-checks the schema


def _system(eer: float, threshold: float, per_attack: dict) -> dict:
    # A DET curve as the official compute_det_curve returns it: pmiss rises while pfa falls.
    pmiss = [0.0, 0.0, 0.001, eer / 4, eer, (1 + eer) / 2, 1.0]
    pfa = [1.0, 0.95, (1 + eer) / 2, (1 + 3 * eer) / 4, eer, eer / 4, 0.0]
    return {"eer": eer, "eer_threshold": threshold, "min_tdcf": 0.25, "min_tdcf_threshold": threshold + 0.1,
            "n_bonafide": 6, "n_spoof": 14, "per_attack": per_attack, "score_means": "bonafide",
            "source": "score file s.txt", "not_in_protocol": 0, "det": {"pmiss": pmiss, "pfa": pfa},
            "histogram": {"edges": [-2.0, -1.0, 0.0, 1.0, 2.0], "bonafide": [0, 1, 2, 3],
                          "spoof": [5, 5, 3, 1]}}


def _flips(n: int) -> list[dict]:
    return [{"file": f"LA_{i:04d}" if i else "utt|`<b>`", "label": "bonafide" if i % 2 else "spoof",
             "a": 0.5, "b": -0.5} for i in range(n)]


def _document() -> dict:
    """A valid document: three systems (two with hostile names), two pairs, the gate failed."""
    systems = {"ref": _system(0.05, 0.1, {"A07": {"eer": 0.02, "n": 7}, "A10": {"eer": 0.1, "n": 7}}),
               HOSTILE: _system(0.12, 0.3, {"A10": {"eer": 0.15, "n": 7}, "A9<i>": {"eer": 0.01, "n": 7}}),
               NEWLINE: _system(0.2, -0.2, {})}
    return {
        "tool": "rawnet2-harness evaluate", "format_version": 1,
        "protocol": {"path": "/data/<proto>|.txt", "kind": "asvspoof2019", "n_utterances": 20,
                     "n_bonafide": 6, "n_spoof": 14},
        "orientation": "higher score = bona fide (the ASVspoof convention)",
        "tdcf": {"definition": "2021", "name": "t-DCF 2021", "asv_scores": "asv.txt",
                 "asv": {"eer": 0.02, "threshold": 1.5, "pfa": 0.02, "pmiss": 0.02, "pmiss_spoof": 0.6,
                         "pfa_spoof": 0.4}},
        "reference": "ref",
        "threshold": {"value": 0.1, "source": "the EER threshold of ref"},
        "systems": systems,
        "pairs": [{"a": "ref", "b": HOSTILE, "kind": "systems", "threshold": 0.1, "flips": FLIPS_SHOWN + 2,
                   "bonafide_to_spoof": 6, "spoof_to_bonafide": 6, "max_abs_score_diff": 1.0,
                   "files": _flips(FLIPS_SHOWN + 2)},
                  {"a": HOSTILE, "b": NEWLINE, "kind": "form", "threshold": 0.1, "flips": 0,
                   "bonafide_to_spoof": 0, "spoof_to_bonafide": 0, "max_abs_score_diff": 0.0, "files": []}],
        "gate": {"passed": False, "reasons": [f"{HOSTILE}: 12 decisions flip (--max-flips 0)"],
                 "conditions": {"max_eer_increase_pp": None, "max_flips": 0}},
    }


# --------------------------------------------------------------------------- the schema


def test_the_document_validates_and_jsonschema_agrees() -> None:
    doc = _document()
    validate_evaluation(doc)
    SCHEMA.validate(doc)
    validate_evaluation({**doc, "tdcf": None, "extra": {"any": "thing"}})  # no t-DCF; extra keys allowed


def _required_paths(schema: dict, value: object, path: tuple) -> list[tuple]:
    """Every required key the document holds, as a path of keys and indices."""
    found = []
    if isinstance(value, dict) and isinstance(schema, dict):
        for key in schema.get("required", ()):
            found.append((*path, key))
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                found += _required_paths(sub, item, (*path, key))
    elif isinstance(value, list) and value and "items" in schema:
        found += _required_paths(schema["items"], value[0], (*path, 0))
    return found


REQUIRED = _required_paths(EVALUATION_SCHEMA, _document(), ())


def _at(doc: dict, path: tuple) -> object:
    for part in path:
        doc = doc[part]
    return doc


def test_every_required_key_missing_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(REQUIRED) > 80  # the walk below found the document's whole tree
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import raises: the structural walk alone decides
    for path in REQUIRED:
        doc = _document()
        del _at(doc, path[:-1])[path[-1]]
        assert not SCHEMA.is_valid(doc), path  # jsonschema agrees it is required
        message = refusal(functools.partial(validate_evaluation, doc))
        assert "missing" in message and str(path[-1]) in message, (path, message)


WRONG = [
    (("systems", "ref", "eer"), "0.05", "$.systems.ref.eer: expected number"),
    (("systems", "ref", "eer"), 1.5, "expected <= 1"),
    (("systems", "ref", "eer"), math.nan, "finite"),
    (("systems", "ref", "n_spoof"), -1, "expected >= 0"),
    (("systems", "ref", "n_spoof"), True, "expected integer"),
    (("systems", "ref", "score_means"), "bona fide", "expected one of"),
    (("systems", HOSTILE, "det", "pfa", 2), None, '$.systems["<script>x</script>|a`b"].det.pfa[2]'),
    (("pairs", 0, "kind"), "variants", "$.pairs[0].kind"),
    (("pairs", 1, "files"), {}, "$.pairs[1].files: expected array"),
    (("gate", "passed"), "yes", "$.gate.passed: expected boolean"),
    (("tdcf", "definition"), 2021, "$.tdcf.definition"),
    (("format_version",), 2, "$.format_version"),
    (("systems",), {}, "at least 1"),
]


@pytest.mark.parametrize(("path", "value", "said"), WRONG, ids=lambda x: str(x)[:30])
def test_wrong_types_and_values_are_refused_by_path(path: tuple, value: object, said: str) -> None:
    doc = _document()
    _at(doc, path[:-1])[path[-1]] = value
    with pytest.raises(HarnessError, match=re.escape(said)) as caught:
        validate_evaluation(doc)
    assert "\n" not in str(caught.value)
    if not (isinstance(value, float) and math.isnan(value)):  # jsonschema reads NaN as a number
        with pytest.raises(jsonschema.ValidationError):
            SCHEMA.validate(doc)


def test_every_item_of_a_long_list_is_checked() -> None:
    doc = _document()
    n = JSONSCHEMA_ITEMS + 5  # past what jsonschema is shown: the walk reads every item
    doc["pairs"][0].update(files=_flips(n), flips=n, bonafide_to_spoof=n, spoof_to_bonafide=0)
    validate_evaluation(doc)
    doc["pairs"][0]["files"][-1]["a"] = "0.5"
    with pytest.raises(HarnessError, match=re.escape(f"$.pairs[0].files[{n - 1}].a: expected number")):
        validate_evaluation(doc)


def _dangling_reference(doc: dict) -> None:
    doc["reference"] = "gone"


def _dangling_pair(doc: dict) -> None:
    doc["pairs"][1]["b"] = "gone\nwith a newline"


def _uneven_det(doc: dict) -> None:
    doc["systems"]["ref"]["det"]["pfa"].pop()


def _histogram_counts(doc: dict) -> None:
    doc["systems"]["ref"]["histogram"]["spoof"].append(1)


def _descending_edges(doc: dict) -> None:
    doc["systems"]["ref"]["histogram"]["edges"].reverse()


def _flips_do_not_add_up(doc: dict) -> None:
    doc["pairs"][0]["bonafide_to_spoof"] += 1


def _files_missing(doc: dict) -> None:
    doc["pairs"][0]["files"].pop()


CROSS = [(_dangling_reference, "$.reference"), (_dangling_pair, "$.pairs[1].b"),
         (_uneven_det, "$.systems.ref.det"), (_histogram_counts, "$.systems.ref.histogram.spoof"),
         (_descending_edges, "$.systems.ref.histogram.edges"), (_flips_do_not_add_up, "$.pairs[0].flips"),
         (_files_missing, "$.pairs[0].files")]


@pytest.mark.parametrize(("break_it", "path"), CROSS, ids=[c[0].__name__ for c in CROSS])
def test_cross_references_are_checked(break_it, path: str) -> None:
    doc = _document()
    break_it(doc)
    SCHEMA.validate(doc)  # the schema alone cannot say these
    with pytest.raises(HarnessError, match=re.escape(path)) as caught:
        validate_evaluation(doc)
    assert "\n" not in str(caught.value)


def test_render_refuses_an_invalid_document_and_an_unknown_format() -> None:
    doc = _document()
    with pytest.raises(HarnessError, match="--format 'pdf'"):
        render_evaluation(doc, "pdf")
    del doc["systems"]["ref"]["histogram"]
    with pytest.raises(HarnessError, match="histogram"):
        render_evaluation(doc, "html")


# --------------------------------------------------------------------------- renderings


@pytest.mark.parametrize("fmt", EVALUATION_FORMATS)
def test_every_format_renders_and_is_stable(fmt: str) -> None:
    text = render_evaluation(_document(), fmt)
    assert text and text == render_evaluation(_document(), fmt)
    passed = _document()
    passed["gate"].update(passed=True, reasons=[])
    assert render_evaluation(passed, fmt) != text


def test_json_is_the_document() -> None:
    assert json.loads(render_evaluation(_document(), "json")) == _document()


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_gate_first_then_tables_with_every_name_escaped() -> None:
    lines = render_evaluation(_document(), "markdown").splitlines()
    assert lines[0].startswith("**Gate: FAILED") and "flips ≤ 0" in lines[0]
    assert lines[1].startswith("- ") and "\\<script\\>" in lines[1]
    assert any(line.startswith("Orientation: higher score = bona fide") for line in lines)
    passed = _document()
    passed["gate"].update(passed=True, reasons=[])
    assert render_evaluation(passed, "markdown").startswith("**Gate: PASSED")
    # Every row of a table has its header's cell count: no name's pipe or newline split a cell or row.
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            cells = _unescaped_pipes(lines[i - 1])
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                assert _unescaped_pipes(row) == cells, row
    text = "\n".join(lines)
    assert "<script>" not in text and re.search(r"(?<!\\)`", text) is None
    assert markdown_text(HOSTILE) in text and markdown_text(NEWLINE) == "two lines \\| \\`x\\`"


def test_markdown_lists_the_first_flips_then_how_many_more() -> None:
    text = render_evaluation(_document(), "markdown")
    flipped = text.split("### Flipped: ref vs")[1]
    assert markdown_text("LA_0009") in flipped and markdown_text("LA_0010") not in flipped
    assert "... and 2 more" in flipped
    assert "utt\\|\\`\\<b\\>\\`" in flipped
    assert text.count("### Flipped:") == 1  # the pair with no flips lists none


class _TagBalance(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "area", "base", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def test_html_is_self_contained_balanced_and_escaped() -> None:
    doc = _document()
    page = render_evaluation(doc, "html")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page and "<img" not in page.lower()
    assert set(re.findall(r"https?://[^\s\"'<>]*", page)) == {"http://www.w3.org/2000/svg"}
    assert page.count("<svg") == 1 + len(doc["systems"])  # the DET chart and one histogram per system
    assert markup_text(HOSTILE) in page and "utt|`&lt;b&gt;`" in page
    balance = _TagBalance()
    balance.feed(page)
    balance.close()
    assert balance.stack == [] and "table" in balance.tags
    for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S):
        assert ElementTree.fromstring(svg).tag == f"{SVG}svg"
    assert "... and 2 more" in page and "Gate: FAILED" in page


# --------------------------------------------------------------------------- the charts


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    tree = ElementTree.fromstring(svg)
    return [[tuple(map(float, point.split(","))) for point in line.get("points").split()]
            for line in tree.iter(f"{SVG}polyline")]


def test_det_curves_are_monotone_and_each_eer_point_sits_on_the_diagonal() -> None:
    doc = _document()
    svg = det_svg(doc["systems"])
    tree = ElementTree.fromstring(svg)
    curves = _polylines(svg)
    assert len(curves) == len(doc["systems"])
    for points in curves:
        # In the order given (pmiss rising, pfa falling): up the chart (y falls) and to the left.
        assert len(points) >= 2
        assert all(b[0] <= a[0] and b[1] <= a[1] for a, b in zip(points, points[1:], strict=False))
    colours = {line.get("stroke") for line in tree.iter(f"{SVG}polyline")}
    dashes = {line.get("stroke-dasharray") for line in tree.iter(f"{SVG}polyline")}
    assert len(colours) == len(dashes) == len(doc["systems"])
    rect = next(tree.iter(f"{SVG}rect"))
    left, top, side = (float(rect.get(k)) for k in ("x", "y", "width"))
    circles = [c for c in tree.iter(f"{SVG}circle") if c.get("r") == "4.5"]  # the EER points (not legend)
    assert len(circles) == len(doc["systems"])
    for circle in circles:
        x, y = float(circle.get("cx")), float(circle.get("cy"))
        assert x - left == pytest.approx(top + side - y, abs=0.15)  # on y = x
    texts = "".join(tree.itertext())
    assert "EER 5.00 %" in texts and "EER 12.00 %" in texts and "DET curves" in texts


@given(st.floats(0.0, 1.0))
def test_any_equal_error_point_maps_onto_the_diagonal(eer: float) -> None:
    axes = DetAxes(left=64, top=36, side=500)
    x, y = axes.point(eer, eer)
    assert x - axes.left == pytest.approx(axes.top + axes.side - y, abs=0.11)


def test_probit_mapping_centres_one_half_and_clips_the_ends() -> None:
    assert probit_fraction(0.5, 0.01, 0.99) == pytest.approx(0.5)
    assert probit_fraction(0.0, DET_LOWER, DET_UPPER) == 0.0
    assert probit_fraction(1.0, DET_LOWER, DET_UPPER) == 1.0
    assert probit_fraction(DET_LOWER / 10, DET_LOWER, DET_UPPER) == 0.0
    # Probit, not linear or log: 1 % and 10 % sit where the normal deviates put them.
    assert probit_fraction(0.1, 0.01, 0.99) - probit_fraction(0.01, 0.01, 0.99) == pytest.approx(
        (2.326348 - 1.281552) / (2 * 2.326348), abs=1e-6)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_probit_mapping_is_monotone_and_bounded(p: float, q: float) -> None:
    a, b = probit_fraction(p, DET_LOWER, DET_UPPER), probit_fraction(q, DET_LOWER, DET_UPPER)
    assert 0.0 <= a <= 1.0
    assert a <= b if p <= q else a >= b


def test_a_chance_level_system_widens_the_axes_so_its_eer_point_shows() -> None:
    chance = {"worse": {"eer": 0.7, "det": {"pmiss": [0.0, 0.7, 1.0], "pfa": [1.0, 0.7, 0.0]}}}
    tree = ElementTree.fromstring(det_svg(chance))
    labels = {t.text for t in tree.iter(f"{SVG}text")}
    assert {"80", "90"} <= labels
    circle = next(c for c in tree.iter(f"{SVG}circle") if c.get("r") == "4.5")
    rect = next(tree.iter(f"{SVG}rect"))
    assert float(circle.get("cy")) > float(rect.get("y")) + 1  # inside the square, not on its edge


def test_histogram_chart_shows_both_classes_on_shared_bins() -> None:
    histogram = _document()["systems"]["ref"]["histogram"]
    tree = ElementTree.fromstring(histogram_svg(HOSTILE, histogram, threshold=0.1))
    bars = [r for r in tree.iter(f"{SVG}rect") if r.get("fill-opacity") and r.get("width") != "12"]
    fills = {r.get("fill") for r in bars}
    assert len(fills) == 2 and len(bars) == 3 + 4  # one bar per non-empty bin of each class
    texts = "".join(tree.itertext())
    assert HOSTILE in texts and "higher = bona fide" in texts and "n 6" in texts and "n 14" in texts
    assert any(line.get("stroke-dasharray") for line in tree.iter(f"{SVG}line"))  # the threshold
    # One score for everything: a degenerate bin still draws.
    ElementTree.fromstring(histogram_svg("flat", {"edges": [1.0, 1.0], "bonafide": [3], "spoof": [0]}))


@given(st.floats(-1e4, 1e4), st.floats(1e-3, 1e4))  # scores: spans far above float spacing
def test_nice_ticks_stay_in_range_and_evenly_spaced(low: float, span: float) -> None:
    high = low + span
    ticks = nice_ticks(low, high)
    assert 2 <= len(ticks) <= 12
    assert all(low - 1e-9 * span <= t <= high + 1e-9 * span for t in ticks)
    steps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(steps) == pytest.approx(min(steps), rel=1e-6)


def test_markup_text_is_safe_in_xml() -> None:
    nasty = "a\x00b<c>&\"'\x1f"
    ElementTree.fromstring(f"<t a=\"{markup_text(nasty)}\">{markup_text(nasty)}</t>")


def test_the_builders_document_validates_and_renders(tmp_path) -> None:
    """harness.core.evaluation.evaluate's document is this schema's (the interface both sides keep)."""
    # Imported here: the builder is another module's work; without it only this test fails.
    from harness.core.evaluation import Gate, SystemScores, evaluate
    from harness.core.protocols import read_protocol

    rows = [f"SPK LA_{i:02d} - - bonafide" if i % 3 == 0 else f"SPK LA_{i:02d} - A{7 + i % 2:02d} spoof"
            for i in range(30)]
    (tmp_path / "protocol.txt").write_text("\n".join(rows) + "\n")
    protocol = read_protocol(tmp_path / "protocol.txt")
    ids = protocol.utterances
    systems = [SystemScores("ref", {u: float(i % 7) for i, u in enumerate(ids)}, "bonafide", "scores a"),
               SystemScores(HOSTILE, {u: -float(i % 5) for i, u in enumerate(ids)}, "spoof", "scores b")]
    doc = evaluate(protocol, systems, gate=Gate(max_flips=0))
    validate_evaluation(doc)
    for fmt in EVALUATION_FORMATS:
        assert render_evaluation(doc, fmt)
