"""Parameter groups for fine-tuning: weight decay, layer-wise lr decay (BEiT recipe), an lr
multiplier for the task's new head and one for any parameters named by prefix.

Weight decay: none on biases, normalisation layers, scalars / vectors, the ViT tokens
(``cls_token``, ``mask_token``, ``pos_embed``) and BEiT's relative position bias tables (timm's
``Beit.no_weight_decay``; the X-FM pretraining rule leaves those tables undecayed too).

Layer decay (``optim.layer_decay`` < 1, the BEiT / timm ``param_groups_layer_decay`` rule): with
``n`` encoder layers, a parameter of layer id ``i`` trains at ``lr * layer_decay ** (n + 1 - i)``:
id 0 for the embeddings (patch / word / position embeddings, cls and mask tokens), ``j + 1`` for
block ``j``, ``n + 1`` for everything after the encoders (final norms, projections, the head),
which therefore keeps the full lr. ``n`` is the depth of the deepest encoder the task kept.

Prefixes (``optim.lr_mult_prefixes`` with ``optim.lr_mult``, the pretraining's two keys): a
parameter whose task-model name starts with one of them (``xfm.fusion.`` for the fusion encoder,
``xfm.vision.``, ``head.``) trains at ``lr_mult`` times what the rules above give it. A prefix that
names no trainable parameter is an error, so a misspelt one cannot silently do nothing.

Frozen parameters (``requires_grad`` False, a linear probe's encoder) get no group at all, so the
optimizer (and DeepSpeed's ZeRO partitions of it) never holds them.
"""
from __future__ import annotations

import re

from torch import nn

from xfm.runtime.optim import check_lr_mult_prefixes

_LAYER_RE = re.compile(r"(?:encoder\.layer|blocks)\.(\d+)\.")
# ViT tokens and BEiT relative position tables: no weight decay whatever their rank
_NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "relative_position_bias_table")


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
    if any(s in name for s in ("embeddings", "patch_embed", "cls_token", "mask_token", "pos_embed")):
        return 0
    return depth + 1


def _skips_decay(name: str, shape, norm_param: bool) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return name.endswith("bias") or norm_param or len(shape) <= 1 or leaf in _NO_DECAY_NAMES


def _part_prefix(name: str) -> str:
    """``xfm.fusion.`` for a backbone parameter, ``head.`` for the task's own: what an error lists."""
    parts = name.split(".")
    return ".".join(parts[:2 if parts[0] == "xfm" else 1]) + "."


def finetune_param_groups(model: nn.Module, optim, head_prefixes=("head.",)) -> list[dict]:
    """AdamW groups keyed by (no decay, lr multiplier); each carries ``lr_mult`` (what ``set_lr``
    scales the schedule by) and ``names``."""
    depth = num_layers(model)
    groups: dict[tuple, dict] = {}
    prefixes = tuple(optim.lr_mult_prefixes)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()
                for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        no_decay = _skips_decay(name, shape, id(p) in norm_ids)
        is_head = name.startswith(tuple(head_prefixes))
        mult = optim.layer_decay ** (depth + 1 - layer_id(name, depth, head_prefixes))
        if is_head:
            mult *= optim.head_lr_mult
        if name.startswith(prefixes):
            mult *= optim.lr_mult
        key = (no_decay, round(mult, 12))
        if key not in groups:
            # part None: one model part, trained every step (``set_lr`` never marks it inactive);
            # the key itself lets the engine check that our groups reach the client optimizer
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else optim.weight_decay,
                           "lr_mult": mult, "lr": optim.lr * mult, "part": None}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameter: every parameter of the task model has requires_grad False")
    check_lr_mult_prefixes(prefixes, (n for g in groups.values() for n in g["names"]), _part_prefix,
                           "this task's model")
    return [groups[k] for k in sorted(groups)]
