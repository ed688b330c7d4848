"""BERT/RoBERTa layers (post-LN) shared by the language and the fusion encoder.

Module and parameter names are Hugging Face's (``attention.self.query``, ``attention.output.LayerNorm``,
``intermediate.dense``, ``output.dense``...), so HF and official X-FM weights map one to one.
Every attention goes through ``xfm.kernels.attention``. Every parameter is read only inside the
``__call__`` of the module that owns it (ZeRO-3 gathers parameters per module).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xfm import kernels

from .norms import is_layer_norm, layer_norm


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class BertSelfAttention(nn.Module):
    """Multi-head attention; keys/values come from ``context`` (cross-attention) or ``hidden``."""

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float,
                 kv_size: int | None = None, backend: str | None = None):
        super().__init__()
        kv_size = kv_size or hidden_size
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(kv_size, hidden_size)
        self.value = nn.Linear(kv_size, hidden_size)
        self.attention_dropout = attention_dropout
        self.backend = backend

    def forward(self, hidden, mask=None, context=None):
        kv = hidden if context is None else context
        q = split_heads(self.query(hidden), self.num_heads)
        k = split_heads(self.key(kv), self.num_heads)
        v = split_heads(self.value(kv), self.num_heads)
        p = self.attention_dropout if self.training else 0.0
        out = kernels.attention(q, k, v, mask, dropout_p=p, backend=self.backend)
        return merge_heads(out)


class BertSelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual) (post-LN)."""

    def __init__(self, in_size: int, hidden_size: int, eps: float, dropout: float, norm_impl: str = "torch"):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = layer_norm(hidden_size, eps, norm_impl)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, eps, hidden_dropout, attention_dropout,
                 kv_size=None, backend=None, norm_impl="torch"):
        super().__init__()
        self.self = BertSelfAttention(hidden_size, num_heads, attention_dropout, kv_size, backend)
        self.output = BertSelfOutput(hidden_size, hidden_size, eps, hidden_dropout, norm_impl)

    def forward(self, hidden, mask=None, context=None):
        return self.output(self.self(hidden, mask, context), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT/RoBERTa


class BertLayer(nn.Module):
    """self-attention [-> cross-attention to ``context``] -> FFN, each post-LN."""

    def __init__(self, hidden_size, num_heads, intermediate_size, eps, hidden_dropout,
                 attention_dropout, cross_kv_size: int | None = None, backend=None, norm_impl="torch"):
        super().__init__()
        self.attention = BertAttention(hidden_size, num_heads, eps, hidden_dropout,
                                       attention_dropout, backend=backend, norm_impl=norm_impl)
        if cross_kv_size is not None:
            self.crossattention = BertAttention(hidden_size, num_heads, eps, hidden_dropout,
                                                attention_dropout, kv_size=cross_kv_size,
                                                backend=backend, norm_impl=norm_impl)
        else:
            self.crossattention = None
        self.intermediate = BertIntermediate(hidden_size, intermediate_size)
        self.output = BertSelfOutput(intermediate_size, hidden_size, eps, hidden_dropout, norm_impl)

    def forward(self, hidden, mask=None, context=None, context_mask=None):
        hidden = self.attention(hidden, mask)
        if self.crossattention is not None:
            if context is None:
                raise ValueError("this layer cross-attends: pass the image states as context")
            hidden = self.crossattention(hidden, context_mask, context)
        return self.output(self.intermediate(hidden), hidden)


class BertStack(nn.Module):
    """``layer.{i}`` list with optional activation checkpointing per layer."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)
        self.grad_checkpointing = False

    def forward(self, hidden, mask=None, context=None, context_mask=None):
        for layer in self.layer:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(
                    layer, hidden, mask, context, context_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, mask, context, context_mask)
        return hidden


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """HF BERT/RoBERTa init: N(0, std) weights (0.02: ``initializer_range``), zero biases, unit
    LayerNorm, zero padding row."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif is_layer_norm(m):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
