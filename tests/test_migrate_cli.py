"""``python -m harness migrate``: what it prints, what it refuses, and save -> migrate -> load sequences;
a team's production checkpoint (``{"model", "epoch", "optimizer"}``) migrated to its refactor.

Two cases run the real command in a subprocess (start-up costs seconds); the rest call
``harness.__main__.main(argv)`` in-process, which is the same code path after argv.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, rule

from harness import build
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.checkpoints import POLICIES, detect_layout, load_checkpoint, save_checkpoint
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.layouts import state_dict_layout
from harness.rawnet2.registry import spec
from tests.helpers import REPO, TEAM_MODELS, TEAM_REGISTRY, assert_one_error_line, run_cli
from tests.team_models.asv_detector import MIN_SAMPLES, AsvDetector, RefactoredDetector

SHARED_MODULES = ("conv1", *(f"res_block{i}" for i in range(1, 7)), "fc1", "fc2")
SHORTCUTS = ("skip2", "skip4", "skip6")


@functools.cache
def fresh_state(layout: str) -> dict[str, torch.Tensor]:
    return build(layout).state_dict()


def random_state(layout: str, seed: int, *, gated: bool = False) -> dict[str, torch.Tensor]:
    """Random values in a fresh model's shapes; ``gated`` zeroes skip_modules' shortcut gates."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
             for k, v in fresh_state(layout).items()}
    if gated:
        for name in SHORTCUTS:
            state[f"{name}.1.weight"].zero_()
            state[f"{name}.1.bias"].zero_()
    return state


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --- the real command, in a subprocess ----------------------------------------------------------


def run_subprocess(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "migrate", *map(str, argv)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_migrate_command_converts_a_wrapped_legacy_checkpoint(tmp_path: Path):
    src, dst = tmp_path / "legacy.pt", tmp_path / "skip_modules.pt"
    state = random_state("legacy", seed=0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, src)
    result = run_subprocess(src, dst, "--to", "skip_modules")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"{src}: unwrapped 'state_dict' (ignored: epoch)",
        f"{src}: stripped the 'module.' prefix",
        "legacy -> skip_modules (policy preserve-function): 95 kept, 0 renamed, 21 added, 7 dropped",
    ]
    assert lines[-1] == f"wrote {dst} (116 keys)"
    converted = load_checkpoint(dst)
    assert detect_layout(converted) == "skip_modules" and len(converted) == 116
    assert all(torch.equal(converted[k], v) for k, v in state.items() if not k.startswith("skip."))


# --- in-process ----------------------------------------------------------------------------------


def test_migrate_command_refuses_a_malicious_pickle_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"

    class CreatesAFile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    src = tmp_path / "evil.pt"
    torch.save(CreatesAFile(), src)
    # In-process, like the rest (migrate's real process: the converting test above): a pickle that ran
    # would create the marker here as well.
    code, out, err = run_cli("migrate", src, tmp_path / "out.pt", "--to", "skip_modules")
    assert code == 2
    assert out == ""
    assert_one_error_line(err, f"error: {src}: refused: the pickle asks for io.open")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


@pytest.fixture
def legacy_file(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.pt"
    torch.save(random_state("legacy", seed=1), path)
    return path


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_dst_that_is_the_source_is_refused(legacy_file: Path, spelling: str, force: bool):
    directory = legacy_file.parent
    dst = {
        "same": lambda: legacy_file,
        "dotted": lambda: directory / "." / ".." / directory.name / legacy_file.name,
        "symlink": lambda: (directory / "link.pt").symlink_to(legacy_file) or directory / "link.pt",
        "hardlink": lambda: os.link(legacy_file, directory / "hard.pt") or directory / "hard.pt",
    }[spelling]()
    before = file_state(legacy_file)
    code, out, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules",
                             *(["--force"] if force else []))
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {dst}: is the source checkpoint {legacy_file}")
    assert file_state(legacy_file) == before


def test_existing_dst_is_refused_without_force_and_replaced_with_it(legacy_file: Path):
    dst = legacy_file.parent / "out.pt"
    dst.write_bytes(b"an older migration")
    code, out, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules")
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {dst}: already exists; use --force")
    assert dst.read_bytes() == b"an older migration"
    code, out, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules", "--force")
    assert code == 0 and err == ""
    assert len(load_checkpoint(dst)) == 116
    assert sorted(p.name for p in legacy_file.parent.iterdir()) == ["legacy.pt", "out.pt"]  # no temp files


