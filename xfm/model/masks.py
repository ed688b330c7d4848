"""Additive attention masks (0 where a key may be attended, a large negative where not).

The values are the ones the official code uses, so that the same weights give the same numbers:
``(1 - mask) * -10000`` for text self-attention (HF BERT/RoBERTa), ``(1 - mask) * -1e9`` for the
fusion encoder's cross-attention to image tokens and for box-restricted vision attention. In
half precision -1e9 does not fit, so the constant is clipped to the dtype's most negative value.
"""
from __future__ import annotations

import torch

TEXT_MASK_VALUE = -10000.0
CROSS_MASK_VALUE = -1e9


def additive_key_mask(mask: torch.Tensor, dtype: torch.dtype, value: float) -> torch.Tensor:
    """(B, Lk) 0/1 (or bool) keep-mask -> (B, 1, 1, Lk) additive float mask of ``dtype``."""
    if mask.dim() != 2:
        raise ValueError(f"attention mask must be (batch, keys), got shape {tuple(mask.shape)}")
    value = max(value, torch.finfo(dtype).min)
    return ((1.0 - mask.to(dtype)) * value)[:, None, None, :]
