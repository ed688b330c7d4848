"""AdamW parameter groups, the optimizer that leaves idle model parts alone, and the
learning-rate schedule (a pure function of the step and the schedule length).

Two rules decide which parameters get weight decay (``optim.groups``):

- ``original`` (the paper's recipe, ``configs/pretrain/base_4m.yaml``): the original X-FM code's
  rule, a substring match of its own parameter names against ``ORIGINAL_NO_DECAY``. Our names
  are translated to the official checkpoint names first (``official_name``), so membership is
  exactly the original's: the BEiT ``relative_position_bias_table``s are not decayed (they
  contain "bias"), while the temperature and the LayerNorm weights inside the ITM/box MLPs
  (``itm_head.1.weight``, ``bbox_head.1.weight``) are.
- ``clean``: no decay on biases, on every normalisation layer's parameters (found by module
  type, so also inside the head MLPs) and on scalars (the temperature); everything else decays.

``lr_mult`` applies to parameters whose (our) name starts with one of ``optim.lr_mult_prefixes``;
the paper gives it to exactly the parameters the original creates after loading the pretrained
encoders: ``heads.vision_proj``, ``heads.text_proj``, ``heads.temp``, ``heads.itm``, ``heads.bbox``.
A prefix that starts no trainable parameter's name is a config error (``check_lr_mult_prefixes``,
shared with fine-tuning), so a misspelt one cannot silently train everything at the base lr.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from xfm.config import ConfigError
from xfm.runtime.config import OptimConfig

# the original code's no-decay substrings (its optim.create_optimizer), matched against the
# official parameter names
ORIGINAL_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
                     "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight")


def _full_shape(p: torch.Tensor) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def part_of(name: str) -> str:
    """The model part a parameter/module belongs to: ``text``, ``vision``, ``fusion`` or a head
    (``heads.itm``, ``heads.temp``...); the unit the optimizer can leave alone in a step."""
    bits = name.split(".")
    return ".".join(bits[:2]) if bits[0] == "heads" and len(bits) > 1 else bits[0]


def official_name(name: str) -> str:
    """The official X-FM checkpoint name of one of our parameter names: the inverse of the
    checkpoint adapter's mapping (``xfm.checkpoint.official``), which it is built from."""
    from xfm.checkpoint.official import _HEAD_SIMPLE, F, FR, T, TR, V

    special = {"heads.temp.temp": "temp",
               "heads.fusion_mlm.decoder.weight": FR + "embeddings.word_embeddings.weight",
               "heads.text_mlm.decoder.weight": TR + "embeddings.word_embeddings.weight",
               "heads.text_mlm.bias": T + "lm_head.bias", "heads.fusion_mlm.bias": F + "lm_head.bias"}
    if name in special:
        return special[name]
    if name.startswith("vision."):
        return V + name[len("vision."):]
    for official, ours in _HEAD_SIMPLE.items():
        if name.startswith(ours):
            return official + name[len(ours):]
    raise KeyError(f"optim.groups=original: parameter {name!r} has no official X-FM name (the original "
                   "no-decay rule is defined on those); use optim.groups=clean for this model")


def _norm_param_ids(model: nn.Module) -> set[int]:
    ids = set()
    for mod in model.modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)) or \
                "norm" in type(mod).__name__.lower():
            ids.update(id(p) for p in mod.parameters(recurse=False))
    return ids


def no_decay_names(model: nn.Module, rule: str) -> set[str]:
    """Names (ours) of the trainable parameters that get no weight decay under ``rule``."""
    if rule == "original":
        return {n for n, p in model.named_parameters() if p.requires_grad
                and any(s in official_name(n) for s in ORIGINAL_NO_DECAY)}
    if rule != "clean":
        raise ValueError(f"optim.groups must be 'original' or 'clean', got {rule!r}")
    norms = _norm_param_ids(model)
    return {n for n, p in model.named_parameters() if p.requires_grad
            and (n.endswith("bias") or id(p) in norms or math.prod(_full_shape(p)) == 1)}


