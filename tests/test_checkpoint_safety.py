"""Hostile and broken checkpoints: each gives one clear line naming the file, and nothing else happens.

The corpus is built by the tests in ``tmp_path``. Every case goes through the migrate
CLI in-process (``harness.__main__.main``): non-zero exit, one ``error: <file>: ...``
line on stderr, no traceback, nothing written, the source untouched, and a malicious
pickle's payload never runs.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import random
import re
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import HarnessError, build
from harness.__main__ import main
from harness.core.weights import seed_weights
from harness.rawnet2.checkpoints import get_audio_model, load_checkpoint, save_checkpoint
from harness.rawnet2.registry import load_weights
from tests.helpers import snapshot

MARKER = "pwned"  # the file a malicious pickle's payload would create


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: a file appears if the payload ever runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsAShellCommand:
    """Unpickling this calls ``os.system`` (``posix.system``): the marker appears if it ever runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def good_bytes() -> bytes:
    """A small valid checkpoint (zip format)."""
    buffer = io.BytesIO()
    torch.save({"conv1.0.weight": torch.randn(32, 1, 3), "fc2.bias": torch.zeros(1)}, buffer)
    return buffer.getvalue()


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _torch_save(obj_factory: Callable[[Path], object], **kwargs) -> Callable[[Path], None]:
    return lambda path: torch.save(obj_factory(path), path, **kwargs)


def _raw_pickle(obj_factory: Callable[[Path], object]) -> Callable[[Path], None]:
    # Protocol 2, as torch's own legacy format uses: the unpickler gets as far as the global.
    return lambda path: path.write_bytes(pickle.dumps(obj_factory(path), protocol=2))


