"""Where mutants live: ``mutants/`` under the project root, made (and remade) only by the harness.

The source tree is never written. A model file outside the project (a team's own
repository) is staged first: its directory's Python files, packages and registry file
are copied into ``mutants/project/`` beside links to the project's own packages and
tests, and that staging copy is the root the run mutates (``stage_outside_file``). Other
files of the team's directory (weights, data) are linked, never copied or written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import HarnessError

WORKSPACE = "mutants"  # mutmut's own name for its copy of the project
MARKER = ".harness-mutate"  # written in WORKSPACE: only a workspace carrying it is ever deleted
PLUGIN = "_harness_mutation_plugin"  # harness/core/mutation/plugin.py, copied into each copy of the project
STAGE = "project"  # WORKSPACE/STAGE: the staging root of a file outside the project
CONFIG_FILES = ("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini", "conftest.py")


def project_entries(root: Path, selection: Sequence[str]) -> list[str]:
    """What the copy of the project needs: every top-level package, the test paths, the config files."""
    entries = []
    for child in sorted(root.iterdir()):
        if child.name == WORKSPACE or child.name.startswith("."):
            continue
        if child.is_dir() and (child / "__init__.py").is_file():
            entries.append(child.name)
        elif child.is_file() and child.name in CONFIG_FILES:
            entries.append(child.name)
    for arg in selection:
        top = arg.split("::")[0].split("/")[0]
        if not arg.startswith("-") and (root / top).exists() and top not in entries:
            entries.append(top)
    return entries


def prepare_workspace(root: Path) -> Path:
    """``root/mutants`` emptied and marked as the harness's (one it did not make is refused, not deleted)."""
    workspace = root / WORKSPACE
    if workspace.is_symlink() or (workspace.exists() and not workspace.is_dir()):
        raise HarnessError(f"{workspace}: exists and is not a directory the harness made; move it away")
    if workspace.exists():
        if not (workspace / MARKER).is_file() and any(workspace.iterdir()):
            raise HarnessError(f"{workspace}: exists and was not made by 'harness mutate'; move it away")
        shutil.rmtree(workspace)
    workspace.mkdir()
    (workspace / MARKER).write_text("made by python -m harness mutate; deleted and remade by each run\n")
    install_plugin(workspace)
    return workspace


def install_plugin(directory: Path) -> None:
    """The pytest plugin as a top-level module of the copy: loading it imports nothing of the harness."""
    from harness.core.mutation import plugin

    shutil.copyfile(plugin.__file__, directory / f"{PLUGIN}.py")


def link_entries(source: Path, names: Sequence[str], into: Path) -> None:
    """Symbolic links ``into/NAME`` -> ``source/NAME``: read-only data the copy needs but never writes."""
    for name in names:
        target = into / name
        if not target.exists() and not target.is_symlink():
            target.symlink_to((source / name).resolve())


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """A file outside the project, staged: the root to run in, the file and the registry inside it."""

    root: Path  # the staging root: the project's entries linked, the team's files copied
    path: str  # the model file, relative to root
    registry: str | None  # the registry file, relative to root (pytest's --registry inside the copies)
    copied: tuple[str, ...]  # the team's entries copied in (mutmut copies them into its workspace)
    linked: tuple[str, ...]  # the team's other entries (weights, data), linked
    original: Path  # the model file where the team keeps it


def stage_outside_file(path: Path, *, project: Path, selection: Sequence[str],
                       registry: Path | None = None) -> StagedFile:
    """Stage ``path`` (outside ``project``) into ``project/mutants/project`` and return where it lies.

    The team's directory is the registry file's when ``path`` lies under it (its factories
    name modules relative to it), else ``path``'s own. Its Python files and packages and the
    registry are copied (a snapshot: the team's files are only read), anything else is
    linked; the project's packages, tests and config files are linked beside them. A team
    entry that bears the name of one of the project's is refused if the model needs it
    (its own top-level entry), else left out.
    """
    path = path.resolve()
    team = path.parent
    if registry is not None and path.is_relative_to(registry.resolve().parent):
        team = registry.resolve().parent
    rel = path.relative_to(team).as_posix()
    ours = project_entries(project, selection)
    top = rel.split("/")[0]
    if top in ours:
        raise HarnessError(f"{path}: its top-level name {top!r} in {team} is also the project's own "
                           f"{project / top}; rename or move it")
    stage = prepare_workspace(project) / STAGE
    stage.mkdir()
    link_entries(project, ours, stage)
    copied, linked = [], []
    for child in sorted(team.iterdir()):
        name = child.name
        if name in ours or name.startswith(".") or name in (WORKSPACE, "__pycache__"):
            continue
        is_code = (child.is_file() and child.suffix == ".py") or (
            child.is_dir() and (child / "__init__.py").is_file())
        is_registry = registry is not None and child.resolve() == registry.resolve()
        if is_code or is_registry:
            if child.is_dir():
                shutil.copytree(child, stage / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(child, stage / name)
            copied.append(name)
        else:
            linked.append(name)
    link_entries(team, linked, stage)
    staged_registry = None
    if registry is not None:
        if registry.resolve().parent == team:
            staged_registry = registry.name
        else:  # a registry elsewhere: read where it is (its factories' directory goes on sys.path)
            staged_registry = os.fspath(registry.resolve())
    return StagedFile(root=stage, path=rel, registry=staged_registry, copied=tuple(copied),
                      linked=tuple(linked), original=path)
