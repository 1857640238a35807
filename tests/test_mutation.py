"""Mutation testing tooling (harness.core.mutation, harness.rawnet2.mutation): the operators make the
mutants they claim, names follow mutmut's, the report follows its schema, declared equivalents are
equivalent (outputs and gradients, train and eval), and a tiny project goes through the whole run.

Needs the ``mutation`` extra (mutmut); skipped with a reason without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mutmut", reason="mutation testing needs the extra: pip install -e '.[mutation]'")
import jsonschema  # noqa: E402
import libcst as cst  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.__main__ import main  # noqa: E402
from harness.core.errors import HarnessError  # noqa: E402
from harness.core.mutation import (  # noqa: E402
    BUDGET_SPENT,
    MARKER,
    MODULE_LEVEL,
    MUTATION_REPORT_SCHEMA,
    Equivalence,
    Mutant,
    MutationRun,
    ReportWriter,
    attribute,
    build_report,
    check_clean,
    enumerate_mutants,
    file_section,
    prepare_workspace,
    render_summary,
    run_mutation,
    sample_evenly,
    stage_outside_file,
    summarize,
)
from harness.core.mutation import plugin as mutation_plugin  # noqa: E402
from harness.core.mutation.config import Clock  # noqa: E402
from harness.core.mutation.operators import OPERATORS, mutations, operator_names  # noqa: E402
from harness.rawnet2.mutation import (  # noqa: E402
    CONTRACTS,
    EQUIVALENCES,
    TEXT_PINNING,
    load_equivalences,
    plan_run,
    selection_for,
    variants_of,
)
from harness.rawnet2.registry import load_registry_file, unregister  # noqa: E402
from tests.helpers import REPO  # noqa: E402

# --- operators --------------------------------------------------------------------------------


def mutated_sources(code: str, operator: str) -> list[str]:
    """Every whole-module source ``operator`` makes of ``code``."""
    module = cst.parse_module(textwrap.dedent(code))
    found: list[str] = []

    class Visit(cst.CSTVisitor):
        def on_visit(self, node: cst.CSTNode) -> bool:
            for name, replacement in mutations(node):
                if name == operator:
                    found.append(module.deep_replace(node, replacement).code)
            return True

    module.visit(Visit())
    for source in found:
        compile(source, "<mutant>", "exec")  # every mutant is valid Python
    return found


def changed(code: str, operator: str) -> list[str]:
    """The line each mutant changes, as it reads after the change (stripped)."""
    original = textwrap.dedent(code).splitlines()
    out = []
    for source in mutated_sources(code, operator):
        new = [line for line in source.splitlines() if line not in original]
        out.append(" | ".join(line.strip() for line in new))
    return out


def test_every_operator_is_named_once_in_the_table():
    assert operator_names() == ["drop_addend", "swap_nested_calls", "swap_adjacent_layers",
                                "activation_slope", "geometry_minus_one", "unregister_module",
                                "batchnorm_batch_statistics", "detach"]
    assert all(isinstance(node_type, type) for node_type, _ in OPERATORS)


def test_drop_addend_drops_either_side_of_a_residual_add():
    assert changed("x = x + identity\n", "drop_addend") == ["x = x", "x = identity"]
    assert changed("y = 2 * (a + b)\n", "drop_addend") == ["y = 2 * (a)", "y = 2 * (b)"]
    assert changed("x = x - identity\n", "drop_addend") == []


def test_swap_nested_calls_swaps_batchnorm_and_activation():
    assert changed("out = self.act(self.bn1(self.conv1(x)))\n", "swap_nested_calls") == [
        "out = self.bn1(self.act(self.conv1(x)))", "out = self.act(self.conv1(self.bn1(x)))"]
    # building a list of layers or a constructor call is not a computation to reorder
    assert changed("layers.append(nn.BatchNorm1d(c))\n", "swap_nested_calls") == []
    assert changed("m = nn.Sequential(nn.ReLU())\n", "swap_nested_calls") == []


def test_swap_adjacent_layers_in_a_layer_list_and_a_sequential():
    code = """\
    def f():
        layers.append(conv)
        layers.append(bn)
        layers.append(act)
        return layers
    """
    swapped = mutated_sources(code, "swap_adjacent_layers")
    assert [[line.strip() for line in s.splitlines()[1:4]] for s in swapped] == [
        ["layers.append(bn)", "layers.append(conv)", "layers.append(act)"],
        ["layers.append(conv)", "layers.append(act)", "layers.append(bn)"]]
    assert changed("m = nn.Sequential(conv, bn, act)\n", "swap_adjacent_layers") == [
        "m = nn.Sequential(bn, conv, act)", "m = nn.Sequential(conv, act, bn)"]


def test_activation_slope_makes_a_relu_and_an_identity():
    assert changed("a = nn.LeakyReLU(0.3)\n", "activation_slope") == ["a = nn.LeakyReLU(0.0)",
                                                                      "a = nn.LeakyReLU(1.0)"]
    assert changed("y = F.leaky_relu(h, 0.3)\n", "activation_slope") == ["y = F.leaky_relu(h, 0.0)",
                                                                         "y = F.leaky_relu(h, 1.0)"]
    assert changed("a = nn.LeakyReLU(negative_slope=SLOPE)\n", "activation_slope") == [
        "a = nn.LeakyReLU(negative_slope=0.0)", "a = nn.LeakyReLU(negative_slope=1.0)"]
    assert changed("a = nn.ReLU()\n", "activation_slope") == []
    assert changed("a = nn.LeakyReLU(0.0)\n", "activation_slope") == ["a = nn.LeakyReLU(1.0)"]


def test_geometry_minus_one_stays_valid():
    assert changed("c = nn.Conv1d(1, 2, kernel_size=3, stride=2, padding=1)\n", "geometry_minus_one") == [
        "c = nn.Conv1d(1, 2, kernel_size=2, stride=2, padding=1)",
        "c = nn.Conv1d(1, 2, kernel_size=3, stride=1, padding=1)",
        "c = nn.Conv1d(1, 2, kernel_size=3, stride=2, padding=0)"]
    assert changed("c = nn.Conv1d(1, 2, kernel_size=1, stride=1, padding=0)\n", "geometry_minus_one") == []


def test_unregister_module_hides_a_module_from_nn_module():
    code = """\
    import torch.nn as nn
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.k = 3
        def forward(self, x):
            return self.lin(x)
    """
    (source,) = mutated_sources(code, "unregister_module")
    assert 'object.__setattr__(self, "lin", nn.Linear(2, 2))' in source
    namespace: dict = {}
    exec(compile(source, "<mutant>", "exec"), namespace)
    model = namespace["M"]()
    assert model(torch.zeros(1, 2)).shape == (1, 2)  # still runs ...
    assert list(model.parameters()) == [] and list(model.state_dict()) == []  # ... unregistered


def test_batchnorm_batch_statistics_adds_track_running_stats_false():
    assert changed("b = nn.BatchNorm1d(32)\n", "batchnorm_batch_statistics") == [
        "b = nn.BatchNorm1d(32, track_running_stats=False)"]
    assert changed("b = nn.BatchNorm1d(32, track_running_stats=True)\n", "batchnorm_batch_statistics") == []
    assert changed("b = nn.LayerNorm(32)\n", "batchnorm_batch_statistics") == []


def test_detach_cuts_the_gradient_of_forward_values_only():
    assert changed("x = self.conv(x)\n", "detach") == ["x = self.conv(x).detach()"]
    assert changed("identity = x\n", "detach") == ["identity = x.detach()"]
    assert changed("def f():\n    return a + b\n", "detach") == ["return (a + b).detach()"]
    assert changed("layers = []\n", "detach") == []
    assert changed("def f():\n    return nn.Sequential(*layers)\n", "detach") == []


# --- enumeration, names, equivalences ---------------------------------------------------------

TINY_MODEL = """\
import torch.nn as nn