def test_preserve_weights_prints_each_rename(legacy_file: Path):
    dst = legacy_file.parent / "out.safetensors"
    code, out, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules", "--policy",
                             "preserve-weights")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == ("legacy -> skip_modules (policy preserve-weights): "
                        "95 kept, 7 renamed, 14 added, 0 dropped")
    assert "  renamed skip.1.running_var -> skip6.1.running_var" in lines
    assert "  added 14: new shortcut, freshly initialised (seed 0): the function changes" in lines
    source, converted = load_checkpoint(legacy_file), load_checkpoint(dst)
    assert torch.equal(converted["skip6.0.weight"], source["skip.0.weight"])


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--to", "tuple_blocks"], ["cannot convert to tuple_blocks", "(97.1%)"]),
        (["--to", "resnet"], ["unknown target layout 'resnet'"]),
        (["--to", "skip_modules", "--from", "skip_modules"],
         ["does not fit the skip_modules layout: missing skip2"]),
    ],
    ids=["to-tuple_blocks", "unknown-layout", "wrong-from"],
)
def test_impossible_requests_are_refused_naming_the_source(legacy_file: Path, argv, fragments):
    dst = legacy_file.parent / "out.pt"
    code, out, err = run_cli("migrate", legacy_file, dst, *argv)
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {legacy_file}: ", *fragments)
    assert not dst.exists()


def test_dst_in_a_missing_directory_is_refused(legacy_file: Path):
    dst = legacy_file.parent / "no" / "such" / "dir" / "out.pt"
    code, _, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules")
    assert code == 2
    assert_one_error_line(err, f"error: {dst}: directory", "does not exist")


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_dst_with_a_trailing_separator_names_a_directory_and_is_refused(legacy_file: Path, force: bool):
    out = legacy_file.parent / "out"
    out.mkdir()
    dst = f"{out}{os.sep}newdir{os.sep}"
    code, stdout, err = run_cli("migrate", legacy_file, dst, "--to", "skip_modules",
                                *(["--force"] if force else []))
    assert code == 2 and stdout == ""
    assert_one_error_line(err, f"error: {dst}: ends with {os.sep!r}, so it names a directory, not a file")
    assert list(out.iterdir()) == []  # no file named newdir


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_dst_that_is_a_directory_says_so_straight_away(legacy_file: Path, force: bool):
    existing = legacy_file.parent / "existing_dir"
    existing.mkdir()
    (existing / "keep.txt").write_text("keep")
    code, out, err = run_cli("migrate", legacy_file, existing, "--to", "skip_modules",
                             *(["--force"] if force else []))
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {existing}: is a directory")
    assert "--force" not in err  # the hint would mislead: --force cannot help
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_empty_dst_is_refused(legacy_file: Path):
    code, out, err = run_cli("migrate", legacy_file, "", "--to", "skip_modules")
    assert code == 2 and out == ""
    assert_one_error_line(err, "error: empty path ('') given for the output")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_dst_fifo_is_refused_even_with_force_and_stays_a_fifo(legacy_file: Path):
    fifo = legacy_file.parent / "pipe.pt"
    os.mkfifo(fifo)
    for extra in ([], ["--force"]):
        code, out, err = run_cli("migrate", legacy_file, fifo, "--to", "skip_modules", *extra)
        assert code == 2 and out == ""
        assert_one_error_line(err, f"error: {fifo}: is a FIFO (named pipe), not a regular file")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dst_symlink_needs_force_and_then_only_the_link_is_replaced(legacy_file: Path):
    victim = legacy_file.parent / "victim.pt"
    victim.write_bytes(b"what the link points to")
    link = legacy_file.parent / "link.pt"
    link.symlink_to(victim)
    code, out, err = run_cli("migrate", legacy_file, link, "--to", "skip_modules")
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {link}: is a symbolic link (to '{victim}')", "use --force")
    assert link.is_symlink()
    before = file_state(victim)
    code, out, err = run_cli("migrate", legacy_file, link, "--to", "skip_modules", "--force")
    assert code == 0 and err == ""
    assert not link.is_symlink() and len(load_checkpoint(link)) == 116
    assert file_state(victim) == before


# --- save -> migrate -> load -> save sequences ---------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a file on disk must hold."""

    layout: str
    shared: dict[str, torch.Tensor]  # canonical key -> tensor, for modules every layout keeps
    function_movable: bool  # can go to legacy under preserve-function (no live shortcuts)


