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
``tests/test_registry.py`` fails when a registered variant is left out of a contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from harness.rawnet2.corpus import Corpus, build_corpus
from harness.rawnet2.registry import SUBJECTS, VariantSpec, in_family, load_registry_file
from tests.helpers import TEAM_REGISTRY, restored_registry

# fixture name -> which specs it is parametrized over
VARIANT_FIXTURES: dict[str, Callable[[VariantSpec], bool]] = {
    "variant_name": lambda spec: True,
    "runnable_name": lambda spec: spec.runs,
    "referenced_name": lambda spec: spec.reference is not None,
    "golden_name": lambda spec: bool(spec.golden_modes),
    "layout_name": lambda spec: spec.layout is not None,
    "foldable_name": lambda spec: spec.runs and bool(spec.forms),
    # The RawNet2 family's own facts (num_classes, [B, 1, T] rules, the guide's layouts) apply only here.
    "family_name": lambda spec: spec.runs and in_family(spec),
    # Its output turns into a detection score (spec.score_transform): score and evaluate take it.
    "scored_name": lambda spec: spec.runs and spec.score_transform is not None,
}


def variants(fixture: str) -> list[str]:
    """The registered names a registry fixture runs over (for hypothesis strategies and loops)."""
    return [name for name, spec in SUBJECTS.items() if VARIANT_FIXTURES[fixture](spec)]


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


@pytest.fixture(scope="session")
def session_export_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("export-cache"))


@pytest.fixture(autouse=True)
def export_cache_dir(session_export_cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's export cache (harness.core.export_cache): the session has its own,
    shared by its tests (an export verified once serves them all); a test of the cache sets its own."""
    monkeypatch.setenv("RAWNET2_HARNESS_CACHE_DIR", session_export_cache)


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The labelled fixture corpus (``harness.rawnet2.corpus``), built once per run: read it, never
    write into it."""
    return build_corpus(tmp_path_factory.mktemp("fixture_corpus"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture in VARIANT_FIXTURES:
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, variants(fixture), ids=str)