SLOPE = 0.5


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x):
        return self.act(self.lin(x)) + x
"""


def tiny_project(root: Path, tests: str) -> None:
    (root / "tinypkg").mkdir()
    (root / "tinypkg" / "__init__.py").write_text("")
    (root / "tinypkg" / "model.py").write_text(TINY_MODEL)
    (root / "tests").mkdir()
    (root / "tests" / "test_tiny.py").write_text(textwrap.dedent(tests))


def test_mutants_are_named_and_numbered_as_mutmut_names_them(tmp_path: Path):
    tiny_project(tmp_path, "")
    mutants = enumerate_mutants("tinypkg/model.py", root=tmp_path)
    ids = [m.id for m in mutants]
    assert len(ids) == len(set(ids))
    assert {"tinypkg.model.xǁTinyǁ__init____mutmut_1", "tinypkg.model.xǁTinyǁforward__mutmut_1"} <= set(ids)
    module_level = [m for m in mutants if m.function == MODULE_LEVEL]
    assert [m.id for m in module_level] == [f"tinypkg.model.<module>__mutmut_{n}" for n in (1, 2)]
    assert all(m.engine == "harness" for m in module_level)
    assert [m.changed_text() for m in module_level] == [(["SLOPE = 0.5"], ["SLOPE = None"]),
                                                        (["SLOPE = 0.5"], ["SLOPE = 1.5"])]
    for mutant in mutants:
        compile(mutant.source, mutant.id, "exec")
        assert mutant.diff.startswith("--- a/tinypkg/model.py\n+++ b/tinypkg/model.py\n")
        assert mutant.lines and mutant.source != TINY_MODEL
    assert {m.operator for m in mutants} >= {"drop_addend", "swap_nested_calls", "activation_slope",
                                             "unregister_module", "number", "arg_removal"}
    # `within` keeps the numbering of the whole file
    (add_x,) = [m for m in enumerate_mutants("tinypkg/model.py", root=tmp_path, within=[(13, 13)])
                if m.changed_text()[1] == ["return self.act(self.lin(x))"]]
    assert add_x.id in ids


def test_an_equivalence_matches_its_lines_and_refuses_to_drift():
    mutant = Mutant(id="m.x_f__mutmut_1", path="m.py", function="f", operator="number", lines=(3,),
                    diff="--- a/m.py\n+++ b/m.py\n@@ -3 +3 @@\n-y = 1\n+y = 2\n", source="")
    assert Equivalence("m.py", 3, "y = 1", "why").matches(mutant)
    assert Equivalence("m.py", 2, "x", "why", last=4).matches(mutant)
    assert Equivalence("m.py", 3, "y = 1", "why", after="y = 2").matches(mutant)
    assert not Equivalence("m.py", 3, "y = 1", "why", after="y = 3").matches(mutant)
    assert not Equivalence("other.py", 3, "y = 1", "why").matches(mutant)
    Equivalence("m.py", 3, "y = 1", "why").check("a\nb\ny = 1\n")
    with pytest.raises(HarnessError, match=r"m.py:3: an equivalence is declared for 'y = 1' but the line"):
        Equivalence("m.py", 3, "y = 1", "why").check("a\nb\ny = 3\n")


def test_a_team_declares_its_equivalents_in_a_json_file(tmp_path: Path):
    path = tmp_path / "eq.json"
    path.write_text(json.dumps([{"path": "m.py", "first": 3, "anchor": "y = 1", "reason": "unused",
                                 "after": "y = 2"}]))
    assert load_equivalences(path) == [Equivalence("m.py", 3, "y = 1", "unused", after="y = 2")]
    path.write_text(json.dumps([{"path": "m.py", "line": 3}]))
    with pytest.raises(HarnessError, match="eq.json: not a list of equivalences"):
        load_equivalences(path)


def test_tests_are_selected_from_the_registry_and_text_pinning_is_left_out():
    assert variants_of("fixed/skip_modules.py", root=REPO) == ["skip_modules"]
    assert variants_of("fixed/basic_blocks.py", root=REPO) == ["basic_blocks"]
    selection = selection_for("fixed/skip_modules.py", root=REPO)
    assert selection[-2:] == ["-k", "skip_modules"]
    assert all(f"--ignore={p}" in selection for p in TEXT_PINNING)
    assert selection_for("fixed/skip_modules.py", "golden", root=REPO)[-2:] == ["-k", "golden"]
    with pytest.raises(HarnessError, match="is the source of no registered variant; say which tests"):
        selection_for("harness/core/errors.py", root=REPO)


def load_class(source: str, name: str, tmp_path: Path, module: str):
    path = tmp_path / f"{module}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module, path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, name)


def outputs_and_gradients(model: torch.nn.Module, x: torch.Tensor, train: bool) -> list[torch.Tensor]:
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())]


def declared_mutants(path: str) -> list[Mutant]:
    declarations = [e for e in EQUIVALENCES if e.path == path]
    mutants = enumerate_mutants(path, root=REPO, within=[d.span for d in declarations])
    return [m for m in mutants if any(d.matches(m) for d in declarations)]


@pytest.mark.parametrize("path", sorted({e.path for e in EQUIVALENCES}))
def test_every_equivalence_declaration_holds_on_its_line_and_matches_mutants(path: str):
    declarations = [e for e in EQUIVALENCES if e.path == path]
    source = (REPO / path).read_text()
    matched = declared_mutants(path)
    for declaration in declarations:
        declaration.check(source)
        assert any(declaration.matches(m) for m in matched), f"{declaration} matches no mutant"


@pytest.mark.slow  # ~6 s on a quiet machine (44 mutants built and run twice); .ci/mutate runs it
@pytest.mark.parametrize("path", sorted({e.path for e in EQUIVALENCES}))
def test_every_declared_equivalent_mutant_computes_the_same_outputs_and_gradients(path: str, tmp_path: Path,
                                                                                    one_thread):
    """Each mutant a declaration matches, built from its source with the original's weights, gives
    bit-identical outputs, input and parameter gradients in train and eval mode (and the same
    state_dict keys: nothing was registered differently)."""
    original = load_class((REPO / path).read_text(), "RawNet2", tmp_path, "original")
    x = torch.randn(2, 1, 24, generator=torch.Generator().manual_seed(0))
    for i, mutant in enumerate(declared_mutants(path)):
        mutated = load_class(mutant.source, "RawNet2", tmp_path, f"mutant_{i}")
        torch.manual_seed(0)
        a, b = original(), mutated()
        b.load_state_dict(a.state_dict(), strict=True)
        for train in (True, False):  # train first: its running-statistics update is compared by eval
            for got, want in zip(outputs_and_gradients(b, x, train), outputs_and_gradients(a, x, train),
                                 strict=True):
                mode = "train" if train else "eval"
                assert torch.equal(got, want), f"{mutant.id} is not equivalent ({mode} mode)"


# --- the report -------------------------------------------------------------------------------


def fake_section(tmp_path: Path) -> dict:
    tiny_project(tmp_path, "")
    mutants = enumerate_mutants("tinypkg/model.py", root=tmp_path)[:4]
    run = MutationRun(path="tinypkg/model.py", selection=["tests"], root=tmp_path,
                      equivalences=[Equivalence("tinypkg/model.py", mutants[3].lines[0],
                                                TINY_MODEL.splitlines()[mutants[3].lines[0] - 1].strip(),
                                                "a reason")],
                      excluded={"tests/test_text.py": "pins the text"})
    results = dict(zip([m.id for m in mutants], [("killed", 1.0), ("survived", 2.0), ("timeout", 9.0),
                                                 ("survived", 2.0)], strict=True))
    killers = {mutants[0].id: {"test": "tests/test_tiny.py::test_a", "message": "AssertionError"}}
    return file_section(run, mutants, results, killers, {mutants[0].id: {"duration_s": 0.5, "tests_run": 1}},
                        tests=["tests/test_tiny.py::test_a"], tool_version="3.8.1", duration_s=12.0)


def test_the_report_validates_and_says_everything_about_each_mutant(tmp_path: Path):
    section = fake_section(tmp_path)
    report = build_report([section])
    jsonschema.validate(report, MUTATION_REPORT_SCHEMA)
    json.dumps(report)  # plain data
    statuses = [m["status"] for m in section["mutants"]]
    assert statuses == ["killed", "survived", "timeout", "equivalent"]
    assert section["mutants"][0]["killed_by"] == {"test": "tests/test_tiny.py::test_a",
                                                  "message": "AssertionError"}
    assert section["mutants"][3]["reason"] == "a reason"
    assert [s["id"] for s in section["survivors"]] == [section["mutants"][1]["id"]]
    assert section["survivors"][0]["diff"].startswith("--- a/tinypkg/model.py")
    assert section["summary"] == {**summarize({"killed": 1, "survived": 1, "timeout": 1, "equivalent": 1})}
    assert section["summary"]["score"] == pytest.approx(100 * 2 / 3, abs=0.01)
    text = render_summary(report)
    assert "score 66.7 %: 2 of 3 judged mutants detected" in text
    assert f"SURVIVED {section['mutants'][1]['id']}" in text
    # an equivalent without its reason is not a valid report
    bad = json.loads(json.dumps(report))
    del bad["files"][0]["mutants"][3]["reason"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, MUTATION_REPORT_SCHEMA)


def test_a_declared_equivalent_that_a_test_kills_is_reported_as_a_refuted_declaration(tmp_path: Path):
    tiny_project(tmp_path, "")
    mutants = enumerate_mutants("tinypkg/model.py", root=tmp_path)[:4]
    run = MutationRun(path="tinypkg/model.py", selection=["tests"], root=tmp_path,
                      equivalences=[Equivalence("tinypkg/model.py", 1, "import torch.nn as nn", "wrong",
                                                last=99)])
    section = file_section(run, mutants, {m.id: ("killed", 1.0) for m in mutants}, {}, tests=[],
                           tool_version="3.8.1", duration_s=1.0)
    assert section["refuted_equivalences"] == [m.id for m in mutants]
    assert all(m["status"] == "killed" and m["refutes_equivalence"] == "wrong" for m in section["mutants"])
    assert "declared equivalent but killed" in render_summary(build_report([section]))


def test_the_plugin_orders_tests_fastest_first_and_records_the_first_killer(tmp_path: Path, monkeypatch):
    durations = tmp_path / "stats.json"
    durations.write_text(json.dumps({"duration_by_test": {"t::slow": 5.0, "t::fast": 0.1}}))
    records = tmp_path / "runs.jsonl"
    monkeypatch.setenv("HARNESS_MUTATION_DURATIONS", str(durations))
    monkeypatch.setenv("HARNESS_MUTATION_RECORDS", str(records))
    monkeypatch.setenv("MUTANT_UNDER_TEST", "pkg.mod.x_f__mutmut_3")
    items = [SimpleNamespace(nodeid=n) for n in ("t::unknown", "t::slow", "t::fast")]
    mutation_plugin.pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items] == ["t::fast", "t::slow", "t::unknown"]
    crash = SimpleNamespace(reprcrash=SimpleNamespace(message="AssertionError: assert 1 == 2\nmore"))
    mutation_plugin.pytest_sessionstart()
    for nodeid in ("t::fast", "t::slow"):
        mutation_plugin.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, when="call", failed=True,
                                                                 passed=False, longrepr=crash))
    mutation_plugin.pytest_sessionfinish()
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert lines[0] == {"mutant": "pkg.mod.x_f__mutmut_3", "event": "killed", "test": "t::fast",
                        "message": "AssertionError: assert 1 == 2"}
    assert lines[1]["event"] == "finished" and lines[1]["tests_run"] == 2 and len(lines) == 2
    # outside a mutant's run (mutmut's stats and clean runs) nothing is recorded
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    mutation_plugin.pytest_sessionstart()
    mutation_plugin.pytest_sessionfinish()
    assert len(records.read_text().splitlines()) == 2


def test_a_workspace_the_harness_did_not_make_is_never_deleted(tmp_path: Path):
    (tmp_path / "mutants").mkdir()
    (tmp_path / "mutants" / "precious.txt").write_text("keep")
    with pytest.raises(HarnessError, match="exists and was not made by 'harness mutate'"):
        prepare_workspace(tmp_path)
    assert (tmp_path / "mutants" / "precious.txt").read_text() == "keep"
    (tmp_path / "mutants" / MARKER).write_text("")
    workspace = prepare_workspace(tmp_path)  # ours: remade empty but for the marker and the plugin
    assert sorted(p.name for p in workspace.iterdir()) == [MARKER, "_harness_mutation_plugin.py"]


def test_cli_usage_errors_are_one_line_and_exit_2(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["mutate", "harness/core/errors.py", "--output", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.startswith("error: harness/core/errors.py is the source of no registered")
    assert main(["mutate", "README.md", "--output", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err == "error: README.md: not a Python source file\n"
    assert not (tmp_path / "r.json").exists()


# --- end to end -------------------------------------------------------------------------------

TINY_TESTS = """\
import torch
from tinypkg.model import Tiny


