"""The gate on a team's production model, unlike the family in every contract: a [B, T] input, a
minimum length over 2,000, a GRU, log-softmax [B, 2] (tests/team_models/asv_detector.py).

The gate must tell a correct refactor from a broken one: the correct model, its re-nested
refactor and its class-renamed copy pass every contract; a refactor that lost a LeakyReLU
slope and one whose pre-GRU BatchNorm is unregistered fail, each on the tests that name its
cause. The fast tests here check the causes directly; the slow one runs the whole suite as a
team would (``pytest --registry FILE --variant NAME``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.rawnet2.audits import audit_spec
from harness.rawnet2.equivalence import compare_specs
from harness.rawnet2.registry import SUBJECTS, load_registry_file, read_registry_tables, unregister
from tests.helpers import BROKEN_REGISTRY, REPO, TEAM_MODELS, TEAM_REGISTRY, restored_registry


@pytest.fixture(scope="module")
def broken():
    """The broken refactors registered beside the production model (broken.toml declares its own
    ``asv``, as a team's file would); the registry is restored afterwards."""
    with restored_registry():
        for name in read_registry_tables(BROKEN_REGISTRY):
            unregister(name)
        load_registry_file(BROKEN_REGISTRY)
        yield SUBJECTS


def test_a_lost_slope_computes_another_function_named_at_its_stage(broken):
    result = compare_specs(broken["asv"], broken["asv_slope"], broken["asv"].example(3))
    assert [row.equivalent for row in result.modes] == [False, False]
    assert all(row.first_divergence and "stages.3" in row.first_divergence for row in result.modes), result


def test_an_unregistered_batchnorm_fails_registration_and_the_checks_it_breaks(broken):
    spec = broken["asv_unregistered"]
    report = audit_spec(spec, spec.example(2))
    # eval() misses it (batch statistics in eval mode), .to() leaves it behind.
    assert {"registration", "mode_propagation", "device_transfer", "batch_independence"} <= set(report.failed)
    assert any("pre_rnn" in message for message in report.messages("registration"))


def run_suite(registry: Path, *variants: str) -> subprocess.CompletedProcess:
    select = [arg for name in variants for arg in ("--variant", name)]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-n", "2", "--registry", str(registry), *select, "-rf", str(REPO / "tests")],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(TEAM_MODELS)})


def failed_tests(run: subprocess.CompletedProcess) -> set[str]:
    return {line.split()[1].split("[")[0] for line in run.stdout.splitlines() if line.startswith("FAILED ")}


@pytest.mark.slow
def test_the_gate_passes_the_correct_models_and_fails_each_broken_one_for_its_cause():
    correct = run_suite(TEAM_REGISTRY, "asv", "asv_refactor", "asv_renamed")
    assert correct.returncode == 0, correct.stdout[-4000:]
    slope = run_suite(BROKEN_REGISTRY, "asv_slope")
    unregistered = run_suite(BROKEN_REGISTRY, "asv_unregistered")
    assert slope.returncode == 1 and unregistered.returncode == 1
    slope_failed, unregistered_failed = failed_tests(slope), failed_tests(unregistered)
    assert any("golden" in t for t in slope_failed), slope.stdout[-4000:]
    assert any("audit_equals_declaration" in t for t in unregistered_failed), unregistered.stdout[-4000:]
    assert slope_failed != unregistered_failed
