"""One function per X-FM pretraining objective (spec: docs/METHOD.md).

Each takes the model plus the tensors it needs and returns scalar loss(es); the per-stream
composers in ``xfm.objectives.streams`` encode each input once and call these. Stop-gradient
(technique 1) is applied here, where language states enter the fusion encoder (ITM, fusion MLM,
box), so every function is correct on its own: ``model.config.stop_text_grad`` decides.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

from xfm import kernels
from xfm.distributed import gather_no_grad, gather_with_grad
from xfm.hard_negatives import NoNegativeError, sample_hard_negatives

IGNORE_INDEX = -100


@dataclass
class LossContext:
    """What the objectives need from the run: the data-parallel group for ITC (``world_size == 1``
    -> no collective at all), this process's rank within it, and an optional generator for the
    hard-negative draws (on the features' device)."""

    group: Any = None
    world_size: int = 1
    rank: int = 0
    generator: torch.Generator | None = None


def fusion_text_input(model, text_states: torch.Tensor) -> torch.Tensor:
    """Language states as the fusion encoder sees them: detached when ``stop_text_grad``."""
    return text_states.detach() if model.config.stop_text_grad else text_states


def encode_text_for_fusion(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Encode text that only the fusion encoder uses (masked captions). Under stop-gradient the
    language encoder gets no gradient from it anyway, so it runs without building a graph."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.config.stop_text_grad):
        return model.encode_text(ids, mask)


def masked_lm_loss(head, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions whose label is not -100; the vocab projection runs only on
    those rows (a B x L x V logit tensor would dominate memory). A batch with no masked token gives
    a zero loss that still calls the head (ZeRO-3 ranks must call the same modules)."""
    if labels.shape != states.shape[:2]:
        raise ValueError(f"mlm_labels shape {tuple(labels.shape)} does not match the text {tuple(states.shape[:2])}")
    picked = labels != IGNORE_INDEX
    logits = head(states[picked])
    loss = F.cross_entropy(logits.float(), labels[picked], reduction="sum")
    return loss / picked.sum().clamp(min=1)


def text_mlm_loss(model, ids_masked, mask, labels) -> torch.Tensor:
    """Text MLM on the language encoder (text stream)."""
    return masked_lm_loss(model.text_mlm_logits, model.encode_text(ids_masked, mask), labels)


def _contrastive_backend(model):
    choice = model.config.kernels.contrastive
    return None if choice == "auto" else choice


def itc_loss(model, image_feat, text_feat, temp, ctx: LossContext, image_ids=None) -> torch.Tensor:
    """Symmetric InfoNCE over features gathered from every rank (gradient through the local
    slice); with ``image_ids`` the targets are uniform over every pair showing the same image."""
    img = gather_with_grad(image_feat, ctx.group, ctx.world_size, ctx.rank)
    txt = gather_with_grad(text_feat, ctx.group, ctx.world_size, ctx.rank)
    ids = None if image_ids is None else gather_no_grad(image_ids, ctx.group, ctx.world_size)
    return kernels.contrastive_loss(img, txt, temp, ids, backend=_contrastive_backend(model))


def itm_loss(model, image_states, image_atts, text_states, text_mask, image_feat, text_feat,
             temp, ctx: LossContext, image_ids=None, host_image_ids=None) -> torch.Tensor:
    """ITM with hard negatives drawn from the local batch (one vectorised draw per direction).

    3B fusion rows: B positives (text i, image i), B (text i, negative image for text i),
    B (negative text for image i, image i); labels [1]*B + [0]*2B.

    A batch in which every sample shows the same picture has no negative at all: it is skipped
    deliberately (warning, loss 0 with the same computation, so every ZeRO-3 rank still calls
    the same modules) rather than labelling a matching pair "no match" or stopping the run.
    """
    b = image_states.shape[0]
    weight = 1.0
    with torch.no_grad():
        sim_i2t = image_feat @ text_feat.t() / temp
        try:
            neg_image, neg_text = sample_hard_negatives(sim_i2t, sim_i2t.t(), image_ids, ctx.generator,
                                                         host_image_ids=host_image_ids)
        except NoNegativeError as err:
            warnings.warn(f"ITM skipped for this batch (loss 0): {err}", RuntimeWarning, stacklevel=2)
            neg_image = neg_text = torch.arange(b, device=image_states.device)
            weight = 0.0
    text_states = fusion_text_input(model, text_states)
    images = torch.cat((image_states, image_states[neg_image], image_states), dim=0)
    atts = None if image_atts is None else torch.cat((image_atts, image_atts[neg_image], image_atts), dim=0)
    texts = torch.cat((text_states, text_states, text_states[neg_text]), dim=0)
    masks = torch.cat((text_mask, text_mask, text_mask[neg_text]), dim=0)
    logits = model.itm_logits(model.fuse(images, atts, texts, masks))
    labels = torch.zeros(3 * b, dtype=torch.long, device=logits.device)
    labels[:b] = 1
    return F.cross_entropy(logits.float(), labels) * weight


def fusion_mlm_loss(model, image_states, image_atts, masked_text_states, text_mask, labels) -> torch.Tensor:
    """Masked caption through the fusion encoder (cross-attending to the image) -> fusion LM head."""
    fused = model.fuse(image_states, image_atts, fusion_text_input(model, masked_text_states), text_mask)
    return masked_lm_loss(model.fusion_mlm_logits, fused, labels)


def giou_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """Per-row 1 - GIoU of (cx, cy, w, h) boxes (torchvision's paired GIoU loss)."""
    return generalized_box_iou_loss(box_convert(pred_cxcywh, "cxcywh", "xyxy"),
                                    box_convert(target_cxcywh, "cxcywh", "xyxy"), reduction="none")


def bbox_losses(model, image_states, text_states, text_mask, target_boxes, is_whole_image):
    """Box regression from fusion token 0 of (full image, phrase): ``(l1, 1 - giou)``.

    Every row is fused (static shapes, same modules on every rank); whole-image rows are masked
    out and both losses are sums over the box rows divided by their number (X-VLM's
    normalisation: L1 summed over the 4 coordinates).
    """
    fused = model.fuse(image_states, None, fusion_text_input(model, text_states), text_mask)
    pred = model.predict_bbox(fused).float()
    target = target_boxes.to(pred.dtype)
    keep = (~is_whole_image.bool()).to(pred.dtype)
    count = keep.sum().clamp(min=1)
    l1 = (F.l1_loss(pred, target, reduction="none").sum(1) * keep).sum() / count
    giou = (giou_loss(pred, target) * keep).sum() / count
    return l1, giou


def mim_loss(model, pixels, mim_mask, target_states) -> torch.Tensor:
    """MIM guided by VL training: encode with ``mim_mask`` patches replaced by the mask token;
    MSE to the detached unmasked output over the masked patch tokens + MSE on the pooled token."""
    target = target_states.detach().float()
    pred = model.encode_image(pixels, mim_mask.bool()).float()
    w = mim_mask.to(pred.dtype).unsqueeze(-1)
    sq = (pred[:, 1:] - target[:, 1:]).pow(2) * w
    patch = sq.sum() / (w.sum().clamp(min=1) * pred.shape[-1])
    pooled = F.mse_loss(pred[:, 0], target[:, 0])
    return patch + pooled
