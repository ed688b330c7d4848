"""Region boxes: parse, check against the image, map into the stored image's pixels.

A box is ``[x, y, w, h]`` in pixels. A box that pokes out of the image by at most
``tolerance`` pixels (annotation tools round outward; Visual Genome has many such boxes) is clipped
and counted; a box further out, or empty, is rejected with a reason, never silently changed."""
from __future__ import annotations

import math

DEFAULT_TOLERANCE = 2.0


class BoxError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_box(value) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise BoxError("invalid_box", f"bbox must be [x, y, w, h], got {value!r}")
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise BoxError("invalid_box", f"bbox values must be numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise BoxError("invalid_box", f"bbox has non-finite values {value!r}")
    if box[2] <= 0 or box[3] <= 0:
        raise BoxError("invalid_box", f"bbox has non-positive width/height {value!r}")
    return box


def fit_box(box, width: float, height: float, tolerance: float = DEFAULT_TOLERANCE):
    """-> (box clipped to the image, clipped: bool) or BoxError('box_outside_image')."""
    x, y, w, h = box
    x1, y1 = x + w, y + h
    if x < -tolerance or y < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        raise BoxError("box_outside_image",
                       f"bbox {[round(v, 2) for v in box]} outside image {width}x{height}")
    cx0, cy0 = max(0.0, x), max(0.0, y)
    cx1, cy1 = min(float(width), x1), min(float(height), y1)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        raise BoxError("box_outside_image", f"bbox {box} has no area inside the image")
    clipped = (cx0, cy0, cx1, cy1) != (x, y, x1, y1)
    return [cx0, cy0, cx1 - cx0, cy1 - cy0], clipped


def round_box(box, ndigits: int = 2) -> list[float]:
    return [round(v, ndigits) for v in box]
