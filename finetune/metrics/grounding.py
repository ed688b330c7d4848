"""Referring-expression grounding: box IoU as the original evaluation computes it, and accuracy at
IoU >= 0.5 (a fraction in [0, 1], as the original reports it).

The original IoU treats [x, y, w, h] as the inclusive pixel range x .. x+w-1 (so a box covers
w * h pixels): the intersection is (x2 - x1 + 1) * (y2 - y1 + 1) over the inclusive corners, and
the union is w1*h1 + w2*h2 - intersection. Two quirks are kept because published numbers come
from them: the intersection counts only when x1 < x2 and y1 < y2 strictly (an overlap one pixel
wide counts as none), and coordinates are not rounded. Where the original divides by zero (two
zero-area boxes) the IoU here is 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._arrays import as_numpy


def _boxes(values, name: str, allow_nan: bool) -> np.ndarray:
    boxes = as_numpy(values, name, np.float64)
    if boxes.shape[-1:] != (4,) or boxes.ndim > 2:
        raise ValueError(f"{name}: expected [x, y, w, h] boxes of shape (4,) or (N, 4), got {boxes.shape}")
    nan = np.isnan(boxes)
    if nan.any() and not allow_nan:
        raise ValueError(f"{name}: boxes contain NaN")
    sizes = np.where(nan, 0.0, boxes)[..., 2:]
    if (sizes < 0).any():
        raise ValueError(f"{name}: box width and height must be >= 0")
    return boxes


def box_iou_inclusive(a, b):
    """IoU of [x, y, w, h] boxes, pairwise along the leading axis (shapes (4,) or (N, 4),
    broadcast). Returns a float for two single boxes, else an (N,) array. A NaN in ``a``
    (a diverged prediction) gives IoU 0; NaN in ``b`` is an error."""
    a = _boxes(a, "a", allow_nan=True)
    b = _boxes(b, "b", allow_nan=False)
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 0] + a[..., 2] - 1, b[..., 0] + b[..., 2] - 1)
    y2 = np.minimum(a[..., 1] + a[..., 3] - 1, b[..., 1] + b[..., 3] - 1)
    overlaps = (x1 < x2) & (y1 < y2)
    inter = np.where(overlaps, (x2 - x1 + 1) * (y2 - y1 + 1), 0.0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    iou = np.nan_to_num(iou, nan=0.0)
    return float(iou) if iou.ndim == 0 else iou


def normalized_cxcywh_to_xywh(boxes, widths, heights) -> np.ndarray:
    """Box-head outputs (centre x, centre y, w, h in [0, 1] of the image) to [x, y, w, h] pixels
    of an image of the given size, as the original evaluation converts them before the IoU."""
    boxes = as_numpy(boxes, "boxes", np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes: expected (..., 4), got {boxes.shape}")
    w = as_numpy(widths, "widths", np.float64)
    h = as_numpy(heights, "heights", np.float64)
    out = boxes.copy()
    out[..., 0::2] *= w[..., None] if w.ndim else w
    out[..., 1::2] *= h[..., None] if h.ndim else h
    out[..., 0] -= out[..., 2] / 2
    out[..., 1] -= out[..., 3] / 2
    return out


def grounding_accuracy(pred_boxes, gt_boxes, threshold: float = 0.5) -> float:
    """Share of predictions whose inclusive-pixel IoU with the ground truth is >= threshold."""
    iou = np.atleast_1d(box_iou_inclusive(pred_boxes, gt_boxes))
    if iou.size == 0:
        raise ValueError("grounding_accuracy: no boxes")
    return float(np.mean(iou >= threshold))


def grounding_accuracy_by_split(pred_boxes, gt_boxes, splits: Sequence[str],
                                threshold: float = 0.5) -> dict:
    """{split: accuracy} for RefCOCO-style per-split reporting (val / testA / testB)."""
    iou = np.atleast_1d(box_iou_inclusive(pred_boxes, gt_boxes))
    splits = list(splits)
    if len(splits) != len(iou):
        raise ValueError(f"splits has {len(splits)} entries but there are {len(iou)} boxes")
    result = {}
    for split in dict.fromkeys(splits):
        chosen = np.array([s == split for s in splits])
        result[split] = float(np.mean(iou[chosen] >= threshold))
    return result
