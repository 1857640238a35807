"""The open registry: a team's model goes under the gate without editing the harness.

Models "outside the repo" are written to a temporary directory as a module of their own
and registered through a ``pyproject.toml`` table, ``harness.register`` or ``MODULE:ATTR``
on the command line. Every command takes them; a departure from the declared reference is
found and named; the test suite's coverage follows the registry.
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

from harness import HarnessError, build, get_audio_model, legacy_effective
from harness.__main__ import main
from harness.core.introspect import describe
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.checkpoints import save_checkpoint
from harness.rawnet2.equivalence import compare_specs, seed_weights
from harness.rawnet2.golden import golden_sources
from harness.rawnet2.registry import (
    SUBJECTS,
    VARIANTS,
    load_registry_file,
    register,
    resolve,
    spec,
    unregister,
)
from harness.report import verdict
from harness.report.build import QUICK, _departures, _reference_rows
from tests.helpers import AUDIO, REPO, VARIANT_FIXTURES, restored_registry, variants

# skip_modules' function, nested otherwise: stages of (branch, shortcut), the shortcut computed
# before the branch, other names everywhere. {slope} is the LeakyReLU slope of stage 3's branch.
PROD_MODEL = '''
import torch
import torch.nn as nn

CHANNELS = ((32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2))


def _conv_bn(cin, cout, kernel, stride):
    return [nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2), nn.BatchNorm1d(cout)]


class Stage(nn.Module):
    def __init__(self, cin, cout, stride, slope):
        super().__init__()
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if (cin, stride) != (cout, 1) else None
        self.branch = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.LeakyReLU(0.3),
                                    *_conv_bn(cout, cout, 3, 1), nn.LeakyReLU(slope))

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.branch(x) + identity


class ProdDetector(nn.Module):
    def __init__(self, num_classes=1):
        super().__init__()
        self.frontend = nn.Sequential(*_conv_bn(1, 32, 3, 1), nn.LeakyReLU(0.3))
        self.stages = nn.ModuleList(Stage(cin, cout, s, {slope} if i == 2 else 0.3)
                                    for i, (cin, cout, s) in enumerate(CHANNELS))
        self.head = nn.ModuleDict({{"hidden": nn.Linear(256, 64), "out": nn.Linear(64, num_classes)}})

    def forward(self, x):
        x = self.frontend(x)
        for stage in self.stages:
            x = stage(x)
        x = nn.functional.adaptive_avg_pool1d(x, 1).squeeze(-1)
        x = nn.functional.leaky_relu(self.head["hidden"](x), 0.3)
        return torch.sigmoid(self.head["out"](x))
'''


def write_module(directory: Path, name: str, slope: float = 0.3) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(PROD_MODEL.format(slope=slope)))
    return f"{name}:ProdDetector"


def write_registry(directory: Path, tables: dict[str, dict[str, str]]) -> Path:
    lines = []
    for name, fields in tables.items():
        lines.append(f"[tool.rawnet2-harness.variants.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
        lines.append("expected_defects = {}")
    path = directory / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A team's checkout: fixture_prod (skip_modules' function) and fixture_buggy (one slope 0.2),
    registered from its pyproject.toml; unregistered afterwards so other tests see only what the
    run registered (names no team would pick, so a run with a team's own registry does not clash)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    prod = write_module(tmp_path, "team_prod")
    buggy = write_module(tmp_path, "team_buggy", slope=0.2)
    path = write_registry(tmp_path, {
        "fixture_prod": {"factory": prod, "reference": "skip_modules", "output": "probability"},
        "fixture_buggy": {"factory": buggy, "reference": "skip_modules", "output": "probability"},
    })
    specs = load_registry_file(path)
    yield {s.name: s for s in specs}
    for s in specs:
        unregister(s.name)


def test_a_pyproject_table_registers_a_model_with_everything_a_built_in_gets(team):
    prod = team["fixture_prod"]
    assert SUBJECTS["fixture_prod"] is prod and "fixture_prod" in VARIANTS
    assert prod.origin.endswith("pyproject.toml")
    assert type(build("fixture_prod")).__name__ == "ProdDetector"
    assert golden_sources("fixture_prod") == {"train": "skip_modules", "eval": "skip_modules"}  # no file
    x = torch.randn(2, 1, 600, generator=torch.Generator().manual_seed(1))
    result = compare_specs(spec("skip_modules"), prod, x)
    assert result.equivalent and [m.max_abs_diff for m in result.modes] == [0.0, 0.0]


def test_a_departure_from_the_reference_is_named_and_means_do_not_ship(team):
    x = torch.randn(2, 1, 600, generator=torch.Generator().manual_seed(1))
    result = compare_specs(spec("skip_modules"), team["fixture_buggy"], x)
    assert not result.equivalent
    for mode in result.modes:
        assert "stages.2" in mode.first_divergence or "stages.3" in mode.first_divergence, mode
    rows = _reference_rows(["fixture_buggy"], QUICK, lambda message: None)
    departures = _departures("fixture_buggy", rows)
    assert set(departures) == {"train", "eval"}
    structure = describe(build("fixture_buggy"), x)
    judged = verdict(structure, {"registration": "pass"}, {}, departures)
    assert not judged.ship and "computes another function than its reference" in judged.line


def test_compare_cli_exit_codes_and_json(team, capsys):
    argv = ["compare", "skip_modules", "basic_blocks", "--input-shape", "2,1,600", "--format", "json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["equivalent"] is True and len(data["mapping"]) == 116
    assert [(m["mode"], m["max_abs_diff"]) for m in data["modes"]] == [("train", 0.0), ("eval", 0.0)]
    assert main(["compare", "skip_modules", "fixture_buggy", "--input-shape", "2,1,600"]) == 1
    out = capsys.readouterr().out
    # The slope sits after stage 2's last conv: the next paired module is the first whose output parts.
    assert "DIFFERENT; first divergence: ref res_block4.0 vs other stages.3.branch.0" in out
    assert out.rstrip().endswith("not equivalent")
    assert main(["compare", "skip_modules", "legacy_effective", "--input-shape", "2,1,600"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no pairing fits" in err and err.count("\n") == 1


def test_migrate_to_a_module_attr_gives_exactly_legacy_effective(team, tmp_path, capsys):
    legacy = seed_weights(legacy_effective(), 3)
    source = tmp_path / "legacy.pt"
    save_checkpoint(legacy.state_dict(), source)
    out = tmp_path / "prod.pt"
    # preserve-function: the legacy function has no shortcut on blocks 2/4/6, prod has projections:
    # they are added zero-gated, so prod computes exactly what legacy computed.
    assert main(["migrate", str(source), str(out), "--to", "team_prod:ProdDetector"]) == 0
    assert "matched by structure" in capsys.readouterr().out
    model = get_audio_model("team_prod:ProdDetector", out)
    x = torch.randn(2, 1, 900, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(x), legacy.eval()(x), EXACT, "prod holding the migrated legacy weights")


def test_get_audio_model_returns_the_variants_own_class_not_its_layouts():
    from fixed.skip_modules import RawNet2

    class Renamed(RawNet2):
        pass

    register("renamed", Renamed, layout="skip_modules", reference="skip_modules")
    try:
        state = seed_weights(build("skip_modules"), 1).state_dict()
        assert type(get_audio_model("renamed", state)) is Renamed
    finally:
        unregister("renamed")


@pytest.mark.parametrize(("fields", "message"), [
    ({"output": "scores"}, "output 'scores' is not one of probability, logits, any"),
    ({"reference": "nothing"}, "reference 'nothing' is not registered"),
    ({"forms": ("tensorrt",)}, "forms ['tensorrt'] are not among"),
    ({"reference_modes": ("inference",)}, "reference_modes ['inference'] are not among train, eval"),
])
def test_register_refuses_a_bad_spec_naming_the_field(fields, message):
    with pytest.raises(HarnessError, match=message.replace("[", r"\[").replace("]", r"\]")):
        register("bad", "fixed.skip_modules:RawNet2", **fields)
    assert "bad" not in SUBJECTS


def test_register_refuses_a_taken_name_unless_replaced():
    with pytest.raises(HarnessError, match="'skip_modules' is already registered"):
        register("skip_modules", "fixed.basic_blocks:RawNet2")
    with pytest.raises(HarnessError, match="built in and cannot be unregistered"):
        unregister("skip_modules")


def _pooling_model(*example_shape: int) -> type[nn.Module]:
    """A model class whose forward takes only ``[B, *example_shape[:-1], T]``; every class this
    returns has the same repr, so only the registry can tell a redefined variant's apart."""

    class Pooling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != len(example_shape) + 1:
                raise ValueError(f"expected [B, {len(example_shape)} axes], got {list(x.shape)}")
            return torch.sigmoid(self.fc(x.reshape(len(x), -1).mean(dim=1, keepdim=True)))

    return Pooling


