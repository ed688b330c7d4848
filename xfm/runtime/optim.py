"""AdamW parameter groups and the learning-rate schedule (a pure function of the step)."""
from __future__ import annotations

import math

import torch
from torch import nn

from xfm.runtime.config import OptimConfig


def _full_shape(p: torch.Tensor) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def part_of(name: str) -> str:
    """The model part a parameter/module belongs to: ``text``, ``vision``, ``fusion`` or a head
    (``heads.itm``, ``heads.temp``...); the unit the optimizer can leave alone in a step."""
    bits = name.split(".")
    return ".".join(bits[:2]) if bits[0] == "heads" and len(bits) > 1 else bits[0]


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: (decay | no decay) x (base lr | lr * lr_mult), per model part.

    No decay on biases, every norm's parameters and scalars (the temperature); ``lr_mult`` on
    parameters whose name starts with one of ``optim.lr_mult_prefixes`` (new heads, temperature).
    Names are the model's own (``heads.temp.temp``), without any wrapper prefix. One group per
    model part too (``part``), so a step can leave the parts it did not use alone (``set_lr``).
    """
    norm_params = set()
    for mod in model.modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)) or \
                "norm" in type(mod).__name__.lower():
            for p in mod.parameters(recurse=False):
                norm_params.add(id(p))
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (name.endswith("bias") or id(p) in norm_params or len(_full_shape(p)) <= 1
                    and math.prod(_full_shape(p)) == 1)
        mult = any(name.startswith(pre) for pre in optim.lr_mult_prefixes)
        key = (part_of(name), no_decay, mult)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "part": key[0],
                           "weight_decay": 0.0 if no_decay else optim.weight_decay,
                           "lr_mult": optim.lr_mult if mult else 1.0,
                           "lr": optim.lr * (optim.lr_mult if mult else 1.0)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Warm-up from 0 then linear / cosine decay to ``min_lr_ratio``; ``step`` counts from 0."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return 1.0
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, max(0.0, (step - optim.warmup_steps) / span))
    if optim.decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape


def set_lr(optimizer, step: int, optim: OptimConfig, total_steps: int, active_parts=None) -> float:
    """Set every group's lr for this step (stateless: resume needs nothing but the step).

    ``active_parts``: when given, groups of other model parts get lr 0 - under ZeRO every
    optimizer step updates every partition, so a part that got no gradient in this step (the
    vision encoder in the paper's text step) would otherwise still move by its Adam momentum and
    weight decay, where torch's AdamW skips a parameter without gradient."""
    f = lr_factor(step, optim, total_steps)
    for g in optimizer.param_groups:
        on = active_parts is None or g.get("part") is None or g["part"] in active_parts
        g["lr"] = optim.lr * g.get("lr_mult", 1.0) * f if on else 0.0
    return optim.lr * f


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, optim)
    torch_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(torch_groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


