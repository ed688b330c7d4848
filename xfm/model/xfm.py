"""The X-FM model: language, vision and fusion encoders plus the shared heads.

``XFM(config)`` exposes features, not a many-argument forward: ``encode_text``, ``encode_image``,
``encode_regions``, ``features``, ``fuse`` and the heads. The objectives
(``xfm.objectives``) combine them per data stream; ``forward(stream, batch, ctx)`` runs those, so a
DeepSpeed engine wrapping the model can be called directly.

Kernels: ``config.kernels.attention`` other than ``auto`` is passed to every attention call;
``auto`` passes nothing, so ``xfm.kernels.set_backend``/``backend_scope`` decide.
Compilation: ``config.compile`` compiles each encoder block in place (``xfm.model.compile``).
Meta device: ``with torch.device("meta"): XFM(cfg)`` builds without memory. ``to_empty`` and
``load_state_dict(..., assign=True)`` both replace Parameter objects (which unties the text MLM
decoder from the word embeddings) and leave the non-persistent relative position index empty, so:
after ``to_empty(device=...)`` call ``init_weights()``; after an ``assign=True`` load call
``tie_weights()`` and ``reset_buffers()``.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from xfm.model_config import ModelConfig, model_config

from .fusion import FusionEncoder
from .heads import Heads
from .text import TextEncoder
from .vision import VisionEncoder


class XFM(nn.Module):
    def __init__(self, config: ModelConfig | str = "base", *, init_weights: bool = True):
        """``init_weights=False`` leaves the parameters as their modules created them: for a caller
        that initialises them itself (the pretraining engine under DeepSpeed ``zero.Init``, where
        every submodule is already partitioned when this constructor ends, re-runs
        ``init_weights()`` with the parameters gathered), or that loads every weight next."""
        super().__init__()
        if isinstance(config, str):
            config = model_config(config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"XFM needs a ModelConfig or a size name, got {type(config).__name__}")
        self.config = config
        attn = None if config.kernels.attention == "auto" else config.kernels.attention
        norm = config.norm_impl
        std = config.init_std
        self.text = TextEncoder(config.text, backend=attn, norm_impl=norm, init_std=std)
        self.vision = VisionEncoder(config.vision, backend=attn, norm_impl=norm, init_std=std)
        self.fusion = FusionEncoder(config.fusion, config.text, config.vision.hidden_size, backend=attn,
                                    norm_impl=norm, init_std=std)
        self.heads = Heads(config, tied_word_embeddings=self.text.embeddings.word_embeddings.weight)
        self.set_grad_checkpointing(config.grad_checkpointing)
        if init_weights:
            self.init_weights()
        if config.compile:
            self.compile_blocks()

    # ----------------------------------------------------------------------------- set-up
    def init_weights(self) -> None:
        """Fresh random init of every parameter (re-ties and recomputes non-persistent buffers)."""
        self.tie_weights()
        self.heads.init_weights()
        self.fusion.init_weights()
        self.vision.init_weights()
        self.text.init_weights()  # last: the tied text decoder gets the embedding init
        self.reset_buffers()

    def tie_weights(self) -> None:
        """The text MLM decoder weight IS the word-embedding Parameter (HF-style tie)."""
        self.heads.text_mlm.decoder.weight = self.text.embeddings.word_embeddings.weight

    def reset_buffers(self) -> None:
        """Recompute the non-persistent buffers (BEiT relative position index)."""
        self.vision.reset_buffers()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per layer in all three encoders (torch.utils.checkpoint)."""
        self.config = replace(self.config, grad_checkpointing=bool(enable))
        self.text.encoder.grad_checkpointing = bool(enable)
        self.fusion.encoder.grad_checkpointing = bool(enable)
        self.vision.grad_checkpointing = bool(enable)

    def compile_blocks(self, **compile_kwargs) -> int:
        """``torch.compile`` every encoder block in place (``config.compile`` does this at
        construction); see ``xfm.model.compile``. Returns the number of blocks."""
        from .compile import compile_blocks
        self.config = replace(self.config, compile=True)
        return compile_blocks(self, **compile_kwargs)

    @classmethod
    def from_pretrained(cls, path, num_heads: int | None = None, **overrides) -> "XFM":
        """Load any supported format (our dir, official ``.th``, HF BERT/RoBERTa dir, timm BEiT-v2
        state dict); see ``xfm.checkpoint``."""
        from xfm.checkpoint.load import load_pretrained
        return load_pretrained(path, num_heads=num_heads, **overrides)

    def save_pretrained(self, directory) -> None:
        """``directory/model.safetensors`` + ``directory/config.yaml``."""
        from xfm.checkpoint.load import save_pretrained
        return save_pretrained(self, directory)

    # ----------------------------------------------------------------------------- encoders
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,L) ids and 0/1 mask -> language encoder last hidden state (B,L,Dt)."""
        return self.text(ids, mask)

    def encode_image(self, pixels: torch.Tensor, mask_patches: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,S,S) -> (B,1+N,Dv): token 0 = mean of the patch outputs. ``mask_patches`` (B,N)
        bool replaces those patch embeddings by the mask token (MIM)."""
        return self.vision(pixels, mask_patches)

    def encode_regions(self, pixels, region_image_index, region_patch_mask, return_image_states=False):
        """Box-pooled, box-restricted region states (see ``xfm.model.vision`` for the exact rule).

        pixels (I,3,S,S), region_image_index (R,) into the images, region_patch_mask (R,N) bool ->
        ``(region_states (R,1+N,Dv), region_atts (R,1+N) long)``; with ``return_image_states`` the
        full-image states (I,1+N,Dv) come first (computed in the same pass, shared blocks once).
        """
        image_states, region_states, region_atts = self.vision(
            pixels, None, region_image_index, region_patch_mask)
        if return_image_states:
            return image_states, region_states, region_atts
        return region_states, region_atts

    def image_features(self, image_states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads.vision_proj(image_states[:, 0]), dim=-1)

    def text_features(self, text_states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads.text_proj(text_states[:, 0]), dim=-1)

    def features(self, image_states, text_states):
        """L2-normalised (B,E) image and text embeddings from token 0 of each encoder."""
        return self.image_features(image_states), self.text_features(text_states)

    def fuse(self, image_states, image_mask, text_states, text_mask) -> torch.Tensor:
        """Fusion encoder over the given text states (not detached here: the objectives decide)."""
        return self.fusion(text_states, text_mask, image_states, image_mask)

    # ----------------------------------------------------------------------------- heads
    @staticmethod
    def _cls(fused):
        return fused[:, 0] if fused.dim() == 3 else fused

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused states (B,L,Dt) (or their token 0, (B,Dt)) -> (B,2) match logits."""
        return self.heads.itm(self._cls(fused))

    def predict_bbox(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused states (or token 0) -> (B,4) sigmoid (cx, cy, w, h) in [0,1]."""
        return self.heads.bbox(self._cls(fused)).sigmoid()

    def text_mlm_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.heads.text_mlm(states)

    def fusion_mlm_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.heads.fusion_mlm(states)

    def forward(self, stream: str, batch: dict, ctx=None) -> dict:
        """Named losses of one stream's batch (``xfm.objectives.STREAM_LOSSES[stream]``)."""
        from xfm.objectives import STREAM_LOSSES, LossContext
        if stream not in STREAM_LOSSES:
            raise ValueError(f"unknown stream {stream!r}; known: {sorted(STREAM_LOSSES)}")
        return STREAM_LOSSES[stream](self, batch, ctx or LossContext())


# names the paper's 327M leaves out, in our layout: the fusion MLM decoder matrix is the official
# fusion encoder's word-embedding table (unused by the fusion encoder itself); the paper also
# drops the fusion embeddings' positions/LayerNorm and the two caption heads, which we do not have
PAPER_EXCLUDED = ("heads.fusion_mlm.decoder.weight",)


def count_parameters(model: nn.Module, paper: bool = False) -> int:
    """Unique parameters (tied ones once); ``paper=True`` counts as the X-FM paper does."""
    total = 0
    for name, p in model.named_parameters():  # named_parameters yields a tied Parameter once
        if paper and name in PAPER_EXCLUDED:
            continue
        total += p.numel()
    return total
