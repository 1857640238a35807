"""Fixtures derived from the registry: every contract runs on every variant that it applies to.

A test asks for a variant by what it needs, never by name (timm's ``test_models.py``
style): ``variant_name`` (every registered variant and derived form), ``runnable_name``
(its forward runs), ``referenced_name`` (declares a reference it must equal),
``golden_name`` (records its own golden file), ``layout_name`` (declares a
checkpoint layout), ``foldable_name`` (lists deployment forms), ``family_name`` (a
runnable RawNet2-family variant: the family's facts apply), ``scored_name`` (its
output turns into a detection score). Every input a generic contract feeds a variant
comes from its spec (``spec.example(batch, length)``, ``spec.input_contract()``). Test ids carry the
variant's name, so ``pytest -k prod`` runs every contract on a variant called prod.
``tests/test_registry.py`` fails when a registered variant is left out of a contract. The
predicates live in ``tests.helpers.VARIANT_FIXTURES``; the fixtures several modules share live here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.core.export_cache import CACHE_DIR_ENV
from harness.rawnet2.corpus import Corpus, build_corpus
from harness.rawnet2.registry import SUBJECTS, load_registry_file, unregister
from tests.helpers import TEAM_REGISTRY, VARIANT_FIXTURES, restored_registry, variants


def pytest_configure(config: pytest.Config) -> None:
    # A production-style model unlike the family ([B, T], GRU, log-softmax [B, 2]) and two correct
    # refactors of it: under every generic contract in the default run, so a claim about "any model"
    # is tested on one. A team's own run (pytest --registry FILE) gates its models alone.
    if config.getoption("--registry") is None:
        load_registry_file(TEAM_REGISTRY)


@pytest.fixture
def registered() -> Iterator[None]:
    """Whatever a test registers (``--registry``, ``load_registry_file``) is undone after it."""
    with restored_registry():
        yield


@pytest.fixture(autouse=True)
def export_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test has its own export cache (harness.core.export_cache), made only if the test uses
    it: none writes to the user's, and no test's result depends on what another one cached."""
    directory = tmp_path / "export-cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(directory))
    return directory


@pytest.fixture
def own_export_cache(export_cache_dir: Path) -> Path:
    """This test's export cache directory (not yet created), for a test of the cache itself."""
    return export_cache_dir


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The labelled fixture corpus (``harness.rawnet2.corpus``), built once per run: read it, never
    write into it."""
    return build_corpus(tmp_path_factory.mktemp("fixture_corpus"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: on a busy 2-core machine, two threads' barriers stall each
    small op (many tiny forwards, or the quick report, run many times slower); such a test checks data,
    not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def team_scored() -> Iterator[list[str]]:
    """The team registry's variants whose output turns into a score, registered for the module."""
    already = set(SUBJECTS)
    specs = load_registry_file(TEAM_REGISTRY)
    yield [spec.name for spec in specs if spec.runs and spec.score_transform is not None]
    for spec in specs:
        if spec.name not in already:
            unregister(spec.name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture in VARIANT_FIXTURES:
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, variants(fixture), ids=str)