def test_output_is_the_formula():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(3, 2)
    expected = torch.nn.functional.leaky_relu(x @ model.lin.weight.T + model.lin.bias, 0.5) + x
    assert torch.equal(model(x), expected)
"""


@pytest.mark.slow
def test_a_tiny_project_end_to_end(tmp_path: Path):
    """mutmut runs the function mutants, the harness the module-level ones; killers, survivors and a
    declared equivalent come back in a valid report, and the source tree is untouched."""
    tiny_project(tmp_path, TINY_TESTS)
    mutants = enumerate_mutants("tinypkg/model.py", root=tmp_path)
    unregister = next(m for m in mutants if m.operator == "unregister_module" and '"act"' in m.diff)
    run = MutationRun(path="tinypkg/model.py", selection=["tests"], root=tmp_path, workers=2,
                      equivalences=[Equivalence("tinypkg/model.py", unregister.lines[0],
                                                "self.act = nn.LeakyReLU(SLOPE)", "LeakyReLU holds no tensor",
                                                after=unregister.changed_text()[1][0])],
                      progress=lambda line: None)
    section = run_mutation(run)
    report = build_report([section])
    jsonschema.validate(report, MUTATION_REPORT_SCHEMA)
    by_id = {m["id"]: m for m in section["mutants"]}
    assert by_id[unregister.id]["status"] == "equivalent"
    slope = by_id["tinypkg.model.<module>__mutmut_2"]  # SLOPE = 1.5, run by the harness in its copy
    assert slope["status"] == "killed"
    assert slope["killed_by"]["test"] == "tests/test_tiny.py::test_output_is_the_formula"
    drop = next(m for m in section["mutants"] if m["operator"] == "drop_addend")
    assert drop["status"] == "killed" and drop["killed_by"]["test"].endswith("test_output_is_the_formula")
    assert section["summary"]["survived"] == len(section["survivors"]) > 0  # unregistering lin, detaching
    assert (tmp_path / "tinypkg" / "model.py").read_text() == TINY_MODEL
    assert sys.modules.get("tinypkg") is None


# --- a team's model: staging, sampling, the clean run, attribution, partial reports -------------

TEAM_MODEL = """\
import torch.nn as nn

