"""Vision encoder: BEiT-v2 ViT as the official X-FM uses it, timm/official parameter names.

Details that decide numerical parity with the official weights:
- q and v biases only (``attn.q_bias``, ``attn.v_bias``; k has none), added after the bias-free
  ``attn.qkv`` projection;
- a relative position bias table per block, (2H-1)(2W-1)+3 rows (the 3 extra rows: cls->token,
  token->cls, cls->cls), indexed by timm's ``gen_relative_position_index`` (non-persistent buffer);
  no absolute position embedding (``vision.abs_pos_embed: sincos`` adds a fixed 2-D sine-cosine
  table to the patch embeddings, after MIM masking so a masked patch keeps its position: a
  non-persistent buffer, for small models that cannot infer positions; off in every preset);
- layer scale ``gamma_1``/``gamma_2``; LayerNorm eps from the config (1e-6);
- the CLS token takes part in attention in every block but is then dropped: ``fc_norm`` is applied
  to the patch tokens and output token 0 is their mean, so ``out[:, 0] == out[:, 1:].mean(1)``;
- for MIM the mask token replaces patch embeddings before CLS is prepended.

Region pass (X-VLM "multi-grained" alignment, our exact choice): the first ``L - d`` blocks run
once per image (``d = region_attn_depth``); for every region row the hidden state of its image
after block ``L - d`` is taken and the last ``d`` blocks run again with the keys restricted to the
CLS token plus the patches that overlap the box (additive key mask, added to the relative position
bias; queries are not restricted, outputs outside the box are simply never attended to later).
``fc_norm`` then applies, and region token 0 is the mean of the **in-box** patch outputs. The
returned attention mask ``[1, in_box...]`` lets the fusion encoder cross-attend to token 0 and the
in-box patches only. With ``d = 0`` the region states are the full-image outputs with token 0
re-pooled over the box. A box covering no patch gives a zero pooled token (the loaders always
mark at least one patch).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.beit import gen_relative_position_index

from xfm import kernels
from xfm.model_config import VisionConfig

from .bert import merge_heads
from .masks import CROSS_MASK_VALUE, additive_key_mask
from .norms import is_layer_norm, layer_norm


class BeitAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, grid: int, backend: str | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.grid = grid
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        num_relative = (2 * grid - 1) * (2 * grid - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative, num_heads))
        self.register_buffer("relative_position_index", self._index(), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def _index(self, device=None) -> torch.Tensor:
        return gen_relative_position_index((self.grid, self.grid), device=device)

    def reset_buffers(self) -> None:
        """Recompute the index (after building on the meta device and ``to_empty``)."""
        self.relative_position_index = self._index(self.relative_position_bias_table.device)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        # k has no bias: same as F.linear(x, qkv.weight, cat(q_bias, 0, v_bias)), but the weight
        # is read only inside qkv's own call (ZeRO-3)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = self.qkv(x)
        qkv = (qkv + bias.to(qkv.dtype)).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        rel = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        mask = rel.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0).to(x.dtype)
        if key_mask is not None:
            mask = mask + key_mask
        return self.proj(merge_heads(kernels.attention(q, k, v, mask, backend=self.backend)))


class BeitBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, drop_path: float, backend: str | None = None,
                 norm_impl: str = "torch"):
        super().__init__()
        dim = cfg.hidden_size
        self.norm1 = layer_norm(dim, cfg.layer_norm_eps, norm_impl)
        self.attn = BeitAttention(dim, cfg.num_heads, cfg.grid, backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = layer_norm(dim, cfg.layer_norm_eps, norm_impl)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=nn.GELU)
        self.gamma_1 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
        self.gamma_2 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
        self.layer_scale_init = cfg.layer_scale_init

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def _with_pooled(patches: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, D) patch states -> (B, 1+N, D) with token 0 = their mean (over the box when given)."""
    if box is None:
        pooled = patches.mean(dim=1, keepdim=True)
    else:
        w = box.unsqueeze(-1).to(patches.dtype)
        pooled = (patches * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1.0)
    return torch.cat((pooled, patches), dim=1)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, backend: str | None = None, norm_impl: str = "torch",
                 init_std: float = 0.02):
        super().__init__()
        self.init_std = init_std
        if not 0 <= cfg.region_attn_depth <= cfg.num_layers:
            raise ValueError(f"vision.region_attn_depth {cfg.region_attn_depth} must lie in "
                             f"[0, vision.num_layers={cfg.num_layers}]")
        self.config = cfg
        dim = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        n = cfg.num_layers
        # stochastic depth rising linearly to cfg.drop_path (python floats: works on meta)
        rates = [cfg.drop_path * i / max(n - 1, 1) for i in range(n)]
        self.blocks = nn.ModuleList([BeitBlock(cfg, rates[i], backend, norm_impl) for i in range(n)])
        self.fc_norm = layer_norm(dim, cfg.layer_norm_eps, norm_impl)
        self.grad_checkpointing = False
        if cfg.abs_pos_embed == "sincos":
            self.register_buffer("pos_embed", self._sincos(), persistent=False)
        else:
            self.pos_embed = None

    def _sincos(self, device=None) -> torch.Tensor:
        grid = self.config.grid
        return build_sincos2d_pos_embed([grid, grid], self.config.hidden_size, device=device).unsqueeze(0)

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    def _run(self, x, blocks, key_mask=None):
        for blk in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, key_mask, use_reentrant=False)
            else:
                x = blk(x, key_mask)
        return x

    def _embed(self, pixels, mask_patches):
        x = self.patch_embed(pixels)  # (B, N, D)
        if mask_patches is not None:
            if mask_patches.shape != x.shape[:2]:
                raise ValueError(f"mask_patches must be (batch, {x.shape[1]}) bool, got {tuple(mask_patches.shape)}")
            w = mask_patches.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1)

    def _pool(self, hidden, box=None):
        """fc_norm on the patch tokens; token 0 = their mean (over the box when given)."""
        return _with_pooled(self.fc_norm(hidden[:, 1:]), box)

    def forward(self, pixels, mask_patches=None, region_image_index=None, region_patch_mask=None):
        """pixels (B,3,S,S) -> (B,1+N,D); with regions also (region_states, region_atts)."""
        x = self._embed(pixels, mask_patches)
        if region_image_index is None:
            return self._pool(self._run(x, self.blocks))
        if region_patch_mask is None or region_patch_mask.dim() != 2 \
                or region_patch_mask.shape[1] != self.num_patches \
                or region_patch_mask.shape[0] != region_image_index.shape[0]:
            raise ValueError(f"region_patch_mask must be (R={region_image_index.shape[0]}, "
                             f"N={self.num_patches}) bool, got "
                             f"{None if region_patch_mask is None else tuple(region_patch_mask.shape)}")
        box = region_patch_mask.bool()
        split = len(self.blocks) - self.config.region_attn_depth
        shared = self._run(x, self.blocks[:split])
        image_states = self._pool(self._run(shared, self.blocks[split:]))
        keys = torch.cat((torch.ones_like(box[:, :1]), box), dim=1)  # CLS + in-box patches
        if self.config.region_attn_depth == 0:
            region_states = _with_pooled(image_states[region_image_index, 1:], box)
        else:
            key_mask = additive_key_mask(keys, shared.dtype, CROSS_MASK_VALUE)
            region_hidden = self._run(shared[region_image_index], self.blocks[split:], key_mask)
            region_states = self._pool(region_hidden, box)
        return image_states, region_states, keys.long()

    def reset_buffers(self) -> None:
        for blk in self.blocks:
            blk.attn.reset_buffers()
        if self.pos_embed is not None:
            self.pos_embed = self._sincos(self.cls_token.device)

    def init_weights(self) -> None:
        """timm/BEiT init: trunc-normal(``init_std``; BEiT's 0.02) weights, zero biases, layer scale =
        init value, output projections scaled by 1/sqrt(2 * layer) (BEiT's ``fix_init_weight``)."""
        std = self.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif is_layer_norm(m):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.cls_token, std=std)
        trunc_normal_(self.mask_token, std=std)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks, start=1):
                nn.init.zeros_(blk.attn.q_bias)
                nn.init.zeros_(blk.attn.v_bias)
                nn.init.zeros_(blk.attn.relative_position_bias_table)
                blk.gamma_1.fill_(blk.layer_scale_init)
                blk.gamma_2.fill_(blk.layer_scale_init)
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))
            w = self.patch_embed.proj.weight
            trunc_normal_(w.view(w.shape[0], -1), std=std)
            nn.init.zeros_(self.patch_embed.proj.bias)