def check_lr_mult_prefixes(prefixes, trained_names, top_of, model_kind: str = "this model") -> None:
    """Raise ``ConfigError`` when a prefix of ``optim.lr_mult_prefixes`` starts none of
    ``trained_names``; the message lists the model's top-level prefixes (``top_of(name)``) so the
    user sees what the names look like (pretraining's ``heads.`` is fine-tuning's ``xfm.``...)."""
    names = list(trained_names)
    unmatched = [pre for pre in prefixes if not any(n.startswith(pre) for n in names)]
    if unmatched:
        tops = sorted({top_of(n) for n in names})
        raise ConfigError(f"optim.lr_mult_prefixes: {unmatched} name no trainable parameter of {model_kind} "
                          f"(its parameters start with {tops})")


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: (decay | no decay) x (base lr | lr * lr_mult), per model part.

    Decay follows ``optim.groups`` (module docstring); ``lr_mult`` goes to parameters whose name
    starts with one of ``optim.lr_mult_prefixes``. Names are the model's own
    (``heads.temp.temp``), without any wrapper prefix. One group per model part too (``part``),
    so a step can leave the parts it did not use alone (``set_lr``)."""
    no_decay = no_decay_names(model, optim.groups)
    groups: dict[tuple[str, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        nd = name in no_decay
        mult = any(name.startswith(pre) for pre in optim.lr_mult_prefixes)
        key = (part_of(name), nd, mult)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "part": key[0],
                           "weight_decay": 0.0 if nd else optim.weight_decay,
                           "lr_mult": optim.lr_mult if mult else 1.0,
                           "lr": optim.lr * (optim.lr_mult if mult else 1.0)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    check_lr_mult_prefixes(optim.lr_mult_prefixes, (n for g in groups.values() for n in g["names"]),
                           lambda n: part_of(n) + ".")
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


class SkipInactiveGroups:
    """Mixin in front of an AdamW class: skips every param group whose ``active`` is False.

    torch's AdamW leaves a parameter without gradient completely untouched (weights, moments and
    step count). Under ZeRO every parameter has a gradient partition in every step (zeros for
    one that was not used), so an idle model part would still have its moments decayed, its
    step count advanced and its weights moved by momentum and decay. ``set_lr`` marks the
    groups of parts that did not run as inactive; this optimizer then does not touch them. It
    works on DeepSpeed's flat fp32 partitions too: ZeRO keeps one flat tensor per client group
    and steps through the client's own ``param_groups`` dicts, which carry ``active``."""

    skips_inactive_groups = True

    def step(self, closure=None):
        hidden = []
        for g in self.param_groups:
            if not g.get("active", True) and g["params"]:
                hidden.append((g, g["params"]))
                g["params"] = []
        try:
            return super().step(closure)
        finally:
            for g, params in hidden:
                g["params"] = params


class PartwiseAdamW(SkipInactiveGroups, torch.optim.AdamW):
    """``torch.optim.AdamW`` that skips inactive groups (see ``SkipInactiveGroups``)."""


def _skips_inactive(optimizer) -> bool:
    """The client optimizer under DeepSpeed's wrappers (``.optimizer``) skips inactive groups."""
    seen = 0
    while optimizer is not None and seen < 4:
        if getattr(optimizer, "skips_inactive_groups", False):
            return True
        optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
    return False


def set_lr(optimizer, step: int, optim: OptimConfig, total_steps: int, active_parts=None) -> float:
    """Set every group's lr for this step (stateless: resume needs the step and ``total_steps``).

    ``active_parts``: when given, the groups of other model parts are left alone in this step:
    marked ``active: False`` (``PartwiseAdamW`` skips them: weights, moments and step count stay
    exactly as they are, as torch's AdamW does for a parameter without gradient). An optimizer
    that cannot skip groups gets lr 0 for them instead (weights still; moments still decay)."""
    f = lr_factor(step, optim, total_steps)
    skipping = _skips_inactive(optimizer)
    for g in optimizer.param_groups:
        on = active_parts is None or g.get("part") is None or g["part"] in active_parts
        g["active"] = on
        g["lr"] = optim.lr * g.get("lr_mult", 1.0) * f if (on or skipping) else 0.0
    return optim.lr * f


def build_optimizer(model: nn.Module, optim: OptimConfig, device=None, groups: list[dict] | None = None
                    ) -> torch.optim.Optimizer:
    """The client AdamW (``optim.impl``) over ``groups`` (default: the pretraining rule,
    ``param_groups(model, optim)``; fine-tuning passes its layer-decay groups), skipping inactive
    groups. ``device``: where the parameters live (under ZeRO-3 they are empty partitions, so pass
    the accelerator's device name); None: the first parameter's device."""
    from xfm.runtime.optimizers import make_adamw

    if groups is None:
        groups = param_groups(model, optim)
    torch_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return make_adamw(torch_groups, optim.impl, optim.lr, tuple(optim.betas), optim.eps,
                      optim.weight_decay, device, base=SkipInactiveGroups)
