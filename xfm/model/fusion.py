"""Fusion encoder: in every layer self-attention -> cross-attention to image tokens -> FFN.

Its input is the language encoder's last hidden state as is (the official fusion encoder's own
embedding layer is bypassed: no LayerNorm, no position add), so it has no embeddings here.
Parameter names: ``fusion.encoder.layer.{i}.{attention,crossattention}.{self,output}.*``.
Masks: text self-attention ``(1-mask)*-10000``, cross-attention ``(1-mask)*-1e9``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from xfm.model_config import FusionConfig, TextConfig

from .bert import BertLayer, BertStack, init_bert_weights
from .masks import CROSS_MASK_VALUE, TEXT_MASK_VALUE, additive_key_mask


class FusionEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig, text: TextConfig, vision_width: int, backend: str | None = None,
                 norm_impl: str = "torch", init_std: float = 0.02):
        super().__init__()
        self.init_std = init_std
        if text.hidden_size % cfg.num_heads:
            raise ValueError(f"fusion.num_heads {cfg.num_heads} does not divide the text width {text.hidden_size}")
        self.encoder = BertStack([
            BertLayer(text.hidden_size, cfg.num_heads, cfg.intermediate_size, text.layer_norm_eps,
                      cfg.hidden_dropout, cfg.attention_dropout, cross_kv_size=vision_width,
                      backend=backend, norm_impl=norm_impl)
            for _ in range(cfg.num_layers)])

    def forward(self, text_states, text_mask, image_states, image_mask=None) -> torch.Tensor:
        if text_states.shape[0] != image_states.shape[0]:
            raise ValueError(f"fuse: {text_states.shape[0]} text rows but {image_states.shape[0]} image rows")
        dtype = text_states.dtype
        return self.encoder(text_states,
                            additive_key_mask(text_mask, dtype, TEXT_MASK_VALUE),
                            image_states,
                            # no mask = every image token visible (adding zeros would change nothing)
                            None if image_mask is None else additive_key_mask(image_mask, dtype, CROSS_MASK_VALUE))

    def init_weights(self) -> None:
        init_bert_weights(self, self.init_std)
