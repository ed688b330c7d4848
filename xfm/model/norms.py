"""The LayerNorm the encoders use: ``torch`` (``nn.LayerNorm``) or ``apex`` (NVIDIA apex's
``FusedLayerNorm``, one fused CUDA kernel forward and backward).

Both hold ``weight`` and ``bias`` of the same shape under the same names, so checkpoints load
into either. apex is not on PyPI: it is built from source against the installed torch and CUDA,
so ``norm_impl: apex`` is an optional extra and asking for it without apex is an error that says
how to install it (never a silent fall-back to the torch LayerNorm).
"""
from __future__ import annotations

import importlib.util

import torch.nn as nn

NORM_IMPLS = ("torch", "apex")

APEX_INSTALL_HINT = (
    "NVIDIA apex is not on PyPI; build it from source with its CUDA extensions: "
    "git clone https://github.com/NVIDIA/apex && cd apex && pip install -v --no-build-isolation "
    "--config-settings '--build-option=--cpp_ext' --config-settings '--build-option=--cuda_ext' ./")


class ApexUnavailableError(ImportError):
    """Asked for an apex implementation where apex is not installed."""


def apex_available() -> bool:
    return importlib.util.find_spec("apex") is not None


def require_apex(what: str) -> None:
    if not apex_available():
        raise ApexUnavailableError(f"{what} needs NVIDIA apex, which is not installed. {APEX_INSTALL_HINT}")


def layer_norm(dim: int, eps: float, impl: str = "torch") -> nn.Module:
    """A LayerNorm over the last dimension of width ``dim``, of the chosen implementation."""
    if impl == "torch":
        return nn.LayerNorm(dim, eps=eps)
    if impl == "apex":
        require_apex("model.norm_impl=apex")
        from apex.normalization import FusedLayerNorm

        return FusedLayerNorm(dim, eps=eps)
    raise ValueError(f"model.norm_impl must be one of {NORM_IMPLS}, got {impl!r}")


def is_layer_norm(module: nn.Module) -> bool:
    """True for either implementation (apex's class is not an ``nn.LayerNorm`` subclass)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__ == "FusedLayerNorm"