def shared_of(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    spec = state_dict_layout(layout)
    canonical = {spec.canonical_key(k): v for k, v in state.items()}
    return {k: v for k, v in canonical.items() if k.partition(".")[0] in SHARED_MODULES}


class SaveMigrateLoad(RuleBasedStateMachine):
    """Checkpoints written by users and by migrate; every one must hold what its history says."""

    files = Bundle("files")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="migrate-machine-"))
        self.expected: dict[Path, Expected] = {}
        self.count = 0

    def new_path(self, suffix: str = ".pt") -> Path:
        self.count += 1
        return self.dir / f"checkpoint{self.count}{suffix}"

    def check(self, path: Path) -> None:
        state = load_checkpoint(path)
        expected = self.expected[path]
        assert detect_layout(state) == expected.layout
        shared = shared_of(state, expected.layout)
        assert shared.keys() == expected.shared.keys()
        assert all(torch.equal(shared[k], v) for k, v in expected.shared.items())

    USER_FILES = {
        "layout": st.sampled_from(["legacy", "skip_modules"]),
        "seed": st.integers(0, 99),
        "wrapper": st.sampled_from(["plain", "state_dict", "model", "module."]),
        "variant": st.booleans(),
    }

    @initialize(target=files, **USER_FILES)
    def first_user_file(self, **kwargs):
        return self.user_saves(**kwargs)

    @rule(target=files, **USER_FILES)
    def user_saves(self, layout, seed, wrapper, variant):
        # variant: a legacy state_dict saved after a forward (no skip.*), or gated skip_modules shortcuts
        state = random_state(layout, seed, gated=variant and layout == "skip_modules")
        if variant and layout == "legacy":
            state = {k: v for k, v in state.items() if not k.startswith("skip.")}
        payload = {
            "plain": state, "state_dict": {"state_dict": state, "step": 3}, "model": {"model": state},
            "module.": {f"module.{k}": v for k, v in state.items()},
        }[wrapper]
        path = self.new_path()
        torch.save(payload, path)
        self.expected[path] = Expected(layout, shared_of(state, layout), layout == "legacy" or variant)
        return path

    @rule(target=files, src=files, to=st.sampled_from(["legacy", "skip_modules"]),
          policy=st.sampled_from(POLICIES), suffix=st.sampled_from([".pt", ".safetensors"]))
    def migrate(self, src, to, policy, suffix):
        before = file_state(src)
        dst = self.new_path(suffix)
        code, out, err = run_cli("migrate", src, dst, "--to", to, "--policy", policy)
        source = self.expected[src]
        assert file_state(src) == before
        if policy == "preserve-function" and to == "legacy" and not source.function_movable:
            assert code == 2 and not dst.exists()
            assert_one_error_line(err, "are live shortcuts")
            return multiple()
        assert code == 0 and err == "" and out.endswith(f"wrote {dst} ({len(load_checkpoint(dst))} keys)\n")
        # Only preserve-function writes zero-gated shortcuts; legacy files have none to keep.
        same = source.layout == to
        movable = to == "legacy" or (source.function_movable if same else policy == "preserve-function")
        self.expected[dst] = Expected(to, source.shared, movable)
        self.check(dst)
        return dst

    @rule(target=files, src=files)
    def load_and_save(self, src):
        dst = self.new_path()
        save_checkpoint(load_checkpoint(src), dst)
        self.expected[dst] = self.expected[src]
        self.check(dst)
        return dst

    @rule(src=files, dst=files)
    def migrate_onto_an_existing_file_is_refused(self, src, dst):
        before = file_state(dst)
        code, _, err = run_cli("migrate", src, dst, "--to", "skip_modules")
        assert code == 2
        assert_one_error_line(err, "is the source checkpoint" if src == dst else "already exists")
        assert file_state(dst) == before

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


SaveMigrateLoad.TestCase.settings = settings(
    settings.default, max_examples=max(3, settings.default.max_examples // 3), stateful_step_count=6
)
TestSaveMigrateLoad = SaveMigrateLoad.TestCase


# --- any registered variant: a team's production checkpoint ------------------------------------

def production_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A training loop's file: ``{"model", "epoch", "optimizer"}``, the model seeded; returns its state."""
    state = {k: v.clone() for k, v in seed_weights(AsvDetector(), seed).state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(len(state)))}]}
    torch.save({"model": state, "epoch": 3, "optimizer": optimizer}, path)
    return state