@pytest.mark.parametrize("redefine", ["unregister", "replace"])
def test_a_redefined_variant_gets_its_own_input_contract_not_a_cached_one(redefine: str):
    first, second = _pooling_model(1, 16_000), _pooling_model(16_000)
    assert repr(first) == repr(second)  # what the cached contracts are keyed by cannot tell them apart
    with restored_registry():
        assert register("reshaped", first).input_contract().shape == (1, 16_000)
        if redefine == "unregister":
            unregister("reshaped")
        register("reshaped", second, replace=redefine == "replace")
        assert spec("reshaped").input_contract().shape == (16_000,)


def test_pyproject_errors_are_one_line_naming_file_and_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.rawnet2-harness.variants.x]\nfactory = "a:b"\nweigths = "w.pt"\n')
    with pytest.raises(HarnessError, match=r"variants\.x\]: unknown key\(s\) weigths; known: factory"):
        load_registry_file(path)
    path.write_text("[tool.rawnet2-harness.variants.x]\nreference = 'skip_modules'\n")
    with pytest.raises(HarnessError, match="'factory' \\(MODULE:ATTR\\) is required"):
        load_registry_file(path)
    path.write_text("not toml [")
    with pytest.raises(HarnessError, match="not valid TOML: TOMLDecodeError"):
        load_registry_file(path)
    assert "x" not in SUBJECTS