SLOPE = 0.3


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x):
        return self.act(self.conv(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(2), Block(2)])
        self.head = nn.Linear(2, 1)

    def _residual(self, block, x):
        identity = x
        out = block(x) + identity
        return out

    def forward(self, x):
        for block in self.blocks:
            x = self._residual(block, x)
        return self.head(x.mean(-1))
"""
TEAM_REGISTRY = """\
[tool.rawnet2-harness.variants.team_net]
factory = "net:Net"
output = "any"
input_shape = [2, 16]
"""


@pytest.fixture(scope="module")
def team_mutants(tmp_path_factory) -> list[Mutant]:
    root = tmp_path_factory.mktemp("team")
    (root / "net.py").write_text(TEAM_MODEL)
    return enumerate_mutants("net.py", root=root)


def shortcut_deletion(mutants: list[Mutant]) -> Mutant:
    return next(m for m in mutants if m.function == "Net._residual"
                and m.changed_text() == (["out = block(x) + identity"], ["out = block(x)"]))


@settings(max_examples=25)
@given(limit=st.integers(1, 200))
def test_a_sample_is_spread_evenly_across_functions_and_is_deterministic(team_mutants, limit: int):
    chosen, left = sample_evenly(team_mutants, limit)
    assert len(chosen) == min(limit, len(team_mutants))
    assert [m.id for m in chosen + left] == [m.id for m in team_mutants if m in chosen] + [
        m.id for m in team_mutants if m in left]  # a partition, each part in file order
    assert sample_evenly(team_mutants, limit) == (chosen, left)  # same file, same sample
    total = Counter(m.function for m in team_mutants)
    taken = Counter(m.function for m in chosen)
    for function, n in total.items():
        if taken[function] < n:  # a function with mutants left never has two fewer than another
            assert all(taken[function] >= other - 1 for other in taken.values()), (function, taken)
    model_operators = set(operator_names())
    for function in total:  # a function's first turns go to the model operators it has, one each
        own = {m.operator for m in team_mutants if m.function == function} & model_operators
        if taken[function] >= len(own):
            assert own <= {m.operator for m in chosen if m.function == function}


def test_a_sample_of_one_per_function_takes_the_shortcut_deletion(team_mutants: list[Mutant]):
    functions = {m.function for m in team_mutants}
    chosen, _ = sample_evenly(team_mutants, len(functions))
    assert [m for m in chosen if m.function == "Net._residual"] == [shortcut_deletion(team_mutants)]
    assert {m.function for m in chosen} == functions
    assert sample_evenly(team_mutants, None) == (team_mutants, [])


@pytest.mark.parametrize(("field", "value"), [
    ("timeout_factor", float("nan")), ("timeout_factor", float("inf")), ("timeout_factor", 0.0),
    ("timeout_factor", -1.0), ("timeout_constant_s", float("nan")), ("workers", 0), ("workers", 1.5),
    ("max_mutants", 0), ("max_mutants", True), ("time_budget_s", float("nan")), ("time_budget_s", 0)])
def test_the_library_refuses_a_run_with_a_number_out_of_range(field: str, value: object):
    with pytest.raises(HarnessError, match=r"must be (a finite number|an integer) >=? ?0?.*got"):
        MutationRun(path="m.py", selection=["tests"], **{field: value})


def team_repository(tmp_path: Path) -> tuple[Path, Path]:
    """A project (the tiny one) and, outside it, a team's directory: model, a helper module, registry,
    weights and a tests folder of its own."""
    project = tmp_path / "project"
    project.mkdir()
    tiny_project(project, "")
    (project / "pyproject.toml").write_text("")
    team = tmp_path / "teamrepo"
    team.mkdir()
    (team / "net.py").write_text(TEAM_MODEL)
    (team / "layers.py").write_text("WIDTH = 2\n")
    (team / "registry.toml").write_text(TEAM_REGISTRY)
    (team / "weights").mkdir()
    (team / "weights" / "w.pt").write_bytes(b"not read")
    (team / "tests").mkdir()
    return project, team


def test_a_model_file_outside_the_project_is_staged_and_never_written(tmp_path: Path):
    project, team = team_repository(tmp_path)
    staged = stage_outside_file(team / "net.py", project=project, selection=["tests"],
                                registry=team / "registry.toml")
    assert staged.root == project / "mutants" / "project" and staged.path == "net.py"
    assert staged.registry == "registry.toml" and staged.original == team / "net.py"
    assert set(staged.copied) == {"net.py", "layers.py", "registry.toml"} and staged.linked == ("weights",)
    for name in staged.copied:  # snapshots: the run never writes the team's files
        assert not (staged.root / name).is_symlink()
        assert (staged.root / name).read_bytes() == (team / name).read_bytes()
    assert (staged.root / "weights").resolve() == team / "weights"
    # the project's packages and tests, linked; the team's own tests folder left out (same name)
    assert (staged.root / "tinypkg").resolve() == project / "tinypkg"
    assert (staged.root / "tests").resolve() == project / "tests"
    assert (project / "mutants" / MARKER).is_file()
    # a model whose top-level name is the project's own cannot be staged
    (team / "tests" / "m.py").write_text("x = 1\n")
    with pytest.raises(HarnessError, match=r"m.py: its top-level name 'tests' .* is also the project's own"):
        stage_outside_file(team / "tests" / "m.py", project=project, selection=["tests"],
                           registry=team / "registry.toml")


@pytest.fixture
def team_registered(tmp_path: Path):
    project, team = team_repository(tmp_path)
    load_registry_file(team / "registry.toml")
    yield project, team
    unregister("team_net")


def test_a_team_file_is_judged_by_its_variants_tests_with_its_registry_passed_through(team_registered):
    project, team = team_registered
    assert variants_of(team / "net.py", root=project) == ["team_net"]
    (team / "eq.json").write_text(json.dumps([{"path": str(team / "net.py"), "first": 24,
                                               "anchor": "identity = x", "reason": "r"}]))
    run = plan_run(str(team / "net.py"), root=project, tests=None, registry=str(team / "registry.toml"),
                   workers=1, timeout_factor=5.0, equivalences=load_equivalences(team / "eq.json"),
                   max_mutants=10, time_budget_s=60.0)
    assert run.selection[-2:] == ["-k", "team_net"] and run.pytest_args == ["--registry=registry.toml"]
    assert run.root == project / "mutants" / "project" and run.path == "net.py"
    assert run.shown_path == str(team / "net.py") and set(run.linked) == {"eq.json", "weights"}
    assert Equivalence("net.py", 24, "identity = x", "r") in run.equivalences  # the team's, on the copy
    assert (run.max_mutants, run.time_budget_s, run.contracts) == (10, 60.0, CONTRACTS)


PURE_TESTS = """\
def test_passes():
    assert True


