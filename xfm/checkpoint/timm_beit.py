"""timm BEiT / BEiT-v2 state dicts -> our vision encoder.

Accepts ``.pth``/``.bin``/``.pt``/``.safetensors`` files holding a timm ``Beit`` state dict,
bare or wrapped in ``{'model': ...}`` / ``{'state_dict': ...}`` (with or without a ``module.``
prefix). Our vision encoder keeps timm's names, so blocks, patch embedding, CLS token and
``fc_norm`` map one to one. Dropped, documented:

- ``head.*``: timm's classifier.
- ``norm.*``: timm's final LayerNorm over all tokens of a CLS-pooled model (or of a BEiT-v2
  pretraining checkpoint). X-FM has no such norm: it applies ``fc_norm`` to the patch tokens and
  takes their mean as token 0. A checkpoint without ``fc_norm`` therefore reports
  ``vision.fc_norm.*`` as missing.
- ``relative_position_index`` buffers (recomputed; checked against ours when the model exposes it),
  BEiT-v2 pretraining heads (``lm_head.*``, ``cls_pt_layers.*``).

A shared relative position table (``rel_pos_bias.relative_position_bias_table``, BEiT
pretraining with ``use_shared_rel_pos_bias``) is copied into every block, as BEiT fine-tuning does.
timm checkpoints have no mask token: ``vision.mask_token`` is new by design.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .apply import apply_mapped
from .files import find_state_dict, read_file
from .report import CheckpointError, LoadReport

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_IGNORABLE = [
    (re.compile(r"^head\."), "timm classifier head"),
    (re.compile(r"^norm\."), "timm final norm over all tokens (X-FM uses fc_norm on the patch tokens)"),
    (re.compile(r"relative_position_index$"), "relative_position_index buffer (recomputed)"),
    (re.compile(r"^(lm_head|cls_pt_layers)\."), "BEiT-v2 pretraining head"),
]
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


def looks_like_beit(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.endswith("attn.qkv.weight") for k in sd) \
        and "cls_token" in sd


def count_layers(keys, pattern: re.Pattern) -> int:
    idx = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if idx and idx != set(range(len(idx))):
        raise CheckpointError(f"layer indices are not contiguous: {sorted(idx)}")
    return len(idx)


def grid_from_table_rows(rows: int, source: str, key: str) -> int:
    """(2g-1)^2 + 3 rows (3 = cls->token, token->cls, cls->cls) -> g."""
    side = math.isqrt(rows - 3) if rows > 3 else 0
    if rows <= 3 or side * side != rows - 3 or side % 2 == 0:
        raise CheckpointError(f"{source}: {key} has {rows} rows, not (2g-1)^2 + 3 for a square "
                              f"patch grid g")
    return (side + 1) // 2


def infer_vision_fields(sd: Mapping[str, torch.Tensor], source: str) -> dict:
    """Vision config fields from a BEiT state dict with timm names (no prefix)."""
    def need(key):
        if key not in sd:
            raise CheckpointError(f"{source}: missing {key!r}, cannot infer the vision encoder's shape")
        return sd[key]
    proj = need("patch_embed.proj.weight")
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(proj.shape)}, "
                              f"expected (width, 3, patch, patch)")
    hidden, patch = int(proj.shape[0]), int(proj.shape[-1])
    layers = count_layers(sd, _BLOCK)
    if layers == 0:
        raise CheckpointError(f"{source}: no 'blocks.N.' keys, not a BEiT vision encoder")
    table_key = "blocks.0.attn.relative_position_bias_table"
    if table_key not in sd:
        table_key = SHARED_TABLE
    table = need(table_key)
    grid = grid_from_table_rows(int(table.shape[0]), source, table_key)
    heads = int(table.shape[1])
    index = sd.get("blocks.0.attn.relative_position_index")
    if index is not None and tuple(index.shape) != (grid * grid + 1,) * 2:
        raise CheckpointError(f"{source}: relative_position_index {tuple(index.shape)} does not fit "
                              f"the {grid}x{grid} grid of the relative position table")
    fc1 = need("blocks.0.mlp.fc1.weight")
    return dict(hidden_size=hidden, patch_size=patch, image_size=grid * patch, num_layers=layers,
                num_heads=heads, mlp_ratio=float(fc1.shape[0]) / hidden)


def map_beit(sd: Mapping[str, torch.Tensor], prefix_out: str = "vision."):
    """timm BEiT names -> ours. Returns (mapped, ignored, unused)."""
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    ignored: dict[str, str] = {}
    unused: list[str] = []
    for k, v in sd.items():
        reason = next((r for rx, r in _IGNORABLE if rx.search(k)), None)
        if reason:
            ignored[k] = reason
        elif k == SHARED_TABLE:
            depth = count_layers(sd, _BLOCK)
            for i in range(depth):
                per_block = f"blocks.{i}.attn.relative_position_bias_table"
                if per_block not in sd:
                    mapped[f"{prefix_out}{per_block}"] = (k, v)
        elif k in ("cls_token", "mask_token") or k.startswith(("patch_embed.", "blocks.", "fc_norm.")):
            mapped[prefix_out + k] = (k, v)
        else:
            unused.append(k)  # e.g. pos_embed: BEiT-v2 as used by X-FM has no absolute positions
    return mapped, ignored, unused


def check_relative_position_index(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                                  src_prefix: str = "", our_prefix: str = "vision.") -> None:
    """The index buffer is recomputed by our model; a checkpoint whose index differs was made
    with another relative-position convention and would not compute the same."""
    for k, v in sd.items():
        if not k.endswith("relative_position_index") or not k.startswith(src_prefix) or v.is_meta:
            continue
        ours_name = our_prefix + k[len(src_prefix):]
        try:
            ours = model.get_buffer(ours_name)
        except AttributeError:
            continue  # the model keeps the index elsewhere (or shares one): nothing to compare
        if ours is None or ours.is_meta or tuple(ours.shape) != tuple(v.shape):
            continue  # another grid: the table's shape check reports it with both shapes
        if not torch.equal(ours.to(v.dtype), v):
            raise CheckpointError(f"{source}: {k} differs from the index our model computes "
                                  f"({ours_name}); the checkpoint uses another relative position layout")


def read_beit_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    sd = find_state_dict(read_file(path), path)
    if not looks_like_beit(sd):
        raise CheckpointError(f"{path}: not a timm BEiT state dict (expected cls_token, "
                              f"patch_embed.proj.weight, blocks.N.attn.qkv.weight); keys: {list(sd)[:8]}")
    return sd


def load_timm_beit(model: nn.Module, path_or_sd, *, source: str | None = None) -> LoadReport:
    """Load a timm BEiT(-v2) state dict (file path, or an already-read mapping) into ``model.vision``."""
    if isinstance(path_or_sd, Mapping):
        sd, source = dict(path_or_sd), source or "<state dict>"
    else:
        sd, source = read_beit_file(path_or_sd), source or str(path_or_sd)
    mapped, ignored, unused = map_beit(sd)
    check_relative_position_index(model, sd, source)
    return apply_mapped(model, mapped, source=source, fmt="timm-beit",
                        in_scope=lambda k: k.startswith("vision."),
                        is_new=lambda k: k == "vision.mask_token" and "mask_token" not in sd,
                        ignored=ignored, unused=unused)