def _legacy_with(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        state = build("legacy").state_dict()
        change(state)
        torch.save(state, path)

    return make


def _truncated_legacy_format(path: Path) -> None:
    torch.save({"fc2.bias": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-40])


def _safetensors_bytes(cut: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        from safetensors.torch import save

        data = save({"fc2.bias": torch.zeros(100)})
        path.write_bytes(data[:cut] if cut else b"\x10" + b"\0" * 7 + b"{not json at all")

    return make


def _legacy_as(dtype: torch.dtype, *, keys: int | None = None, suffix_safetensors: bool = False,
               ) -> Callable[[Path], None]:
    """A legacy checkpoint whose floating tensors (the first ``keys`` of them, default all) are ``dtype``."""
    def make(path: Path) -> None:
        state = build("legacy").state_dict()
        floating = [k for k, v in state.items() if v.is_floating_point()][:keys]
        state.update({k: (state[k] * 10).to(dtype) for k in floating})
        if suffix_safetensors:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, path)
        else:
            torch.save(state, path)

    return make


_NOT_WEIGHTS = "of a dtype the model cannot hold as weights: "


# name -> (file name, how to make it (None: leave it missing), what the error must say)
CORPUS: dict[str, tuple[str, Callable[[Path], None] | None, str]] = {
    "missing": ("missing.pt", None, "no such file"),
    "directory": ("a_directory", lambda p: p.mkdir(), "is a directory"),
    "empty": ("empty.pt", _write(b""), r"empty file \(0 bytes\)"),
    "truncated_zip": ("truncated.pt", lambda p: p.write_bytes(good_bytes()[:700]), "truncated or corrupt"),
    "truncated_legacy_format": ("truncated_legacy.pt", _truncated_legacy_format, "truncated"),
    "random_bytes": ("random.pt", _write(random.Random(0).randbytes(4096)), "unrecognised format"),
    "random_after_pickle_header": ("random_pickle.pt", _write(b"\x80\x02" + random.Random(1).randbytes(4096)),
                                   "corrupt or not a PyTorch checkpoint|truncated"),
    "text": ("notes.pt", _write(b"epoch 3: loss 0.12\nthis is not a checkpoint\n"), "a text file"),
    "malicious_pickle_zip": ("evil.pt", _torch_save(lambda p: CreatesAFile(p.parent / MARKER)),
                             r"refused: the pickle asks for io\.open"),
    "malicious_pickle_raw": ("evil.pkl", _raw_pickle(lambda p: CreatesAFile(p.parent / MARKER)),
                             r"refused: the pickle asks for io\.open"),
    # torch >= 2.7 says "unsupported GLOBAL posix.system whose module posix is blocked": code, refused.
    "pickle_calls_os_system_zip": ("system.pt", _torch_save(lambda p: RunsAShellCommand(p.parent / MARKER)),
                                   r"refused: the pickle calls (posix|nt)\.system \(code, never run"),
    "pickle_calls_os_system_raw": ("system.pkl", _raw_pickle(lambda p: RunsAShellCommand(p.parent / MARKER)),
                                   r"refused: the pickle calls (posix|nt)\.system \(code, never run"),
    # Named for what it is, never "header too large"; refused, since the name promises no pickle.
    "pickle_named_safetensors": ("renamed.safetensors", lambda p: p.write_bytes(good_bytes()),
                                 r"is a torch pickle checkpoint named \.safetensors \(torch\.save's zip"),
    "legacy_pickle_named_safetensors": (
        "old.safetensors", lambda p: torch.save({"fc2.bias": torch.zeros(1)}, p,
                                                _use_new_zipfile_serialization=False),
        r"is a torch pickle checkpoint named \.safetensors \(torch\.save's pickle"),
    "tensor_payload": ("tensor.pt", _torch_save(lambda p: torch.zeros(3)),
                       "holds a Tensor, not a state_dict"),
    "list_payload": ("list.pt", _torch_save(lambda p: [torch.zeros(3)]), "holds a list, not a state_dict"),
    "non_tensor_values": ("numbers.pt", _torch_save(lambda p: {"conv1.0.weight": 1.5, "fc2.bias": "x"}),
                          r"'conv1.0.weight' holds a float, not a tensor \(and 1 more\)"),
    "empty_state_dict": ("empty_sd.pt", _torch_save(lambda p: {"state_dict": {}, "epoch": 3}),
                         "holds an empty state_dict"),
    "foreign_model": ("resnet.pt", _torch_save(lambda p: nn.Conv2d(3, 8, 3).state_dict()),
                      "not a RawNet2 checkpoint.*'weight'"),
    "mixed_layouts": ("mixed.pt", _legacy_with(lambda s: s.update({"skip2.0.bias": torch.zeros(64)})),
                      "mixes layouts"),
    "misshaped": ("misshaped.pt", _legacy_with(lambda s: s.update({"fc1.weight": s["fc1.weight"].t()})),
                  r"does not fit the legacy layout: "
                  r"mis-shaped fc1.weight \[256, 64\] \(expected \[64, 256\]\)"),
    "missing_keys": ("partial.pt", _legacy_with(lambda s: s.pop("res_block3.0.weight")),
                     "does not fit the legacy layout: missing res_block3.0.weight"),
    "tuple_blocks": ("tuple_blocks.pt", _torch_save(lambda p: build("tuple_blocks").state_dict()),
                     r"cannot convert from tuple_blocks: .*\(97\.1%\)"),
    "symlink_loop": ("loop.pt", lambda p: p.symlink_to(p.name),
                     r"symlink loop \(too many levels of symbolic links\)"),
    "broken_symlink": ("broken.pt", lambda p: p.symlink_to("gone.pt"),
                       r"broken symbolic link \(points to 'gone.pt', which does not exist\)"),
    "int32_safetensors": ("int.safetensors", _legacy_as(torch.int32, suffix_safetensors=True),
                          rf"88 tensors {_NOT_WEIGHTS}'conv1.0.bias' \(int32\), .* \(\+82 more\)"),
    "int64_weight": ("int64.pt", _legacy_as(torch.int64, keys=1),
                     rf"1 tensor {_NOT_WEIGHTS}'conv1.0.weight' \(int64\);"),
    "bool_weights": ("bool.pt", _legacy_as(torch.bool, keys=2),
                     rf"2 tensors {_NOT_WEIGHTS}'conv1.0.weight' \(bool\), 'conv1.0.bias' \(bool\);"),
    "complex_weights": ("complex.pt", _legacy_as(torch.complex64, keys=1), r"'conv1.0.weight' \(complex64\)"),
    "corrupt_safetensors": ("bad.safetensors", _safetensors_bytes(0), "corrupt safetensors file"),
    "truncated_safetensors": ("cut.safetensors", _safetensors_bytes(60), "corrupt safetensors file"),
}
if hasattr(os, "mkfifo"):  # reading a FIFO would block forever
    CORPUS["fifo"] = ("pipe.pt", lambda p: os.mkfifo(p), "not a regular file")

# Cases that fail while reading the file (the rest load, then fail to convert).
UNREADABLE = [
    name for name in CORPUS
    if name not in ("foreign_model", "mixed_layouts", "misshaped", "missing_keys", "tuple_blocks")
]


@pytest.fixture
def corpus_case(request, tmp_path: Path) -> tuple[Path, str]:
    name, make, expected = CORPUS[request.param]
    path = tmp_path / name
    if make is not None:
        make(path)
    return path, expected


@pytest.mark.parametrize("corpus_case", list(CORPUS), indirect=True)
def test_migrate_refuses_a_bad_file_with_one_line_and_changes_nothing(corpus_case, tmp_path, capsys):
    src, expected = corpus_case
    dst = tmp_path / "out.pt"
    before = snapshot(tmp_path)
    code = main(["migrate", str(src), str(dst), "--to", "skip_modules"])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert err.startswith(f"error: {src}: "), err
    assert re.search(expected, err), f"{expected!r} not in {err!r}"
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, the source untouched
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("corpus_case", UNREADABLE, indirect=True)
def test_load_checkpoint_raises_harness_error_naming_the_file(corpus_case, tmp_path):
    path, expected = corpus_case
    with pytest.raises(HarnessError, match=f"^{re.escape(str(path))}: .*({expected})"):
        load_checkpoint(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("case", ["malicious_pickle_zip", "pickle_calls_os_system_zip"])
def test_the_malicious_pickle_is_live_without_weights_only(tmp_path, case: str):
    """The corpus' payloads really run under a plain unpickler, so their absence above means something."""
    path = tmp_path / "evil.pt"
    CORPUS[case][1](path)
    torch.load(path, weights_only=False)
    assert (tmp_path / MARKER).exists()


# Each format's magic, so arbitrary bytes reach every parser, not only the format sniffing.
MAGICS = [b"", b"PK\x03\x04", b"\x80\x02", b"\x20\0\0\0\0\0\0\0{"]


@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_arbitrary_bytes_load_or_raise_harness_error(tmp_path_factory, magic: bytes, data: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.pt"
    path.write_bytes(magic + data)
    try:
        state = load_checkpoint(path)
    except HarnessError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    else:
        assert all(isinstance(v, torch.Tensor) for v in state.values())


@given(st.data())
def test_damaged_checkpoints_load_or_raise_harness_error(tmp_path_factory, data):
    """Truncate or overwrite bytes of a real checkpoint anywhere: never an unhandled exception."""
    blob = bytearray(good_bytes())
    start = data.draw(st.integers(0, len(blob) - 1))
    if data.draw(st.booleans()):
        del blob[start:]
    else:
        patch = data.draw(st.binary(min_size=1, max_size=16))
        blob[start:start + len(patch)] = patch
    path = tmp_path_factory.mktemp("damaged") / "damaged.pt"
    path.write_bytes(bytes(blob))
    try:
        load_checkpoint(path)
    except HarnessError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


# --- writing: atomic, never clobbering --------------------------------------------------------


def test_save_refuses_an_existing_file_without_force(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"keep me")
    with pytest.raises(HarnessError, match="already exists"):
        save_checkpoint({"fc2.bias": torch.zeros(1)}, path)
    assert path.read_bytes() == b"keep me"
    save_checkpoint({"fc2.bias": torch.ones(1)}, path, force=True)
    assert torch.equal(load_checkpoint(path)["fc2.bias"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_a_failed_save_leaves_neither_a_temp_file_nor_a_changed_target(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(HarnessError, match=f"^{path}: cannot write: No space left on device$"):
        save_checkpoint({"fc2.bias": torch.zeros(1)}, path, force=True)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_save_refuses_a_missing_directory(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        save_checkpoint({"fc2.bias": torch.zeros(1)}, tmp_path / "nowhere" / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_save_respects_the_umask_like_any_new_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"fc2.bias": torch.zeros(1)}, path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


# --- a checkpoint holds only its own bytes ----------------------------------------------------------

# A value no weight holds: where a saved file holds it, bytes of the buffer outside the tensors came too.
SENTINEL = 1234.5


def views_of_one_buffer(state: dict[str, torch.Tensor], spare: int, fill: float = SENTINEL,
                        ) -> dict[str, torch.Tensor]:
    """``state`` with every tensor a view into one buffer ``spare`` times the size of all of them, the rest
    of it ``fill``: what a loader that memory-maps or slices one blob hands back."""
    total = sum(v.numel() for v in state.values())
    buffer = torch.full((total * spare,), fill)
    out, offset = {}, 0
    for key, tensor in state.items():
        view = buffer[offset:offset + tensor.numel()].view(tensor.shape)
        view.copy_(tensor)
        out[key], offset = view, offset + tensor.numel()
    return out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_views_of_a_100_mb_buffer_save_to_their_own_size(tmp_path, suffix: str):
    state = {f"layer{i}.weight": torch.randn(64, 64) for i in range(8)}
    own = sum(v.numel() * v.element_size() for v in state.values())  # 128 KiB
    views = views_of_one_buffer(state, spare=(100 << 20) // own)
    assert views["layer0.weight"].untyped_storage().nbytes() >= 100 << 20
    path = tmp_path / f"w{suffix}"
    save_checkpoint(views, path)
    assert path.stat().st_size < own + (16 << 10)  # the tensors and a small header, not 100 MB
    assert struct.pack("<f", SENTINEL) not in path.read_bytes()
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@given(cuts=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8), st.integers(1, 3), st.booleans()),
                     min_size=1, max_size=5),
       suffix=st.sampled_from([".pt", ".safetensors"]))
def test_any_strided_view_saves_its_own_values_and_no_more(tmp_path_factory, cuts, suffix: str):
    """Slices at any offset, with any step, transposed: what is saved is each view's values alone."""
    buffer = torch.full((4096,), SENTINEL)
    state = {}
    for i, (start, rows, step, transpose) in enumerate(cuts):
        view = buffer[start * 64:].view(-1, 8)[: rows * step: step]
        view.copy_(torch.arange(view.numel(), dtype=torch.float32).view(view.shape) + i)
        state[f"t{i}"] = view.t() if transpose else view
    path = tmp_path_factory.mktemp("views") / f"v{suffix}"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert path.stat().st_size < sum(v.numel() * 4 for v in state.values()) + (8 << 10)


def test_migrate_to_safetensors_splits_two_keys_sharing_one_tensor(tmp_path, capsys):
    """safetensors refuses shared storage (tied weights); the saved file gets one copy per key."""
    from safetensors.torch import save

    state = build("skip_modules").state_dict()
    state["res_block1.3.weight"] = state["res_block1.0.weight"]  # tied: one tensor, two keys
    with pytest.raises(RuntimeError, match="share memory"):
        save({"a": state["res_block1.0.weight"], "b": state["res_block1.3.weight"]})
    src, dst = tmp_path / "tied.pt", tmp_path / "o.safetensors"
    torch.save(state, src)
    assert main(["migrate", str(src), str(dst), "--to", "skip_modules"]) == 0, capsys.readouterr().err
    loaded = load_checkpoint(dst)
    assert torch.equal(loaded["res_block1.3.weight"], state["res_block1.0.weight"])
    assert loaded["res_block1.3.weight"].data_ptr() != loaded["res_block1.0.weight"].data_ptr()


def test_a_pt_checkpoint_keeps_tied_weights_tied(tmp_path):
    """torch.save writes a storage two keys share once, and loads it tied: nothing to split."""
    tied = torch.randn(32, 32)
    path = tmp_path / "tied.pt"
    save_checkpoint({"a.weight": tied, "b.weight": tied}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["a.weight"].data_ptr() == loaded["b.weight"].data_ptr()
    assert path.stat().st_size < tied.numel() * 4 + (4 << 10)


def test_migrate_of_a_legacy_checkpoint_of_views_holds_only_what_it_keeps(tmp_path, capsys):
    """The legacy checkpoint's tensors are views of a buffer 40 times their size; the skip.* tensors the
    conversion drops are filled with a marker value: neither the spare buffer nor their bytes are written."""
    state = build("legacy").state_dict()
    dropped_marker = 777.25
    views = views_of_one_buffer(state, spare=40)
    for key in [k for k in views if k.startswith("skip.") and views[k].is_floating_point()]:
        views[key].fill_(dropped_marker)
    src, dst = tmp_path / "legacy.pt", tmp_path / "migrated.pt"
    torch.save(views, src)
    assert main(["migrate", str(src), str(dst), "--to", "skip_modules"]) == 0
    assert "dropped" in capsys.readouterr().out
    kept = load_checkpoint(dst)
    own = sum(v.numel() * v.element_size() for v in kept.values())
    assert dst.stat().st_size < own + (64 << 10) < src.stat().st_size // 10
    data = dst.read_bytes()
    assert struct.pack("<f", SENTINEL) not in data and struct.pack("<f", dropped_marker) not in data


# --- dtypes: what the loader accepts computes what the model it came from computes --------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_checkpoint_in_another_float_dtype_scores_as_the_model_cast_the_same_way(tmp_path, dtype, suffix):
    """float16/bfloat16/float64 weights load, cast to the model's float32, and score exactly as the
    source model does after the same round trip through ``dtype``; BatchNorm's int64 step counts stay."""
    source = seed_weights(build("skip_modules"), seed=3).eval()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    assert state["res_block1.1.num_batches_tracked"].dtype == torch.int64
    path = tmp_path / f"model{suffix}"
    save_checkpoint(state, path)
    loaded = get_audio_model("skip_modules", path)
    expected = copy.deepcopy(source).to(dtype).to(torch.float32).eval()
    x = torch.randn(3, 1, 4000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_an_integer_checkpoint_given_as_a_state_dict_is_refused_too():
    state = {k: v.to(torch.int32) if v.is_floating_point() else v
             for k, v in build("skip_modules").state_dict().items()}
    with pytest.raises(HarnessError, match=r"^checkpoint: 100 tensors of a dtype the model cannot hold"):
        get_audio_model("skip_modules", state)


class WithIntegerBuffer(nn.Module):
    """A model keeping an integer buffer that is not BatchNorm's: its own dtypes decide."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.register_buffer("position_ids", torch.arange(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, self.position_ids])


def test_against_the_target_model_integers_are_accepted_only_where_the_model_keeps_integers(tmp_path):
    model = WithIntegerBuffer()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(HarnessError, match=r"'position_ids' \(int64\)"):
        load_checkpoint(path)  # no model at hand: only torch's own integer buffers pass
    load_weights(WithIntegerBuffer(), path)  # the model keeps position_ids as integers
    torch.save({**model.state_dict(), "fc.weight": torch.ones(1, 4, dtype=torch.int32)}, path)
    with pytest.raises(HarnessError, match=r"'fc.weight' \(int32; the model holds float32\)"):
        load_weights(WithIntegerBuffer(), path)
    torch.save({**model.state_dict(), "position_ids": torch.arange(4.0)}, path)
    with pytest.raises(HarnessError, match=r"'position_ids' \(float32; the model holds int64\)"):
        load_weights(WithIntegerBuffer(), path)
