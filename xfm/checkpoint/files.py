"""Reading tensors from disk safely: pickles only with ``weights_only=True``, safetensors as is.

Every failure becomes a :class:`CheckpointError` that names the file: a missing path, a file
that is not a checkpoint at all, a truncated one, a pickle that holds something other than
tensors, or a container without a state dict in it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .report import CheckpointError

PICKLE_SUFFIXES = (".th", ".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


def read_file(path: str | os.PathLike) -> Any:
    """Load a checkpoint file into CPU memory (pickles memory-mapped when possible)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty, not a checkpoint")
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path)
    return read_pickle(path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e


def read_pickle(path: Path) -> Any:
    # mmap keeps a 1.8 GB official checkpoint out of RAM until tensors are copied into the
    # model; the legacy (non-zip) torch.save format cannot be mapped, so fall back for it.
    errors = []
    for mmap in (True, False):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - torch raises many unrelated types here
            errors.append(e)
            if isinstance(e, torch.serialization.pickle.UnpicklingError) and "weights_only" in str(e):
                break  # a real pickle holding non-tensor objects: the second try says the same
    e = errors[-1]
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        raise CheckpointError(
            f"{path}: the pickle holds objects other than tensors and plain containers; it is "
            f"refused because pickles are only loaded with weights_only=True ({msg})") from e
    raise CheckpointError(
        f"{path}: not a readable PyTorch checkpoint (not a torch.save file, or truncated): "
        f"{type(e).__name__}: {msg}") from e


def find_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: the object itself, or under ``model``,
    ``state_dict`` or ``module`` (any nesting of those); a ``module.`` prefix on every key
    (DistributedDataParallel) is removed."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for wrapper in ("model", "state_dict", "module"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
        else:
            break
        seen += 1
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of tensors, "
                              f"optionally under 'model' or 'state_dict'); found {_describe(obj)}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors in the state dict; keys: {list(obj)[:10]}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a mapping with keys {list(obj)[:10]}"
    return f"a {type(obj).__name__}"
