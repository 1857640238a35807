"""Hostile models under the audit: cyclic object graphs, too-small examples, code that tries to exit.

* The introspection walk ends on any object graph (cycles through lists, dicts, tuples,
  attributes and registered modules; nesting far deeper than Python's recursion limit) and
  reports where the graph comes back to an ancestor (``introspect.cycles``): a module
  registered inside itself fails ``registration`` (and each other check says torch
  recursed without end), a loop through plain containers is a note.
* An example input too small for the train-mode forward the audit runs is the caller's
  error: exit 2, one line, naming the minimum (the family's ``min_train_length``, or a
  batch of 2 for any model, found by a probe).
* ``audit`` exits 0 only when every check ran and passed: user code calling ``sys.exit(0)``
  anywhere the harness runs it (import, factory, ``train()``, forward, a property the
  walk meets) is exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import SUBJECTS, HarnessError
from harness.core.audits import audit
from harness.core.introspect import cycles, held, held_tensors
from harness.rawnet2.audits import audit_spec, check_example_input, in_family
from harness.rawnet2.inputs import min_train_length
from harness.rawnet2.registry import resolve
from tests.helpers import REPO, assert_one_error_line, run_cli

MODELS = textwrap.dedent('''
    import sys

    import torch
    import torch.nn as nn


    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x)


    class ListHoldingItself(Small):
        def __init__(self):
            super().__init__()
            self.things = []
            self.things.append(self.things)


    class DictHoldingItself(Small):
        def __init__(self):
            super().__init__()
            self.table = {"k": 1}
            self.table["me"] = self.table


    class TupleLoop(Small):
        def __init__(self):
            super().__init__()
            inner = []
            self.pair = (inner, torch.zeros(1))
            inner.append(self.pair)


    class ListHoldingTheModel(Small):
        def __init__(self):
            super().__init__()
            self.peers = [self]
            self.hidden = [nn.Linear(4, 4), self.peers]


    class RegisteredInsideItself(Small):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Identity())
            self.inner.add_module("parent", self)


    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)
            self.out = nn.Linear(3, 1)

        def forward(self, x):
            return torch.sigmoid(self.out(self.bn(self.fc(x))))


    class ExitsInTrain(Small):
        def train(self, mode=True):
            if mode:
                sys.exit(0)
            return super().train(mode)


    class ExitsInTrainForward(Small):
        def forward(self, x):
            if self.training:
                sys.exit(0)
            return super().forward(x)


    class ExitingProperty:
        @property
        def __class__(self):
            sys.exit(0)


    class ExitsWhenWalked(Small):
        def __init__(self):
            super().__init__()
            self.odd = [ExitingProperty()]
''')


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "hostile_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("hostile_models", None)
    import hostile_models

    yield hostile_models
    sys.modules.pop("hostile_models", None)


# --- cycles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("ListHoldingItself", ["things[0] leads back to 'things'"]),
    ("DictHoldingItself", ["table['me'] leads back to 'table'"]),
    ("TupleLoop", ["pair[0][0] leads back to 'pair'"]),
    ("ListHoldingTheModel", ["peers[0] leads back to the model itself"]),
])
def test_the_walk_ends_on_a_cycle_through_plain_containers_and_reports_it(models, name, expected):
    model = getattr(models, name)()
    found = cycles(model)
    assert [c.describe() for c in found] == expected
    assert not any(c.registered for c in found)
    assert {h.path for h in held(model)} >= {"fc", "fc.weight", "fc.bias"}


def test_the_walk_ends_on_a_module_registered_inside_itself(models):
    model = models.RegisteredInsideItself()
    assert [(c.describe(), c.registered) for c in cycles(model)] == [
        ("inner.parent leads back to the model itself", True)]
    assert [h.path for h in held(model)] == ["fc", "inner", "inner.0", "fc.weight", "fc.bias"]


def test_the_walk_goes_deeper_than_the_recursion_limit():
    nested: list = []
    innermost = nested
    for _ in range(sys.getrecursionlimit() * 5):
        innermost.append([])
        innermost = innermost[0]
    innermost.append(torch.ones(1))
    model = nn.Linear(1, 1)
    model.nested = nested
    found = held_tensors(model)
    assert [h.path.count("[0]") for h in found if not h.registered] == [sys.getrecursionlimit() * 5 + 1]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_object_graph_is_walked_once_and_every_reachable_tensor_found(data):
    """Random graphs of lists and dicts with random edges (cycles, sharing) and tensors at random nodes."""
    n = data.draw(st.integers(1, 12))
    nodes: list[list | dict] = [[] if data.draw(st.booleans()) else {} for _ in range(n)]
    tensors = [torch.zeros(1) for _ in range(data.draw(st.integers(0, 6)))]
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n + len(tensors) - 1)),
                               max_size=40))
    for i, (src, dst) in enumerate(edges):
        child = nodes[dst] if dst < n else tensors[dst - n]
        if isinstance(nodes[src], list):
            nodes[src].append(child)
        else:
            nodes[src][f"k{i}"] = child
    model = nn.Linear(1, 1)
    model.graph = nodes[0]
    reachable, stack, visited = set(), [nodes[0]], set()
    while stack:
        obj = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            reachable.add(id(obj))
        else:
            stack.extend(obj if isinstance(obj, list) else obj.values())
    unregistered = [h for h in held_tensors(model) if not h.registered]
    assert sorted(id(h.obj) for h in unregistered) == sorted(reachable)
    cycles(model)  # ends too


def test_audit_of_a_cycle_through_plain_containers_reports_it_as_a_note(models):
    report = audit(models.ListHoldingItself, torch.randn(2, 4), checks=["registration", "determinism"])
    assert report.results == {"registration": "pass", "determinism": "pass"}
    assert "reference cycle: things[0] leads back to 'things'" in report.notes["registration"]


# name -> whether the model also hides a module or tensor in the loop (a real registration finding)
PLAIN_CYCLES = {"ListHoldingItself": False, "DictHoldingItself": False, "TupleLoop": True,
                "ListHoldingTheModel": True}


@pytest.mark.parametrize("name", list(PLAIN_CYCLES))
def test_cli_audit_of_a_plain_cycle_ends_with_findings_or_a_pass_never_a_traceback(models, name):
    code, out, err = run_cli("audit", f"hostile_models:{name}", "--input-shape", "2,4")
    assert err == ""
    assert "reference cycle:" in out
    assert code == (1 if PLAIN_CYCLES[name] else 0), out


def test_cli_audit_of_a_module_registered_inside_itself_fails_every_check_with_a_finding(models):
    code, out, err = run_cli("audit", "hostile_models:RegisteredInsideItself", "--input-shape", "2,4",
                             "--format", "json")
    assert code == 1 and err == ""
    data = json.loads(out)
    assert set(data["results"].values()) <= {"fail", "n/a"} and data["results"]["registration"] == "fail"
    messages = [f["message"] for f in data["findings"]]
    assert "inner.parent leads back to the model itself: a module registered inside itself, so torch's " \
           "recursive methods (eval(), .to(), state_dict()) never end" in messages
    assert any(m.startswith("torch recursed without end: inner.parent") for m in messages)


# --- an example too small for the model's mode ----------------------------------------------------


def test_cli_audit_refuses_an_example_too_short_for_the_family():
    code, out, err = run_cli("audit", "--variant", "skip_modules", "--input-shape", "1,1,1")
    assert code == 2 and out == ""
    minimum = f"use T >= {min_train_length(1)} or a batch of 2 or more"
    assert_one_error_line(err, "error: example input [1, 1, 1]: shape (1, 1, 1) is too short for a "
                               "train-mode forward", minimum,
                          "mode_propagation and gradient_coverage run the model in train mode")


@pytest.mark.parametrize("name", sorted(n for n in SUBJECTS if in_family(SUBJECTS[n])))
def test_every_family_variant_refuses_a_too_short_example_before_building_findings(name):
    with pytest.raises(HarnessError, match=r"use T >= 9 or a batch of 2 or more") as caught:
        audit_spec(SUBJECTS[name], torch.randn(1, 1, 8))
    assert caught.value.exit_code == 2


def test_a_too_short_example_is_fine_for_checks_that_run_no_forward():
    code, out, err = run_cli("audit", "--variant", "skip_modules", "--input-shape", "1,1,1",
                             "--checks", "registration")
    assert code == 0 and err == "" and "registration  pass" in out


def test_the_family_minimum_is_the_shortest_example_the_audit_takes():
    spec = SUBJECTS["skip_modules"]
    model = spec.build()
    check_example_input(spec, model, torch.randn(1, 1, min_train_length(1)), ["mode_propagation"])
    with pytest.raises(HarnessError):
        check_example_input(spec, model, torch.randn(1, 1, min_train_length(1) - 1), ["mode_propagation"])


def test_any_model_is_probed_and_a_batch_of_two_named(models):
    code, out, err = run_cli("audit", "hostile_models:Normalised", "--input-shape", "1,4")
    assert code == 2 and out == ""
    assert_one_error_line(err, "error: example input [1, 4]: too small for a train-mode forward of "
                               "hostile_models:Normalised", "Expected more than 1 value per channel",
                          "use a batch of 2 or more (a batch of 2 works)")
    code, out, err = run_cli("audit", "hostile_models:Normalised", "--input-shape", "2,4")
    assert code == 0 and err == "", out


def test_the_probe_runs_only_for_checks_that_train(models):
    code, out, err = run_cli("audit", "hostile_models:Normalised", "--input-shape", "1,4",
                             "--checks", "registration,determinism,output_contract")
    assert code == 0 and err == "", out


def test_the_family_is_known_through_references():
    assert in_family(SUBJECTS["skip_modules"]) and in_family(SUBJECTS["tuple_blocks"])
    assert not in_family(resolve("torch.nn:Linear", kwargs={"in_features": 4, "out_features": 1}))


# --- audit exits 0 only when every check ran and passed ----------------------------------------------


@pytest.mark.parametrize(("name", "what"), [
    ("ExitsInTrain", "the model's train() called sys.exit(0)"),
    ("ExitsInTrainForward", "the forward called sys.exit(0)"),
    ("ExitsWhenWalked", "the model's code called sys.exit(0)"),
])
def test_sys_exit_anywhere_the_audit_runs_user_code_is_exit_2(models, name, what):
    code, out, err = run_cli("audit", f"hostile_models:{name}", "--input-shape", "2,4")
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {what}")


def test_sys_exit_0_in_train_ends_the_real_process_with_2(tmp_path):
    (tmp_path / "hostile_models.py").write_text(MODELS)
    result = subprocess.run([sys.executable, "-m", "harness", "audit", "hostile_models:ExitsInTrain",
                             "--input-shape", "2,4"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr == "error: the model's train() called sys.exit(0)\n"