def test_a_factory_calling_sys_exit_is_a_usage_error_never_a_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "quitter.py").write_text("import sys\ndef build(**kwargs):\n    sys.exit(0)\n")
    assert main(["audit", "quitter:build", "--input-shape", "2,1,64"]) == 2
    assert "the factory of quitter:build called sys.exit(0)" in capsys.readouterr().err
    (tmp_path / "quits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    assert main(["compare", "skip_modules", "quits_on_import:X"]) == 2
    assert "called sys.exit(0)" in capsys.readouterr().err


def test_resolve_takes_names_and_module_attrs_with_overrides(tmp_path):
    weights = tmp_path / "w.pt"
    assert resolve("skip_modules") is spec("skip_modules")
    adhoc = resolve("fixed.basic_blocks:RawNet2", kwargs={"num_classes": 3}, weights=weights, output="logits")
    assert (adhoc.name, adhoc.output, adhoc.kwargs, adhoc.reference) == (
        "fixed.basic_blocks:RawNet2", "logits", {"num_classes": 3}, None)
    assert adhoc.weights == os.path.abspath(weights)
    with pytest.raises(HarnessError, match="unknown variant 'resnet': give a registered name"):
        resolve("resnet")


# --- a published-style model, from the command line ----------------------------------------------

PUBLISHED_MODEL = '''
import torch
import torch.nn as nn


class AntiSpoof(nn.Module):
    """Config-dict constructor, [B, T] input, (hidden, logits) output, a dead branch."""

    def __init__(self, config):
        super().__init__()
        channels, hidden = config["channels"], config["hidden"]
        self.encoder = nn.Sequential(nn.Conv1d(1, channels, 5, stride=2), nn.BatchNorm1d(channels), nn.ReLU())
        self.proj = nn.Linear(channels, hidden)
        self.classifier = nn.Linear(hidden, config["classes"])
        self.auxiliary = nn.Linear(hidden, 4)  # trained once, no longer used: the dead branch

    def forward(self, waveform):
        h = self.encoder(waveform.unsqueeze(1)).mean(dim=-1)
        hidden = torch.tanh(self.proj(h))
        return hidden, self.classifier(hidden)
'''


def test_a_published_model_is_audited_with_kwargs_weights_and_logits(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "published.py").write_text(textwrap.dedent(PUBLISHED_MODEL))
    config = {"channels": 8, "hidden": 6, "classes": 2}
    (tmp_path / "cfg.json").write_text(json.dumps({"config": config}))
    import published

    torch.manual_seed(7)
    trained = published.AntiSpoof(config)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pt")  # a training-loop wrapper
    argv = ["audit", "published:AntiSpoof", "--kwargs", f"@{tmp_path / 'cfg.json'}", "--weights",
            str(tmp_path / "w.pt"), "--output", "logits", "--input-shape", "3,400", "--format", "json"]
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {check for check, result in report["results"].items() if result == "fail"}
    assert failed == {"gradient_coverage"}, report["findings"]
    assert [f["check"] for f in report["findings"]] == ["gradient_coverage"]
    assert set(report["findings"][0]["paths"]) == {"auxiliary.weight", "auxiliary.bias"}
    assert report["results"]["skip_wiring"] == "n/a"


# --- coverage follows the registry ---------------------------------------------------------------

# Contract tests every variant must appear in, by what its spec says of it (test function names).
# Contracts every registered variant they apply to must reach, even in a run that collects no other.
REQUIRED_CONTRACTS = {
    "variant_name": ("test_audit_equals_declaration",),
    "runnable_name": ("test_outputs_match_golden_file",),
    "referenced_name": ("test_a_variant_with_a_reference_receives_its_weights_proven",),
    "foldable_name": ("test_every_batchnorm_of_a_foldable_variant_is_folded",),
}


def test_every_registered_variant_is_covered_by_every_contract_that_applies(request):
    """A newly registered model is tested or this fails: no contract may silently leave it out.

    Every collected test parametrized by a registry fixture (tests/conftest.py) must hold every
    variant that fixture's predicate admits, and the contracts of ``REQUIRED_CONTRACTS`` must be
    collected for each variant they apply to."""
    if request.config.getoption("keyword") or request.config.getoption("markexpr") or \
            request.config.getoption("deselect") or request.config.getoption("--variant"):
        pytest.skip("a filtered run collects only part of the suite; coverage is checked on full runs")
    seen: dict[tuple[str, str], set[str]] = {}
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for fixture in VARIANT_FIXTURES:
            if fixture in params:
                seen.setdefault((item.originalname, fixture), set()).add(params[fixture])
    collected = {test for test, _ in seen}
    if not collected & {t for tests in REQUIRED_CONTRACTS.values() for t in tests}:
        pytest.skip("none of the contract tests was collected in this run (a single file?)")
    missing = {f"{test} [{fixture}]": sorted(set(variants(fixture)) - names)
               for (test, fixture), names in seen.items() if set(variants(fixture)) - names}
    for fixture, tests in REQUIRED_CONTRACTS.items():
        for test in tests:
            if test in collected and (test, fixture) not in seen and variants(fixture):
                missing[f"{test} [{fixture}]"] = variants(fixture)
    assert not missing, f"registered variants left out of contracts: {missing}"


@pytest.mark.slow
def test_a_team_registry_runs_the_whole_suite_on_its_model(tmp_path):
    """The scratch-checkout story end to end: pytest --registry with prod passes every test
    collected for it; with buggy (one slope changed) it fails."""
    write_module(tmp_path, "team_prod")
    write_module(tmp_path, "team_buggy", slope=0.2)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Names no test function contains, so -k selects exactly the tests collected for the variant.
    for name, factory, expected in (("teamprod", "team_prod:ProdDetector", 0),
                                    ("teambuggy", "team_buggy:ProdDetector", 1)):
        registry = write_registry(tmp_path, {name: {"factory": factory, "reference": "skip_modules"}})
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-p", "no:xdist", "--registry", str(registry), "-k", name, str(REPO / "tests")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == expected, run.stdout[-3000:]
        assert " passed" in run.stdout


def test_score_takes_a_module_attr_with_kwargs(team, capsys):
    wav = str(AUDIO / "hello.wav")
    # eager: the factory's kwargs are what is under test; the forms are test_score_forms'
    argv = ["score", wav, "--variant", "team_prod:ProdDetector", "--kwargs", '{"num_classes": 1}',
            "--score", "probability", "--form", "eager", "--format", "json"]
    assert main(argv) == 0
    [row] = json.loads(capsys.readouterr().out)["results"]
    assert row["file"] == wav and 0.0 < row["score"] < 1.0
    assert main(["score", wav, "--variant", "team_prod:ProdDetector", "--kwargs", '{"num_classes": "x"']) == 2
    assert "invalid JSON" in capsys.readouterr().err
