"""Checkpoint files: the one safe loader and atomic saves, for any model.

* ``load_checkpoint(path)`` is the only way the harness reads a checkpoint: ``torch.load``
  with ``weights_only=True`` (a pickle payload is refused, never run) or safetensors,
  wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ``module.``) removed, every bad
  input turned into a one-line ``HarnessError`` naming the file.
* ``save_checkpoint`` writes atomically (``harness.core.fileio``).

Nothing here knows a model: layouts and conversions live in ``harness.rawnet2.checkpoints``.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from harness.core.errors import HarnessError
from harness.core.fileio import write_atomically

WRAPPER_KEYS = ("state_dict", "model")
# Prefix added by nn.DataParallel / DistributedDataParallel.
DATA_PARALLEL_PREFIX = "module."


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_MAX_LISTED = 6
StateDict = dict[str, torch.Tensor]


# --- reading -------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike) -> StateDict:
    """The state_dict in ``path``, unwrapped; ``HarnessError`` naming the file for any bad input."""
    return read_checkpoint(Path(path))[0]


def read_checkpoint(path: Path) -> tuple[StateDict, list[str]]:
    """The state_dict and notes on what was unwrapped (for the CLI to print)."""
    head = _check_readable_file(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path.stat().st_size):
        payload = _load_safetensors(path)
    elif head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        payload = _torch_load(path)
    else:
        kind = "a text file" if _is_text(head) else f"an unrecognised format (starts with {head[:8]!r})"
        raise HarnessError(f"{path}: not a PyTorch or safetensors checkpoint: {kind}")
    return as_state_dict(payload, str(path))


def _check_readable_file(path: Path) -> bytes:
    """The file's first bytes, after refusing what is not a readable, non-empty regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise HarnessError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or stream forever.
        raise HarnessError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise HarnessError(f"{path}: empty file (0 bytes)")
    try:
        with path.open("rb") as f:
            return f.read(64)
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror}") from None


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


def as_state_dict(payload: object, label: str = "checkpoint") -> tuple[StateDict, list[str]]:
    """Unwrap a loaded payload into a plain ``{str: Tensor}`` dict; notes say what was removed.

    Accepts ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers (other entries of the
    wrapper, e.g. an optimizer, are ignored and noted) and ``module.`` key prefixes.
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
    return state, notes


def _wrapper_key(payload: Mapping) -> str | None:
    return next((k for k in WRAPPER_KEYS if isinstance(payload.get(k), Mapping)), None)


# --- writing -------------------------------------------------------------------------------


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                    force: bool = False) -> None:
    """Write ``state_dict`` to ``path`` atomically: a reader sees the old file or the whole new one.

    Temp file in the target directory, flush, fsync, ``os.replace``; the temp file is
    removed on any failure. ``.safetensors`` paths are written as safetensors. An
    existing ``path`` is refused unless ``force``.
    """
    path = Path(path)
    write_atomically(
        path,
        lambda f: _serialize(dict(state_dict), f, safetensors=path.suffix == ".safetensors"),
        force=force,
    )


def _serialize(state_dict: StateDict, f, *, safetensors: bool) -> None:
    if safetensors:
        try:
            from safetensors.torch import save
        except ImportError:
            raise HarnessError(
                "writing .safetensors needs the extra: pip install 'rawnet2-harness[safetensors]'"
            ) from None
        f.write(save({k: v.contiguous() for k, v in state_dict.items()}))
    else:
        torch.save(state_dict, f)


