"""The export cache: a key per content, entries checked on load, atomic writes, and ``score`` paying
for an export once (``harness.core.export_cache``, used by ``harness.rawnet2.deploy``).

Every test runs with its own temporary cache directory (``RAWNET2_HARNESS_CACHE_DIR``), so
nothing here reads or writes the user's cache. Score runs use ``tests.helpers.TinyDetector``: its
export costs a fraction of a second where a RawNet2's costs seconds.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.__main__ import main
from harness.core.errors import HarnessError
from harness.core.export_cache import (
    CACHE_DIR_ENV,
    ENTRY_SUFFIX,
    ExportCache,
    cache_key,
    default_cache_dir,
    export_key_parts,
    open_cache,
    state_dict_sha256,
)
from harness.core.onnx import export_onnx
from tests.helpers import SCORE_TINY, TINY, TINY_FILES, TinyDetector, needs_onnx


@pytest.fixture(autouse=True)
def cache_dir(own_export_cache: Path) -> Path:
    """Every test here has its own cache directory: the cache starts empty."""
    return own_export_cache


def parts(**changes: object) -> dict[str, object]:
    base = dict(name="asv", factory="asv_detector:AsvDetector", kwargs={"channels": 20},
                source_sha256="0" * 64, weights={"file_sha256": "1" * 64, "policy": "preserve-function"},
                form="onnxruntime", opset=17, input_shape=(8000,), min_length=2315, verified_length=64600,
                exporter_sha256=None, settings=None)
    return export_key_parts(**{**base, **changes})


# --- the key -----------------------------------------------------------------------------------------

# One changed value per key part: each must give another key.
CHANGED = {
    "name": "asv2", "factory": "asv_detector:RefactoredDetector", "kwargs": {"channels": 21},
    "source_sha256": "2" * 64, "weights": {"file_sha256": "1" * 64, "policy": "preserve-weights"},
    "form": "onnxruntime-int8", "opset": 18, "input_shape": (1, 8000), "min_length": 2316,
    "verified_length": 16000, "exporter_sha256": "3" * 64, "settings": {"per_channel": True},
}


@given(st.sampled_from(sorted(CHANGED)))
def test_the_key_changes_with_every_part(part: str):
    assert cache_key(parts(**{part: CHANGED[part]})) != cache_key(parts())


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.none(), max_size=6))
def test_equal_parts_give_one_key_whatever_their_order(kwargs: dict[str, object]):
    reordered = dict(reversed(list(kwargs.items())))
    assert cache_key(parts(kwargs=kwargs)) == cache_key(parts(kwargs=reordered))
    assert len(cache_key(parts(kwargs=kwargs))) == 64


def test_the_key_reads_versions_and_format(monkeypatch: pytest.MonkeyPatch):
    before = cache_key(parts())
    monkeypatch.setattr("harness.core.export_cache.versions", lambda: {"torch": "0.0-other"})
    assert cache_key(parts()) != before
    monkeypatch.setattr("harness.core.export_cache.CACHE_FORMAT", 0)
    assert parts()["cache_format"] == 0


def test_parts_that_are_not_plain_json_get_no_key():
    with pytest.raises(HarnessError, match="not plain JSON"):
        cache_key(parts(kwargs={"activation": object()}))


def test_the_weights_hash_sees_one_changed_value():
    model = TinyDetector()
    before = state_dict_sha256(model)
    assert state_dict_sha256(model) == before
    with torch.no_grad():
        model.head.bias[0] = torch.nextafter(model.head.bias[0], torch.tensor(1.0))
    assert state_dict_sha256(model) != before


def test_the_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert default_cache_dir() == Path(os.environ[CACHE_DIR_ENV])
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "rawnet2-harness"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "rawnet2-harness"


# --- entries -----------------------------------------------------------------------------------------


def stored(cache_dir: Path, data: bytes = b"graph bytes") -> tuple[ExportCache, str]:
    cache = ExportCache(cache_dir)
    key = cache_key(parts())
    assert cache.put(key, data, parts())
    return cache, key


def test_an_entry_comes_back_as_stored_in_a_private_directory(cache_dir: Path):
    cache, key = stored(cache_dir)
    assert cache.get(key) == b"graph bytes"
    assert cache.get(cache_key(parts(opset=18))) is None
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.path(key).stat().st_mode) == 0o600
    assert sorted(os.listdir(cache_dir)) == [f"{key}{ENTRY_SUFFIX}"]  # no temp file left


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _no_header(path: Path) -> None:
    path.write_bytes(path.read_bytes().partition(b"\n")[0][:40])


def _garbage_header(path: Path) -> None:
    path.write_bytes(b"\xff{not json\n" + path.read_bytes().partition(b"\n")[2])


def _foreign(path: Path) -> None:
    other = ExportCache(path.parent)
    key = cache_key(parts(opset=18))
    other.put(key, b"graph bytes", parts(opset=18))
    os.replace(other.path(key), path)


def _symlink(path: Path) -> None:
    target = path.parent.parent / "elsewhere.entry"
    os.replace(path, target)
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("spoil", [_flip_last_byte, _truncate, _no_header, _garbage_header, _foreign,
                                   _symlink, _directory, _fifo])
def test_a_spoiled_entry_is_deleted_and_missed_with_a_warning(cache_dir: Path, spoil):
    warnings: list[str] = []
    cache, key = stored(cache_dir)
    cache.warn = warnings.append
    spoil(cache.path(key))
    assert cache.get(key) is None
    assert len(warnings) == 1 and "\n" not in warnings[0] and key in warnings[0], warnings
    assert not os.path.lexists(cache.path(key))
    assert cache.put(key, b"graph bytes", parts()) and cache.get(key) == b"graph bytes"  # rebuilt


def test_an_entry_is_never_written_outside_the_directory(cache_dir: Path, tmp_path: Path):
    cache, key = stored(cache_dir)
    outside = sorted(p.name for p in tmp_path.iterdir())
    for bad_key in ("../escape", f"/{key[1:]}", key.upper(), ""):
        with pytest.raises(HarnessError, match="not a SHA-256"):
            cache.put(bad_key, b"x", parts())
    with pytest.raises(HarnessError, match="not the key of the parts"):
        cache.put(key, b"x", parts(opset=18))
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert all(p.parent == cache_dir for p in cache_dir.rglob("*"))


def test_two_writers_of_one_key_both_leave_a_whole_entry(cache_dir: Path):
    """Writers race on one key while a reader reads: every read is a miss or the whole entry,
    never a warning (a half-written entry would be one)."""
    data, key, warnings = os.urandom(1 << 20), cache_key(parts()), []
    cache = ExportCache(cache_dir, warn=warnings.append)
    seen: list[bytes | None] = []
    start = threading.Barrier(5)

    def write() -> None:
        start.wait()
        for _ in range(5):
            assert cache.put(key, data, parts())

    def read() -> None:
        start.wait()
        seen.extend(cache.get(key) for _ in range(40))

    threads = [threading.Thread(target=write) for _ in range(4)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings == []
    assert all(got in (None, data) for got in seen)
    assert cache.get(key) == data
    assert sorted(os.listdir(cache_dir)) == [f"{key}{ENTRY_SUFFIX}"]


# --- the directory -----------------------------------------------------------------------------------


def _a_file(path: Path) -> None:
    path.write_text("not a directory")


def _a_link(path: Path) -> None:
    (path.parent / "real").mkdir(mode=0o700)
    path.symlink_to(path.parent / "real")


def _writable_by_others(path: Path) -> None:
    path.mkdir()
    path.chmod(0o777)


@pytest.mark.parametrize(("make", "says"), [(_a_file, "is not a directory"), (_a_link, "is a symbolic link"),
                                            (_writable_by_others, "writable by others")])
def test_a_named_directory_the_cache_cannot_use_is_refused(cache_dir: Path, make, says: str):
    make(cache_dir)
    with pytest.raises(HarnessError, match=says) as caught:
        open_cache(cache_dir)
    assert "\n" not in str(caught.value) and str(cache_dir) in str(caught.value)
    with pytest.raises(HarnessError, match=says):
        open_cache(None)  # named by the environment variable: the user's choice too


def test_an_unusable_default_location_only_costs_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(CACHE_DIR_ENV)
    (tmp_path / "xdg").write_text("a file where XDG_CACHE_HOME should be a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    warnings: list[str] = []
    assert open_cache(None, warn=warnings.append) is None
    assert len(warnings) == 1 and "going on without an export cache" in warnings[0]
    assert open_cache(None, enabled=False) is None


# --- score -------------------------------------------------------------------------------------------


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the exports ``score`` makes (one entry per call of export_onnx). These runs take the
    model path every time: no request record is left, none is read (tests/test_score_cached.py
    covers the run without torch)."""
    from harness.rawnet2 import deploy, score_cached, score_command

    monkeypatch.setattr(score_cached, "score_from_cache", lambda args: None)
    monkeypatch.setattr(score_command, "remember", lambda *args, **kwargs: None)

    calls: list[int] = []
    real = deploy.export_onnx

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(deploy, "export_onnx", counted)
    return calls


