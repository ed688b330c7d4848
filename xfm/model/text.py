"""Language encoder: RoBERTa/BERT embeddings + post-LN BERT layers, HF parameter names.

``text.embeddings.{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm}`` and
``text.encoder.layer.{i}.*``, exactly as ``RobertaModel``/``BertModel`` without the pooler.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from xfm.model_config import TextConfig

from .bert import BertLayer, BertStack, init_bert_weights
from .norms import layer_norm
from .masks import TEXT_MASK_VALUE, additive_key_mask


def roberta_position_ids(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """RoBERTa positions: cumulative count of non-pad tokens + pad_id; pad tokens get pad_id."""
    not_pad = ids.ne(pad_id).long()
    return torch.cumsum(not_pad, dim=1) * not_pad + pad_id


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig, norm_impl: str = "torch"):
        super().__init__()
        self.position_style = cfg.position_style
        self.pad_token_id = cfg.pad_token_id
        self.max_positions = cfg.max_position_embeddings
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        # RoBERTa's position table has a padding row too (pad tokens sit at position pad_id)
        pos_pad = cfg.pad_token_id if cfg.position_style == "roberta" else None
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, padding_idx=pos_pad)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, norm_impl)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def position_ids(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if self.position_style == "roberta":
            if length + self.pad_token_id + 1 > self.max_positions:
                raise ValueError(
                    f"text length {length} too long: RoBERTa positions run up to length + pad_id "
                    f"({length + self.pad_token_id}) but text.max_position_embeddings is {self.max_positions}")
            return roberta_position_ids(ids, self.pad_token_id)
        if length > self.max_positions:
            raise ValueError(f"text length {length} exceeds text.max_position_embeddings {self.max_positions}")
        return torch.arange(length, device=ids.device).expand_as(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids)
        x = x + self.token_type_embeddings(torch.zeros_like(ids))
        x = x + self.position_embeddings(self.position_ids(ids))
        return self.dropout(self.LayerNorm(x))


class TextEncoder(nn.Module):
    """ids (B,L), mask (B,L) 1 = real token -> last hidden state (B,L,Dt)."""

    def __init__(self, cfg: TextConfig, backend: str | None = None, norm_impl: str = "torch",
                 init_std: float = 0.02):
        super().__init__()
        self.config = cfg
        self.init_std = init_std
        self.embeddings = TextEmbeddings(cfg, norm_impl)
        self.encoder = BertStack([
            BertLayer(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps,
                      cfg.hidden_dropout, cfg.attention_dropout, backend=backend, norm_impl=norm_impl)
            for _ in range(cfg.num_layers)])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"text ids and mask must both be (batch, length); got {tuple(ids.shape)} "
                             f"and {tuple(mask.shape)}")
        x = self.embeddings(ids)
        return self.encoder(x, additive_key_mask(mask, x.dtype, TEXT_MASK_VALUE))

    def init_weights(self) -> None:
        init_bert_weights(self, self.init_std)
