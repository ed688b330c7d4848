"""Which AdamW implementation steps the parameters (``optim.impl``).

- ``torch``: ``torch.optim.AdamW`` with its default kernel choice (the multi-tensor ``foreach``
  form where torch supports it, else the per-parameter loop); right on CPU.
- ``torch_fused``: ``torch.optim.AdamW(fused=True)``: one fused kernel over all parameters (CUDA,
  and CPU where torch implements it).
- ``deepspeed_fused``: DeepSpeed's ``FusedAdam`` (multi-tensor CUDA kernel, ``adam_w_mode``),
  JIT-built by DeepSpeed on first use; CUDA only.
- ``apex_fused``: NVIDIA apex's ``FusedAdam`` (``adam_w_mode``); apex is not on PyPI, so it is an
  optional extra and asking for it without apex is an error saying how to install it.
- ``auto``: ``torch_fused`` on CUDA (torch's own fused kernel needs no build step), ``torch`` on
  CPU.

All of them make the AdamW update of ``torch.optim.AdamW`` (decoupled weight decay, bias
correction), which the tests check on CPU for the torch variants. The class is built with
``make_adamw_class`` so that a subclass (one that skips inactive parameter groups, say) can be put
on top of whichever implementation was chosen.
"""
from __future__ import annotations

from typing import Iterable

import torch

from xfm.model.norms import APEX_INSTALL_HINT, ApexUnavailableError, apex_available

OPTIM_IMPLS = ("auto", "torch", "torch_fused", "deepspeed_fused", "apex_fused")


def resolve_impl(impl: str, device) -> str:
    """The concrete implementation ``impl`` means on ``device`` (``auto`` resolved)."""
    if impl not in OPTIM_IMPLS:
        raise ValueError(f"optim.impl must be one of {OPTIM_IMPLS}, got {impl!r}")
    kind = torch.device(device).type
    if impl == "auto":
        return "torch_fused" if kind == "cuda" else "torch"
    if impl in ("deepspeed_fused", "apex_fused") and kind != "cuda":
        raise ValueError(f"optim.impl={impl} is a CUDA kernel; the parameters are on {kind} "
                         "(use optim.impl=torch or auto)")
    if impl == "apex_fused" and not apex_available():
        raise ApexUnavailableError(f"optim.impl=apex_fused needs NVIDIA apex, which is not installed. "
                                   f"{APEX_INSTALL_HINT}")
    return impl


def adamw_class(impl: str) -> tuple[type, dict]:
    """``(optimizer class, extra constructor kwargs)`` of a concrete implementation."""
    if impl == "torch":
        return torch.optim.AdamW, {}
    if impl == "torch_fused":
        return torch.optim.AdamW, {"fused": True}
    if impl == "deepspeed_fused":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam, {"adam_w_mode": True}
    if impl == "apex_fused":
        from apex.optimizers import FusedAdam

        return FusedAdam, {"adam_w_mode": True}
    raise ValueError(f"not a concrete optim.impl: {impl!r}")


def make_adamw(param_groups: Iterable, impl: str = "auto", lr: float = 1e-4,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.01, device=None, base: type | None = None) -> torch.optim.Optimizer:
    """An AdamW over ``param_groups`` (a list of dicts or of tensors) of implementation ``impl``.

    ``device``: where the parameters live (default: the first parameter's device), which decides
    ``auto``. ``base``: a mixin class put in front of the implementation's class (its ``step``
    runs first and calls ``super().step``), e.g. one that skips inactive groups."""
    groups = list(param_groups)
    if device is None:
        first = next((p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])), None)
        device = first.device if first is not None else "cpu"
    cls, extra = adamw_class(resolve_impl(impl, device))
    if base is not None:
        cls = type(f"{base.__name__}On{cls.__name__}", (base, cls), {})
    return cls(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **extra)
