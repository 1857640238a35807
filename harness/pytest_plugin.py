"""The harness's pytest options, loaded before pytest reads its command line (entry point ``pytest11``).

``--registry FILE`` puts a team's TOML registry under the gate, from any directory and in
either spelling (``--registry FILE`` or ``--registry=FILE``): an option that only a
``conftest.py`` declares is unknown while pytest looks for its rootdir, so a FILE outside the
checkout would be taken for a test path. ``--variant NAME`` (repeatable) runs exactly the contract
tests parametrized with that registered name: ``-k`` matches substrings, so ``-k asv`` also
selects ``asv_refactor``.
"""

from __future__ import annotations

import pytest

# The parameters whose value is a registered variant's name (tests/conftest.py parametrizes them).
VARIANT_PARAMETER_SUFFIX = "_name"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rawnet2-harness")
    group.addoption("--registry", metavar="FILE", default=None,
                    help="TOML file with [tool.rawnet2-harness.variants.NAME] tables to put under the gate "
                         "(default: the rootdir's pyproject.toml)")
    group.addoption("--variant", metavar="NAME", action="append", default=[],
                    help="run only the contract tests parametrized with exactly this registered variant "
                         "(repeatable); unlike -k, never a variant whose name contains NAME")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before collection: every list of variants the tests parametrize over comes from the registry.
    from harness.core.errors import HarnessError
    from harness.rawnet2.registry import load_project_registry

    try:
        load_project_registry(config.getoption("--registry"), directory=config.rootpath)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = set(config.getoption("--variant") or ())
    if not wanted:
        return
    keep, drop = [], []
    for item in items:
        (keep if wanted & set(variant_parameters(item)) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def variant_parameters(item: pytest.Item) -> list[str]:
    """The registered names an item is parametrized with (its ``*_name`` parameters)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return [value for key, value in params.items() if key.endswith(VARIANT_PARAMETER_SUFFIX)
            and isinstance(value, str)]
