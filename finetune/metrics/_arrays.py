"""Turning the inputs the metrics accept (numpy arrays, torch tensors, lists) into numpy arrays.

torch is not imported here: a tensor is recognised by its ``detach``/``cpu`` methods, so the
metrics stay usable (and cheap to import) without touching the model stack.
"""
from __future__ import annotations

import numpy as np


def as_numpy(values, name: str, dtype=None) -> np.ndarray:
    """``values`` as a numpy array; torch tensors are detached and moved to the CPU first
    (bfloat16 is widened to float32 because numpy has no bfloat16)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        tensor = values.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()
        values = tensor.numpy()
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be read as a numeric array ({err})") from None
    return array


def as_vector(values, name: str, dtype=None) -> np.ndarray:
    """A 1-D array; a trailing singleton axis (regression outputs of shape (N, 1)) is dropped."""
    array = as_numpy(values, name, dtype)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {tuple(array.shape)}")
    return array


def same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty: a metric over no examples is undefined")


def integer_labels(values, name: str) -> np.ndarray:
    """Class ids as int64; floats are accepted only when they hold whole numbers (labels that
    travelled through a float tensor), anything else is a caller error worth naming."""
    array = as_vector(values, name)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name}: class ids must be whole numbers")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"{name}: class ids must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)