def score(capsys: pytest.CaptureFixture, *options: str) -> tuple[int, str, str]:
    code = main([*SCORE_TINY, *options])
    out, err = capsys.readouterr()
    return code, out, err


@needs_onnx
def test_a_second_score_run_takes_the_cached_export(cache_dir: Path, exports: list[int], capsys):
    code, first, err = score(capsys)
    assert code == 0 and len(exports) == 1 and "as onnxruntime (exported, verified" in err
    assert len(list(cache_dir.glob(f"*{ENTRY_SUFFIX}"))) == 1
    code, second, err = score(capsys)
    assert code == 0 and len(exports) == 1, "the second run exported again"
    assert "as onnxruntime (cached export" in err
    assert second == first


@needs_onnx
def test_a_spoiled_entry_is_exported_again_in_a_score_run(cache_dir: Path, exports: list[int], capsys):
    score(capsys)
    (entry,) = cache_dir.glob(f"*{ENTRY_SUFFIX}")
    _flip_last_byte(entry)
    code, _, err = score(capsys)
    assert code == 0 and len(exports) == 2
    assert "corrupt" in err and "deleted" in err and "(exported, verified" in err
    assert score(capsys)[0] == 0 and len(exports) == 2  # the rebuilt entry is good


@needs_onnx
def test_bytes_onnx_runtime_cannot_load_are_exported_again(cache_dir: Path, exports: list[int], capsys):
    score(capsys)
    (entry,) = cache_dir.glob(f"*{ENTRY_SUFFIX}")
    key, header = entry.name.removesuffix(ENTRY_SUFFIX), entry.read_bytes().partition(b"\n")[0]
    ExportCache(cache_dir).put(key, b"not an onnx graph", json.loads(header)["parts"])
    code, _, err = score(capsys)
    assert code == 0 and len(exports) == 2 and "does not load in ONNX Runtime" in err


