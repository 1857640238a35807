"""Benchmark-suite set-up: smoke vs timed runs, and the machine facts a timing depends on.

pyproject's addopts disable timing, so a plain ``pytest`` runs each benchmark's
function once, untimed. Even untimed, the whole matrix (every timed form of every
runnable variant, ``harness.rawnet2.bench.timed_forms``, x 2 batches x 2 lengths) costs
well over 10 s of forwards on 2 cores, so a smoke run keeps only the smallest
configuration (``SMOKE_PARAMS``) of each form and deselects the rest: every form still
runs once.
``--benchmark-enable`` (``make bench``) runs and times all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core import bench

# The configuration a smoke run keeps: every form runs its forward once on it.
SMOKE_PARAMS = {"batch": 1, "length": 16_000}

_HERE = Path(__file__).parent


def benchmarks_timed(config: pytest.Config) -> bool:
    """Whether this session times benchmarks (pytest-benchmark also disables them under xdist)."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not session.disabled
    return bool(config.getoption("benchmark_enable") or not config.getoption("benchmark_disable"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if benchmarks_timed(config):
        return
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        in_suite = _HERE in item.path.parents
        smoke = all(params.get(k, v) == v for k, v in SMOKE_PARAMS.items())
        (drop if in_suite and not smoke else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    # torch version, intra-op threads and GPU name; pytest-benchmark's own keys (cpu, ...) are kept.
    machine_info.update({k: v for k, v in bench.machine_info().items() if k not in machine_info})