def test_fails():
    assert 1 == 2
"""


def test_the_selection_must_pass_on_the_unmutated_file_naming_the_failing_tests(tmp_path: Path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_pure.py").write_text(PURE_TESTS)
    workspace = prepare_workspace(tmp_path)
    # no torch, no harness plugin: a pure-Python project, so the check takes a second
    run = MutationRun(path="m.py", selection=["tests"], root=tmp_path,
                      pytest_args=["-p", "no:rawnet2_harness"], progress=lambda line: None)
    failing = r"tests/test_pure.py::test_fails \(assert 1 == 2\);"
    with pytest.raises(HarnessError, match=r"^1 selected test\(s\) fail on the unmutated m.py, so no mutant "
                                           r"can be judged: " + failing):
        check_clean(run, workspace, {}, Clock(None), "m.py")
    (tmp_path / "tests" / "test_pure.py").write_text(PURE_TESTS.replace("1 == 2", "2 == 2"))
    clean = check_clean(run, workspace, {}, Clock(None), "m.py")
    assert sorted(clean.tests) == ["tests/test_pure.py::test_fails", "tests/test_pure.py::test_passes"]
    run.selection = ["tests", "-k", "nothing_matches"]
    with pytest.raises(HarnessError, match="no test is selected by tests -k nothing_matches"):
        check_clean(run, workspace, {}, Clock(None), "m.py")


def test_a_survivor_is_attributed_from_the_tests_that_reach_its_function(team_mutants: list[Mutant]):
    deletion = shortcut_deletion(team_mutants)
    audit = "tests/test_audits.py::test_audit_equals_declaration[team_net]"
    golden = "tests/test_golden.py::test_outputs_match_golden_file[team_net]"
    coverage = {deletion.mangled_function: [audit, golden, "tests/test_x.py::test_builds[team_net]"]}
    found = attribute(deletion, CONTRACTS, coverage, selected=[audit, golden])
    assert [c["contract"] for c in found["should_have_caught"]] == ["skip_wiring", "golden outputs"]
    assert found["should_have_caught"][0]["tests"] == [audit]
    assert found["verdict"].startswith("skip_wiring should have caught it: 1 of its tests reach "
                                       "Net._residual")
    assert {"contract": "equivalence to the reference", "why": CONTRACTS[2].why} in found["missing_contracts"]
    assert found["reached_by"]["count"] == 3
    # a module registered no more: the contracts that claim it, and none of their tests reach __init__
    unregistered = next(m for m in team_mutants if m.function == "Block.__init__"
                        and m.operator == "unregister_module")
    found = attribute(unregistered, CONTRACTS, {unregistered.mangled_function: [golden]}, selected=[golden])
    assert found["claimed_by"] == ["registration / state_dict round trip", "train/eval modes"]
    assert found["verdict"].startswith("no test of registration / state_dict round trip, train/eval modes "
                                       "reaches Block.__init__")
    # no test reaches it; no coverage measured; module-level code is reached by every selected test
    assert attribute(deletion, CONTRACTS, {"other": [golden]}, [golden])["verdict"].startswith(
        "no selected test reaches Net._residual")
    assert attribute(deletion, CONTRACTS, {}, [golden])["verdict"].startswith("unknown which tests reach")
    slope = next(m for m in team_mutants if m.function == MODULE_LEVEL)
    assert attribute(slope, CONTRACTS, {}, [golden])["should_have_caught"][0]["contract"] == "golden outputs"


def test_the_report_is_valid_json_at_every_write_and_says_why_a_mutant_did_not_run(team_mutants, tmp_path):
    chosen, left = sample_evenly(team_mutants, 6)
    run = MutationRun(path="net.py", selection=["tests"], max_mutants=6, contracts=CONTRACTS)
    started = [m for m in chosen if m.function != MODULE_LEVEL][:3]
    results = {started[0].id: ("killed", 1.0), started[1].id: ("survived", 9.0)}
    never = {**{m.id: "not in the sample" for m in left},
             **{m.id: "the time budget (5 s) was spent before it ran" for m in chosen if m.id not in results}}
    writer = ReportWriter(tmp_path / "r.json")
    section = file_section(run, team_mutants, results, {}, tests=["t::a"], tool_version="3.8.1",
                           duration_s=5.0, not_run=never, coverage={started[1].mangled_function: ["t::a"]},
                           status="partial")
    writer.write(section)
    on_disk = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(on_disk, MUTATION_REPORT_SCHEMA)
    assert on_disk["status"] == on_disk["files"][0]["status"] == "partial"
    by_id = {m["id"]: m for m in on_disk["files"][0]["mutants"]}
    module_level = [m for m in chosen if m.function == MODULE_LEVEL]
    assert module_level and all(by_id[m.id]["status"] == "not_run" and "time budget" in by_id[m.id]["why"]
                                for m in module_level)  # never started: reported, not dropped
    assert len(by_id) == len(team_mutants)
    summary = on_disk["files"][0]["summary"]
    assert (summary["killed"], summary["survived"], summary["judged"], summary["score"]) == (1, 1, 2, 50.0)
    (survivor,) = on_disk["files"][0]["survivors"]
    assert survivor["id"] == started[1].id and survivor["verdict"]
    writer.finish_file({**section, "status": "complete"})
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "partial"
    assert writer.write(status="complete")["status"] == "complete"
    assert "[PARTIAL]" in render_summary(build_report([section], "partial"))


def test_cli_refuses_a_syntax_error_and_an_output_over_its_input_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f(:\n    pass\n")
    assert main(["mutate", str(bad), "--output", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:3: not valid Python (") and err.count("\n") == 1
    good = tmp_path / "good.py"
    good.write_text(TEAM_MODEL)
    assert main(["mutate", str(good), "--output", str(good)]) == 2
    assert capsys.readouterr().err == (f"error: {good}: is {good}, which the run reads; give another "
                                       "--output\n")
    assert good.read_text() == TEAM_MODEL and not (tmp_path / "r.json").exists()


TEAM_TESTS = """\
import sys