@needs_onnx
def test_a_cached_export_unlike_eager_is_evicted(cache_dir: Path, exports: list[int], capsys):
    """An entry whose graph is another model's (a change its key cannot see) fails score's first-batch
    check: the run is refused as without a cache, and the entry is gone for the next run."""
    score(capsys)
    (entry,) = cache_dir.glob(f"*{ENTRY_SUFFIX}")
    key, header = entry.name.removesuffix(ENTRY_SUFFIX), entry.read_bytes().partition(b"\n")[0]
    other = TinyDetector()
    with torch.no_grad():
        other.head.bias.fill_(3.0)
    example = torch.randn(2, 1, 16000)
    graph = export_onnx(other, example, [example]).onnx_bytes
    ExportCache(cache_dir).put(key, graph, json.loads(header)["parts"])
    code, out, err = score(capsys)
    assert code == 2 and out == "" and "differs from eager" in err and "deleted" in err
    assert not entry.exists()
    assert score(capsys)[0] == 0 and len(exports) == 2


@needs_onnx
def test_no_cache_neither_reads_nor_writes(cache_dir: Path, exports: list[int], capsys):
    assert score(capsys, "--no-cache")[0] == 0
    assert not cache_dir.exists()
    score(capsys)  # fills the cache
    listing = {p: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    code, _, err = score(capsys, "--no-cache")
    assert code == 0 and len(exports) == 3 and "(exported, verified" in err
    assert {p: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == listing


@needs_onnx
def test_cache_dir_names_the_directory(tmp_path: Path, cache_dir: Path, exports: list[int], capsys):
    named = tmp_path / "named"
    assert score(capsys, "--cache-dir", str(named))[0] == 0
    assert len(list(named.glob(f"*{ENTRY_SUFFIX}"))) == 1 and not cache_dir.exists()


def test_an_empty_cache_dir_is_refused():
    with pytest.raises(HarnessError, match="--cache-dir ''"):
        open_cache("")


def test_a_cache_dir_that_is_a_file_refuses_the_run(tmp_path: Path, capsys):
    (tmp_path / "file").write_text("x")
    code, out, err = score(capsys, "--cache-dir", str(tmp_path / "file"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "is not a directory" in err and "--no-cache" in err


def test_an_eager_run_opens_no_cache(cache_dir: Path, capsys):
    assert main(["score", *TINY_FILES, "--variant", TINY, "--score", "probability", "--form", "eager"]) == 0
    assert not cache_dir.exists()
