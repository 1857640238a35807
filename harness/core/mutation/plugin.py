"""pytest plugin for mutation runs: the fastest tests first, and the test that killed each mutant recorded.

Active only where ``harness.core.mutation`` sets its environment variables
(``HARNESS_MUTATION_DURATIONS``, ``HARNESS_MUTATION_RECORDS``, ``HARNESS_MUTATION_CLEAN``), so
loading it elsewhere changes nothing. Under a run, Hypothesis neither shrinks a failing example
nor replays its database: a mutant only needs *a* failure. The files it reads and writes:
docs/mutation.md, "The pytest plugin".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

MUTANT_MARK = "__mutmut_"
_state = {"killed": False, "start": 0.0, "tests_run": 0}


def _durations() -> dict[str, float]:
    path = os.environ.get("HARNESS_MUTATION_DURATIONS")
    if not path or not Path(path).is_file():
        return {}
    try:
        return dict(json.loads(Path(path).read_text(encoding="utf-8")).get("duration_by_test", {}))
    except (OSError, ValueError):
        return {}


def _active() -> bool:
    return bool(os.environ.get("HARNESS_MUTATION_RECORDS") or os.environ.get("HARNESS_MUTATION_DURATIONS")
                or os.environ.get("HARNESS_MUTATION_CLEAN"))


def pytest_configure(config: pytest.Config) -> None:
    if not _active():
        return
    try:
        from hypothesis import Phase, settings
    except ImportError:
        return
    # After the project's conftest has loaded its profile, before any test module is imported (so
    # every @settings(...) derives from this one).
    settings.register_profile("harness-mutation", parent=settings(), database=None,
                              phases=[Phase.explicit, Phase.generate])
    settings.load_profile("harness-mutation")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    durations = _durations()
    if durations:
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


def _first_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return (text.strip().splitlines() or [""])[0][:300]


def _write_line(path: str, record: dict) -> None:
    line = json.dumps(record) + "\n"
    # One short O_APPEND write: concurrent workers never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _append(record: dict) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    path = os.environ.get("HARNESS_MUTATION_RECORDS")
    if not path or MUTANT_MARK not in mutant:
        return
    _write_line(path, {"mutant": mutant, **record})


def _killed(nodeid: str, report: pytest.TestReport | pytest.CollectReport) -> None:
    if not _state["killed"]:
        _state["killed"] = True
        _append({"event": "killed", "test": nodeid, "message": _first_line(report)})


def pytest_sessionstart() -> None:
    _state.update(killed=False, start=time.monotonic(), tests_run=0)


def _clean_record(report: pytest.TestReport) -> None:
    path = os.environ.get("HARNESS_MUTATION_CLEAN")
    if not path or MUTANT_MARK in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    if report.when == "call" or not report.passed:
        _write_line(path, {"test": report.nodeid, "outcome": report.outcome, "when": report.when,
                           "duration_s": round(report.duration, 4), "message": _first_line(report)
                           if report.failed else ""})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _clean_record(report)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _state["tests_run"] += 1
    if report.failed:
        _killed(report.nodeid, report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed and (path := os.environ.get("HARNESS_MUTATION_CLEAN")) and MUTANT_MARK not in \
            os.environ.get("MUTANT_UNDER_TEST", ""):
        _write_line(path, {"test": report.nodeid or "<collection>", "outcome": "failed", "when": "collect",
                           "duration_s": 0.0, "message": _first_line(report)})
    if report.failed:
        _killed(report.nodeid or "<collection>", report)


def pytest_sessionfinish() -> None:
    _append({"event": "finished", "duration_s": round(time.monotonic() - _state["start"], 3),
             "tests_run": _state["tests_run"]})