def outputs(model: torch.nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    copied = copy.deepcopy(model).train(mode == "train")  # running statistics stay put
    with torch.no_grad():
        return copied(x)


def test_a_production_checkpoint_migrates_to_the_refactor_with_the_same_function(tmp_path: Path, registered):
    src, dst = tmp_path / "prod.pt", tmp_path / "out.pt"
    state = production_checkpoint(src, seed=21)
    code, out, err = run_cli("--registry", TEAM_REGISTRY, "migrate", src, dst,
                              "--to", "asv_refactor")
    assert code == 0, err
    # asv_renamed has asv's keys too, but it is held to asv (its reference): read as asv.
    assert err == f"{src}: its keys are asv's own state_dict (detected; --from asv says so)\n"
    assert out.splitlines() == [
        f"{src}: unwrapped 'model' (ignored: epoch, optimizer)",
        f"asv -> asv_refactor: every tensor matched by structure ({len(state)} keys), outputs proven "
        "bit-identical in train and eval mode",
        f"wrote {dst} ({len(state)} keys)",
    ]
    production = AsvDetector()
    production.load_state_dict(state)
    refactor = RefactoredDetector()
    refactor.load_state_dict(load_checkpoint(dst), strict=True)
    x = spec("asv_refactor").example(2, seed=21)
    for mode in ("train", "eval"):
        assert_close(outputs(refactor, x, mode), outputs(production, x, mode), EXACT, msg=mode)


def test_keys_that_fit_unrelated_variants_need_from(tmp_path: Path, registered):
    """Two variants with the same state_dict and no reference between them (a narrower GRU than
    asv's, so no other registered variant fits): only --from can say which one SRC came from."""
    registry = tmp_path / "twins.toml"
    registry.write_text("".join(
        f'[tool.rawnet2-harness.variants.{name}]\nfactory = "tests.team_models.asv_detector:{factory}"\n'
        f'kwargs = {{ d_args = {{ gru_node = 12 }} }}\ninput_shape = [8000]\nmin_length = {MIN_SAMPLES}\n'
        'output = "logits"\n\n' for name, factory in (("twin_a", "AsvDetector"), ("twin_b", "AsvDetector"),
                                                      ("refactor", "RefactoredDetector"))))
    src, dst = tmp_path / "prod.pt", tmp_path / "out.pt"
    torch.save({"model": AsvDetector({"gru_node": 12}).state_dict(), "epoch": 1}, src)
    refactor = ["--to", "refactor"]
    code, out, err = run_cli("--registry", registry, "migrate", src, dst, *refactor)
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {src}: its keys fit the state_dicts of 2 registered variants "
                               "(twin_a, twin_b): name the one it came from with --from")
    assert not dst.exists()
    code, out, err = run_cli("--registry", registry, "migrate", src, dst, *refactor, "--from", "twin_b")
    assert code == 0 and err == "" and len(load_checkpoint(dst)) == 114  # --from: nothing to detect
    assert "twin_b -> refactor: every tensor matched by structure" in out


@pytest.fixture
def team_copy(tmp_path: Path) -> dict[str, Path]:
    """The team's model file and registry copied under a module name of this test's own (a module
    imported once stays cached, so every test gets a file that nothing else imported), weights and a
    --kwargs file beside them: every file a migration reads, safe to point DST at."""
    module = f"team_{tmp_path.name}".replace("-", "_")
    contract = f'input_shape = [8000]\nmin_length = {MIN_SAMPLES}\noutput = "logits"\n'
    source = tmp_path / f"{module}.py"
    shutil.copyfile(TEAM_MODELS / "asv_detector.py", source)
    weights = tmp_path / "refactor.pt"
    torch.save(RefactoredDetector().state_dict(), weights)
    registry = tmp_path / "team.toml"
    registry.write_text(
        f'[tool.rawnet2-harness.variants.prod]\nfactory = "{module}:AsvDetector"\n{contract}\n'
        f'[tool.rawnet2-harness.variants.refactor]\nfactory = "{module}:RefactoredDetector"\n{contract}'
        'weights = "refactor.pt"\nreference = "prod"\n')
    kwargs = tmp_path / "kwargs.json"
    kwargs.write_text("{}")
    checkpoint = tmp_path / "prod.pt"
    production_checkpoint(checkpoint, seed=23)
    return {"registry": registry, "factory source": source, "weights": weights, "kwargs": kwargs,
            "checkpoint": checkpoint}


@pytest.mark.parametrize("spelling", ["path", "dotted", "hardlink"])
@pytest.mark.parametrize("read", ["registry", "factory source", "weights", "kwargs"])
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_dst_that_is_any_file_the_run_reads_is_refused(team_copy: dict[str, Path], registered, read: str,
                                                       spelling: str, force: bool):
    victim = team_copy[read]
    dst = {
        "path": lambda: victim,
        "dotted": lambda: victim.parent / "." / victim.name,
        "hardlink": lambda: os.link(victim, victim.parent / "hard.pt") or victim.parent / "hard.pt",
    }[spelling]()
    before = {p: file_state(p) for p in victim.parent.iterdir() if p.is_file()}
    code, out, err = run_cli("--registry", team_copy["registry"], "migrate", team_copy["checkpoint"], dst,
                              "--to", "refactor", "--kwargs", f"@{team_copy['kwargs']}",
                              *(["--force"] if force else []))
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {dst}: is ", str(victim.name), "write the migration to a new file")
    assert {p: file_state(p) for p in victim.parent.iterdir() if p.is_file()} == before  # nothing written
