"""Project-wide pytest set-up: hypothesis profiles, devices, RNG isolation, golden opt-in."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Model forwards vary a lot in wall time under load (2-core CI, xdist), so no
# per-example deadline anywhere; speed lives in the benchmarks.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=10, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

CUDA_SKIP_REASON = "CUDA not available: no GPU on this machine"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: the workers already use every core.
    torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden output files instead of comparing against them",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # A plain `pytest` smoke-runs the benchmarks untimed; `pytest --benchmark-only` (or
    # --benchmark-enable) times them. Set here, before pytest-benchmark reads its options: as an
    # addopts entry, --benchmark-disable made `pytest --benchmark-only` a usage error.
    if config.pluginmanager.hasplugin("benchmark") and not (
            config.getoption("benchmark_only") or config.getoption("benchmark_enable")):
        config.option.benchmark_disable = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `slow` tests stay out of the fast gate unless a -m expression names them.
    run_slow = "slow" in (config.getoption("markexpr") or "")
    skip_slow = pytest.mark.skip(reason="slow: excluded from the default gate; run with -m slow")
    skip_cuda = pytest.mark.skip(reason=CUDA_SKIP_REASON)
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device the test should run on; cuda is skipped with a reason where absent."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def isolated_rng():
    """Every test starts from seed 0 and leaves torch's global RNG as it found it."""
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True only when the run was started with --update-golden."""
    return bool(request.config.getoption("--update-golden"))
