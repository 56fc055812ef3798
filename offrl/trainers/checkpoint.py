"""Trainer checkpoints: atomic writes, two backends chosen by ``CKPT_BACKEND`` (torchrl's convention).

* ``torch`` (default): one ``torch.save`` file. Its content is plain containers of tensors and Python
  scalars, so ``torch.load(..., weights_only=True)`` (the default here) reads it.
* ``memmap``: a tensordict memory-mapped directory. Nested dicts, lists and tuples are encoded as nested
  TensorDicts with typed keys (``s:`` / ``i:`` for str / int dict keys, ``#i`` for sequence items), Python
  scalars as non-tensor leaves, and decoded back into the same structure on load.

Writes go to a hidden temporary sibling and are moved into place with ``os.replace``, so a reader (or a
resume after SIGKILL) never sees a half-written checkpoint.

Every checkpoint records the CRC-32 of its own contents (:func:`state_crc32`, under :data:`CHECKSUM_KEY`),
checked on every load: torch's zip reader does not check its records' CRCs, so a bit flip inside a tensor's
bytes would otherwise load silently. Checkpoints written before offrl recorded it load unchecked.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

import torch
from tensordict import NonTensorData, TensorDict, TensorDictBase

from offrl.errors import UserError
from offrl.fsio import no_space_error

__all__ = ["CHECKSUM_KEY", "ckpt_backend", "intact_hint", "load_checkpoint", "save_checkpoint", "state_crc32"]

#: The entry of a saved state that holds the CRC-32 of the rest (:func:`state_crc32`); removed on load.
CHECKSUM_KEY = "__offrl_crc32__"

_SEQ_TYPE = "__seq_type__"
#: Non-finite floats (a best return of -inf before any episode, a NaN statistic) would come back from the
#: memmap backend's JSON as None: they are stored as this prefix + repr and decoded back.
_FLOAT_PREFIX = "__float__:"


def ckpt_backend() -> str:
    """The checkpoint backend from ``CKPT_BACKEND`` (``torch`` or ``memmap``)."""
    backend = os.environ.get("CKPT_BACKEND", "torch").strip().lower() or "torch"
    if backend not in ("torch", "memmap"):
        raise UserError(f"CKPT_BACKEND={backend!r} is not a checkpoint backend; use 'torch' or 'memmap'")
    return backend


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def state_crc32(state: Any) -> int:
    """CRC-32 of a state's contents: every key and scalar, and every tensor's dtype, shape and bytes, walked in
    a canonical order (dict keys sorted, lists and tuples alike, scalars by kind), so both backends' read-back
    states give the value computed before the write."""
    crc = 0

    def feed(data: bytes | memoryview) -> None:
        nonlocal crc
        crc = zlib.crc32(data, crc)

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            feed(f"T{str(t.dtype)[6:]}{list(t.shape)}".encode())
            if t.numel():
                feed(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(obj, dict):
            feed(f"D{len(obj)}".encode())
            for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
                feed(f"K{_scalar_text(key)}".encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            feed(f"L{len(obj)}".encode())
            for item in obj:
                walk(item)
        else:
            feed(f"S{_scalar_text(obj)}".encode())

    walk(state)
    return crc


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"i{int(value)}"
    if isinstance(value, float):
        return f"f{float(value)!r}"
    return f"{type(value).__name__}:{value!r}"


def save_checkpoint(state: dict[str, Any], path: str | Path, backend: str | None = None) -> Path:
    """Write ``state`` atomically to ``path`` with ``backend`` (default: ``CKPT_BACKEND``), with its
    CRC-32 (:func:`state_crc32`) as one more entry."""
    path = Path(path)
    backend = backend or ckpt_backend()
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}  # a state read back raw: a new checksum
    state[CHECKSUM_KEY] = state_crc32(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        if backend == "torch":
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            _encode(state).memmap(tmp)
            # A directory cannot be replaced atomically while non-empty: move the old one aside first.
            old = None
            if path.exists():
                old = _tmp_sibling(path)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        full = no_space_error(exc, path)  # torch reports a full disk as "unexpected pos": say what it is
        if full is not None:
            raise full from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
    return path


def load_checkpoint(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its recorded CRC-32. ``kwargs`` go to
    ``torch.load`` (``weights_only=True`` unless given); with the memmap backend (a directory) they are ignored."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a trainer checkpoint")
    try:
        return _read_checked(path, **kwargs)
    except _Damaged as why:
        raise UserError(f"checkpoint {path} {why}{intact_hint(path)}") from None


class _Damaged(Exception):
    """Why a checkpoint cannot be used (the message's middle part)."""


# what torch.load takes besides the file: its own keywords and pickle's Unpickler's
_TORCH_LOAD_KWARGS = frozenset({"map_location", "pickle_module", "weights_only", "mmap", "encoding", "errors",
                                "fix_imports", "buffers"})


def _read_checked(path: Path, **kwargs: Any) -> dict[str, Any]:
    """The state in ``path`` without its checksum entry, or :class:`_Damaged`. ``kwargs`` go to
    ``torch.load``; one it does not take is a TypeError (a caller's mistake, not a damaged file)."""
    unknown = sorted(set(kwargs) - _TORCH_LOAD_KWARGS)
    if unknown:
        raise TypeError(f"load_from_file() got keyword arguments torch.load does not take: {', '.join(unknown)}")
    try:
        if path.is_dir():
            state = _decode(TensorDict.load_memmap(path))
        else:
            kwargs.setdefault("weights_only", True)
            kwargs.setdefault("map_location", "cpu")
            state = torch.load(path, **kwargs)
    except Exception as exc:  # truncated, bit-flipped, a folder where a file was: never a traceback
        # (and never torch's advice to pass weights_only=False: a damaged file is not an untrusted one)
        raise _Damaged(f"is damaged or not an offrl checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise _Damaged("does not hold a trainer state dict")
    recorded = state.pop(CHECKSUM_KEY, None)  # None: written before offrl recorded it
    if recorded is not None and (not isinstance(recorded, int) or recorded != state_crc32(state)):
        raise _Damaged("is damaged: its contents do not match the CRC-32 recorded when it was written "
                       "(bytes changed on disk)")
    return state


def intact_hint(path: Path) -> str:
    """``; the newest intact one is step_N.pt: copy it over latest.pt`` when there is one, else advice."""
    steps = []
    for other in path.parent.glob("step_*"):
        try:
            steps.append((int(other.name.split("_", 1)[1].split(".", 1)[0]), other))
        except ValueError:
            continue
    for _, candidate in sorted(steps, reverse=True):
        if candidate == path:
            continue
        try:
            _read_checked(candidate)
        except _Damaged:  # damaged too: look further back
            continue
        return f"; the newest intact checkpoint is {candidate}: copy it to {path} and resume"
    return "; no intact step_N checkpoint is left beside it: start a new run"


def _encode(obj: Any) -> TensorDictBase:
    td = TensorDict()
    if isinstance(obj, dict):
        items = [((f"s:{k}" if isinstance(k, str) else f"i:{int(k)}"), v) for k, v in obj.items()]
    else:
        td.set(_SEQ_TYPE, NonTensorData(type(obj).__name__))
        items = [(f"#{i}", v) for i, v in enumerate(obj)]
    for key, value in items:
        if isinstance(value, torch.Tensor):
            td.set(key, value.detach().cpu())
        elif isinstance(value, (dict, list, tuple)):
            td.set(key, _encode(value))
        elif isinstance(value, float) and not math.isfinite(value):
            td.set(key, NonTensorData(f"{_FLOAT_PREFIX}{value!r}"))
        else:
            td.set(key, NonTensorData(value))
    return td


def _decode(td: TensorDictBase) -> Any:
    keys = list(td.keys())
    if _SEQ_TYPE in keys:
        kind = td.get(_SEQ_TYPE).data if hasattr(td.get(_SEQ_TYPE), "data") else td.get(_SEQ_TYPE)
        n = len(keys) - 1
        items = [_leaf(td, f"#{i}") for i in range(n)]
        return tuple(items) if kind == "tuple" else items
    out: dict[Any, Any] = {}
    for key in keys:
        name = key[2:]
        out[name if key.startswith("s:") else int(name)] = _leaf(td, key)
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FLOAT_PREFIX):
        return float(value[len(_FLOAT_PREFIX):])
    return value


def _leaf(td: TensorDictBase, key: str) -> Any:
    if td.is_non_tensor(key) if hasattr(td, "is_non_tensor") else False:
        return _scalar(td.get_non_tensor(key))
    value = td.get(key)
    if isinstance(value, NonTensorData):
        return _scalar(value.data)
    if isinstance(value, TensorDictBase):
        return _decode(value)
    # a plain tensor, not a view of the memmap file: optimizers update their state in place
    return value.clone().as_subclass(torch.Tensor)
