"""Parameter groups for fine-tuning: no decay on biases / norms / scalars, layer-wise lr decay
(BEiT recipe) and an lr multiplier for the task's new head."""
from __future__ import annotations

import re

from torch import nn

_LAYER_RE = re.compile(r"(?:encoder\.layer|blocks)\.(\d+)\.")


def num_layers(model: nn.Module) -> int:
    """Depth used for layer decay: the deepest encoder of the (pruned) backbone."""
    depth = 0
    for name, _ in model.named_parameters():
        m = _LAYER_RE.search(name)
        if m:
            depth = max(depth, int(m.group(1)) + 1)
    return depth


def layer_id(name: str, depth: int, head_prefixes) -> int:
    """0 for embeddings (patch/word/position, cls and mask tokens), i + 1 for layer i, depth + 1
    for everything after the encoders (final norms, projections, heads)."""
    if name.startswith(tuple(head_prefixes)):
        return depth + 1
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1)) + 1
    if any(s in name for s in ("embeddings", "patch_embed", "cls_token", "mask_token")):
        return 0
    return depth + 1


def finetune_param_groups(model: nn.Module, optim, head_prefixes=("head.",)) -> list[dict]:
    depth = num_layers(model)
    groups: dict[tuple, dict] = {}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()
                for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        no_decay = name.endswith("bias") or id(p) in norm_ids or len(shape) <= 1
        is_head = name.startswith(tuple(head_prefixes))
        mult = optim.layer_decay ** (depth + 1 - layer_id(name, depth, head_prefixes))
        if is_head:
            mult *= optim.head_lr_mult
        key = (no_decay, round(mult, 12))
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else optim.weight_decay,
                           "lr_mult": mult, "lr": optim.lr * mult}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