import pytest
import torch

from harness.rawnet2.registry import SUBJECTS

TEAM = [name for name, spec in SUBJECTS.items() if spec.origin.endswith(".toml")]
for name in TEAM:  # checked on import: a module-level mutant that breaks it fails the collection
    if sys.modules[SUBJECTS[name].resolve_factory().__module__].SLOPE is None:
        raise RuntimeError(f"{name}: SLOPE is None")


@pytest.mark.parametrize("name", TEAM)
def test_output_is_the_formula(name):
    torch.manual_seed(0)
    model = SUBJECTS[name].build()
    x = torch.randn(3, 2)
    expected = torch.nn.functional.leaky_relu(x @ model.lin.weight.T + model.lin.bias, 0.5) + x
    assert torch.equal(model(x), expected)
"""


TINY_TEAM_REGISTRY = """\
[tool.rawnet2-harness.variants.tiny_team]
factory = "tiny_model:Tiny"
output = "any"
input_shape = [2]
"""


@pytest.fixture
def tiny_team(tmp_path: Path):
    """A project whose tests judge whatever a --registry file registers, and outside it a team's
    directory: the tiny model and its registry."""
    project = tmp_path / "project"
    project.mkdir()
    tiny_project(project, TEAM_TESTS)
    team = tmp_path / "teamrepo"
    team.mkdir()
    (team / "tiny_model.py").write_text(TINY_MODEL)
    (team / "registry.toml").write_text(TINY_TEAM_REGISTRY)
    load_registry_file(team / "registry.toml")
    yield project, team
    unregister("tiny_team")


@pytest.mark.slow  # ~1-2 min: mutmut and the module-level runs on a staged copy
def test_a_team_model_outside_the_project_end_to_end(tiny_team):
    project, team = tiny_team
    before = {p: p.read_bytes() for p in team.iterdir() if p.is_file()}
    run = plan_run(str(team / "tiny_model.py"), root=project, tests=None,
                   registry=str(team / "registry.toml"), workers=2, timeout_factor=5.0, equivalences=[])
    run.progress = lambda line: None
    writes: list[dict] = []
    run.on_update = writes.append
    section = run_mutation(run)
    jsonschema.validate(build_report([section]), MUTATION_REPORT_SCHEMA)
    assert section["path"] == str(team / "tiny_model.py") and section["status"] == "complete"
    assert "--registry=registry.toml" in section["tests"]["selection"]
    by_id = {m["id"]: m for m in section["mutants"]}
    drop = next(m for m in section["mutants"] if m["operator"] == "drop_addend")
    assert drop["status"] == "killed"
    assert drop["killed_by"]["test"] == "tests/test_tiny.py::test_output_is_the_formula[tiny_team]"
    assert by_id["tiny_model.<module>__mutmut_2"]["status"] == "killed"  # SLOPE = 1.5, run by the harness
    # SLOPE = None breaks the test module's import: pytest cannot collect the tests it was given (exit 4)
    assert by_id["tiny_model.<module>__mutmut_1"]["status"] == "killed"
    assert by_id["tiny_model.<module>__mutmut_1"]["killed_by"]["test"] == "tests/test_tiny.py"
    assert writes and all(w["status"] == "partial" for w in writes)
    # the survivors (lin unregistered, a detach) are attributed from measured coverage
    assert section["survivors"] and all(s["reached_by"]["how"].startswith("measured") or
                                        s["function"] == MODULE_LEVEL for s in section["survivors"])
    unregistered = next(s for s in section["survivors"] if s["operator"] == "unregister_module")
    assert unregistered["missing_contracts"] and unregistered["verdict"].startswith("no test of registration")
    assert {p: p.read_bytes() for p in team.iterdir() if p.is_file()} == before  # only read


@pytest.mark.slow  # ~30-60 s: runs until its budget is spent
def test_a_time_budget_stops_the_run_and_reports_what_never_ran(tmp_path: Path):
    tiny_project(tmp_path, TINY_TESTS.replace("def test_output_is_the_formula():\n",
                                              "def test_output_is_the_formula():\n    import time\n"
                                              "    time.sleep(3)\n"))
    report_path = tmp_path / "r.json"
    writer = ReportWriter(report_path)
    run = MutationRun(path="tinypkg/model.py", selection=["tests"], root=tmp_path, workers=2, max_mutants=6,
                      time_budget_s=25.0, progress=lambda line: None, on_update=writer.write)
    section = run_mutation(run)
    assert section["status"] == "partial"
    why = {m["why"] for m in section["mutants"] if m["status"] == "not_run"}
    assert BUDGET_SPENT.format(budget=25.0) in why and any(w.startswith("not in the sample") for w in why)
    assert section["summary"]["total"] == len(enumerate_mutants("tinypkg/model.py", root=tmp_path))
    on_disk = json.loads(report_path.read_text())  # the last partial write is valid JSON
    jsonschema.validate(on_disk, MUTATION_REPORT_SCHEMA)
    assert on_disk["status"] == "partial"
    assert (tmp_path / "tinypkg" / "model.py").read_text() == TINY_MODEL
