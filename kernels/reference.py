"""Pure-PyTorch references of the fused ops: the spec every fast path must match."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, mask=None, *, dropout_p: float = 0.0, scale: float | None = None):
    """softmax(q k^T * scale + mask) v.

    q: (B, H, Lq, D); k, v: (B, H, Lk, D); mask: additive float tensor broadcastable to
    (B, H, Lq, Lk) (key padding is (B, 1, 1, Lk) holding 0 or a large negative; BEiT's relative
    position bias is (1, H, L, L)), or None. Returns (B, H, Lq, D) in q's dtype. Masks are finite
    (the model's are -1e4 / -1e9): a row whose every key is -inf gives NaN here where SDPA's
    math path gives 0.

    Two exact forms, chosen by what was measured on CPU (interleaved A/B, fp32, training and no-grad,
    at the tiny, 64 px / width 128 and 224 px / width 384 shapes, head dim 16 and 64):
    - with dropout, ``F.scaled_dot_product_attention`` cannot use its fused CPU kernel and runs
      its math fallback, whose extra checks (``aten::all``, ``where``, an extra ``mul``) made it
      1.1-1.3x slower than the plain matmul-softmax-dropout-matmul below; the plain form draws
      its dropout mask with the same ``torch.dropout`` call on the same (B, H, Lq, Lk) shape, so it
      consumes the random numbers exactly as SDPA does (same mask under ``torch.manual_seed``);
    - without dropout SDPA's fused CPU kernel was as fast or faster (up to 1.7x at 197 tokens),
      and on CUDA it is flash/memory-efficient attention: SDPA stays.
    """
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    if dropout_p > 0.0 and q.device.type == "cpu":
        return _attention_with_dropout(q, k, v, mask, dropout_p, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _attention_with_dropout(q, k, v, mask, dropout_p: float, scale: float | None):
    # SDPA's math path scales q and k by sqrt(scale) each (keeps the product in range in half
    # precision); done the same way here so both round alike
    root = math.sqrt(q.shape[-1] ** -0.5 if scale is None else scale)
    scores = (q * root) @ (k * root).transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    return torch.dropout(probs, dropout_p, True) @ v


def contrastive_loss_reference(image_feat, text_feat, temp, image_ids=None):
    """Symmetric InfoNCE of ITC over already-gathered, L2-normalised features.

    image_feat, text_feat: (N, d); temp: scalar tensor (already clamped); image_ids: (N,) long or
    None. Row i of both is a positive pair; with ``image_ids`` every pair sharing an image id is a
    positive and the target is uniform over positives (soft targets). Returns
    (loss_i2t + loss_t2i) / 2, each the mean over rows. Materialises the N x N logits.
    """
    logits = image_feat @ text_feat.t() / temp
    if image_ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.t().float(), labels)) / 2
    ids = image_ids.view(-1, 1)
    pos = (ids == ids.t()).float()
    targets = pos / pos.sum(1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits.float(), dim=1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(logits.t().float(), dim=1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


def attention_with_keep_mask(q, k, v, mask, keep, dropout_p: float, scale: float | None = None):
    """Attention with a given dropout keep-mask (boolean, broadcastable to (B, H, Lq, Lk)):
    softmax(q k^T * scale + mask) * keep / (1 - dropout_p), then @ v. With the mask the fused kernel
    draws (``attention_triton.dropout_keep_mask``), this is the spec the fused dropout must match;
    ``F.scaled_dot_product_attention`` applies the same formula with its own random mask."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.to(q.dtype)
    probs = torch.softmax(scores, dim=-1)
    return (probs * keep / (1.0 - dropout_p)) @ v
