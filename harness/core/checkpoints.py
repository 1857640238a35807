"""Checkpoint files: the one safe loader and atomic saves, for any model.

* ``load_checkpoint(path)`` is the only way the harness reads a checkpoint: ``torch.load``
  with ``weights_only=True`` (a pickle payload is refused, never run) or safetensors,
  wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ``module.``) removed, every bad
  input turned into a one-line ``HarnessError`` naming the file.
* ``save_checkpoint`` writes atomically (``harness.core.fileio``) only each tensor's own bytes
  (``own_bytes``: a view of a larger buffer is cloned, so is a storage two keys share when
  the format refuses that, as safetensors does).

Nothing here knows a model: layouts and conversions live in ``harness.rawnet2.checkpoints``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from harness.core.errors import HarnessError
from harness.core.fileio import check_regular_input, describe_unreadable, write_atomically
from harness.core.text import counted, first_few

WRAPPER_KEYS = ("state_dict", "model")
# Prefix added by nn.DataParallel / DistributedDataParallel.
DATA_PARALLEL_PREFIX = "module."


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_MAX_LISTED = 6
# The integer buffers torch's own layers keep in a state_dict (BatchNorm's step count): the
# only non-floating tensors a checkpoint may hold when no target model is at hand.
INTEGER_BUFFERS = ("num_batches_tracked",)
StateDict = dict[str, torch.Tensor]


# --- reading -------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, *, reference: Mapping[str, torch.Tensor] | None = None,
                    ) -> StateDict:
    """The state_dict in ``path``, unwrapped and its dtypes checked (``check_dtypes``, against
    ``reference``, the target model's own state_dict, when the caller has one);
    ``HarnessError`` naming the file for any bad input."""
    return read_checkpoint(Path(path), reference=reference)[0]


def read_checkpoint(path: Path, *, reference: Mapping[str, torch.Tensor] | None = None,
                    ) -> tuple[StateDict, list[str]]:
    """The state_dict and notes on what was unwrapped (for the CLI to print)."""
    path = Path(path)
    head = _check_readable_file(path)
    safetensors_bytes = _looks_like_safetensors(head, path.stat().st_size)
    torch_bytes = head.startswith((_ZIP_MAGIC, _PICKLE_PROTO))
    if path.suffix == ".safetensors" and torch_bytes and not safetensors_bytes:
        # Refused rather than unpickled: a .safetensors name promises a file with no pickle in it.
        kind = "zip" if head.startswith(_ZIP_MAGIC) else "pickle"
        raise HarnessError(f"{path}: is a torch pickle checkpoint named .safetensors (torch.save's {kind} "
                           "format, not a safetensors header); rename it .pt to load it weights-only")
    if path.suffix == ".safetensors" or safetensors_bytes:
        payload = _load_safetensors(path)
    elif torch_bytes:
        payload = _torch_load(path)
    else:
        kind = "a text file" if _is_text(head) else f"an unrecognised format (starts with {head[:8]!r})"
        raise HarnessError(f"{path}: not a PyTorch or safetensors checkpoint: {kind}")
    return as_state_dict(payload, str(path), reference=reference)


def _check_readable_file(path: Path) -> bytes:
    """The file's first bytes, after refusing what is not a readable, non-empty regular file.

    A FIFO or device would block or stream forever; a symlink loop says so
    (``harness.core.fileio.check_regular_input``).
    """
    info = check_regular_input(path)
    if info.st_size == 0:
        raise HarnessError(f"{path}: empty file (0 bytes)")
    try:
        with path.open("rb") as f:
            return f.read(64)
    except OSError as exc:
        raise HarnessError(describe_unreadable(path, exc)) from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON object.
    header_len = int.from_bytes(head[:8], "little")
    return len(head) > 8 and 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def _first_sentence(message: str) -> str:
    text = " ".join(message.split())
    return re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")[:200]


def _torch_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols etc.; the one-line error is the message.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes is a bad file
        raise HarnessError(f"{path}: {_describe_load_error(exc)}") from None


def _describe_load_error(exc: Exception) -> str:
    message = str(exc)
    # torch >= 2.7 names a global from a module it blocks outright (os, posix, subprocess, ...): code.
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", message, re.I)
    if blocked:
        return (f"refused: the pickle calls {blocked.group(1)} (code, never run: weights-only loading blocks "
                f"module {blocked.group(2)}; a checkpoint holds only tensors)")
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if refused:
        return (f"refused: the pickle asks for {refused.group(1)}, which weights-only loading "
                "forbids (nothing in it was run; a checkpoint holds only tensors)")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, re.S)
    if detail:
        reason = _first_sentence(detail.group(1))
        return f"corrupt or not a PyTorch checkpoint (weights-only unpickler: {reason})"
    if isinstance(exc, EOFError) or "EOF" in message:
        return "truncated (unexpected end of file)"
    return f"truncated or corrupt ({type(exc).__name__}: {_first_sentence(message) or 'no detail'})"


def _load_safetensors(path: Path) -> object:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise HarnessError(
            f"{path}: is a safetensors file; install the extra: pip install 'rawnet2-harness[safetensors]'"
        ) from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: a bad file
        raise HarnessError(f"{path}: corrupt safetensors file ({_first_sentence(str(exc))})") from None


def as_state_dict(payload: object, label: str = "checkpoint", *,
                  reference: Mapping[str, torch.Tensor] | None = None) -> tuple[StateDict, list[str]]:
    """Unwrap a loaded payload into a plain ``{str: Tensor}`` dict; notes say what was removed.

    Accepts ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers (other entries of the
    wrapper, e.g. an optimizer, are ignored and noted) and ``module.`` key prefixes.
    Every tensor's dtype is checked (``check_dtypes``, with ``reference`` when given).
    """
    notes = []
    while isinstance(payload, Mapping) and (key := _wrapper_key(payload)) is not None:
        others = sorted(str(k) for k in payload if k != key)
        notes.append(f"unwrapped {key!r}" + (f" (ignored: {', '.join(others)})" if others else ""))
        payload = payload[key]
    if not isinstance(payload, Mapping):
        raise HarnessError(f"{label}: holds a {type(payload).__name__}, not a state_dict (a dict of tensors)")
    if not payload:
        raise HarnessError(f"{label}: holds an empty state_dict")
    bad_keys = [k for k in payload if not isinstance(k, str)]
    if bad_keys:
        raise HarnessError(f"{label}: key {bad_keys[0]!r} is a {type(bad_keys[0]).__name__}, not a string")
    not_tensors = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        more = f" (and {len(not_tensors) - 1} more)" if len(not_tensors) > 1 else ""
        kind = type(payload[not_tensors[0]]).__name__
        raise HarnessError(f"{label}: {not_tensors[0]!r} holds a {kind}, not a tensor{more}")
    state = dict(payload)
    while all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
        notes.append(f"stripped the {DATA_PARALLEL_PREFIX!r} prefix")
    check_dtypes(state, label, reference=reference)
    return state, notes


def check_dtypes(state: Mapping[str, torch.Tensor], label: str = "checkpoint", *,
                 reference: Mapping[str, torch.Tensor] | None = None) -> None:
    """Refuse, in one line naming the keys, tensors a model cannot hold as they are meant.

    A model's weights are floating point: float16, bfloat16 and float64 are accepted (loading
    casts them to the model's dtype, the values as rounded in the file); integer, bool and
    complex tensors are not, since ``load_state_dict`` would silently cast an int32 weight
    and the model would compute garbage. Integers are accepted only where the model itself
    holds an integer tensor: per ``reference`` (the target model's own state_dict) when the
    caller has one, else for torch's integer buffers (``INTEGER_BUFFERS``: BatchNorm's
    ``num_batches_tracked``). Against a ``reference``, a key it holds must have the same kind
    (floating, integer or bool) there.
    """
    bad = []
    for key, tensor in state.items():
        own = reference.get(key) if reference is not None else None
        if own is not None and isinstance(own, torch.Tensor):
            if _dtype_kind(tensor.dtype) != _dtype_kind(own.dtype) or tensor.is_complex():
                bad.append(f"{key!r} ({_dtype_name(tensor.dtype)}; the model holds {_dtype_name(own.dtype)})")
        elif tensor.is_floating_point():
            continue
        elif (_dtype_kind(tensor.dtype) != "integer"
              or key.rpartition(".")[2] not in INTEGER_BUFFERS):
            bad.append(f"{key!r} ({_dtype_name(tensor.dtype)})")
    if bad:
        shown = first_few(bad, _MAX_LISTED, more=" (+{} more)")
        raise HarnessError(
            f"{label}: {counted(len(bad), 'tensor')} of a dtype the model cannot hold as weights: "
            f"{shown}; weights must be floating point (float16, bfloat16, float32, float64), integers only "
            "where the model itself keeps integers (e.g. BatchNorm's num_batches_tracked)")


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "bool" if dtype == torch.bool else "integer"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _wrapper_key(payload: Mapping) -> str | None:
    return next((k for k in WRAPPER_KEYS if isinstance(payload.get(k), Mapping)), None)


# --- writing -------------------------------------------------------------------------------


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                    force: bool = False) -> None:
    """Write ``state_dict`` to ``path`` atomically: a reader sees the old file or the whole new one.

    Temp file in the target directory, flush, fsync, ``os.replace``; the temp file is
    removed on any failure. ``.safetensors`` paths are written as safetensors. An
    existing ``path`` (or a symbolic link there) is refused unless ``force``; a directory,
    device, FIFO or socket always (``harness.core.fileio.check_output_path``).
    """
    safetensors = Path(os.fspath(path)).suffix == ".safetensors"
    write_atomically(path, lambda f: _serialize(dict(state_dict), f, safetensors=safetensors),
                     force=force, overwrite=False)


def _serialize(state_dict: StateDict, f, *, safetensors: bool) -> None:
    # safetensors refuses two keys on one storage (tied weights); torch.save keeps such a tie.
    state = own_bytes(state_dict, share=not safetensors)
    if safetensors:
        try:
            from safetensors.torch import save
        except ImportError:
            raise HarnessError(
                "writing .safetensors needs the extra: pip install 'rawnet2-harness[safetensors]'"
            ) from None
        f.write(save(state))
    else:
        torch.save(state, f)


def own_bytes(state_dict: Mapping[str, torch.Tensor], *, share: bool = True) -> StateDict:
    """``state_dict`` with every tensor holding only its own bytes, contiguous.

    ``torch.save`` writes a tensor's whole storage: a view of a 100 MB buffer would carry the
    100 MB, and with it bytes of tensors that were meant to be dropped. A view (a slice, an
    offset, a storage larger than the tensor, non-contiguous) is cloned; a tensor that covers
    its storage exactly is kept as is. Two keys on one storage are kept tied when ``share``
    (``torch.save`` writes it once and loads it tied), else the later one is cloned.
    """
    out: StateDict = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        if tensor.layout == torch.strided:  # a sparse tensor has no one storage: saved as it is
            if not _covers_its_storage(tensor) or (not share and tensor.untyped_storage().data_ptr() in seen):
                tensor = tensor.detach().clone(memory_format=torch.contiguous_format)
            seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _covers_its_storage(tensor: torch.Tensor) -> bool:
    return (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


