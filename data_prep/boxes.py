"""Region boxes: parse, check against the image, clip to it.

A box is ``[x, y, w, h]`` in pixels. Annotations often overshoot the picture (tools round outward,
annotators drag past the border, Visual Genome and COCO have many such boxes): a box with at least
``min_inside`` of its area inside the picture is clipped to it and counted; a box with less (or
nothing) inside is rejected with a reason, never silently changed."""
from __future__ import annotations

import math

# A quarter: a box that overshoots on one side by up to three times its visible part is still
# about what is visible (the annotator dragged past the border); below that the phrase is mostly
# about something outside the picture, or the box is in another convention (e.g. [x1, y1, x2, y2]
# read as [x, y, w, h]), and keeping its sliver would teach the wrong grounding.
DEFAULT_MIN_INSIDE = 0.25


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


def inside_fraction(box, width: float, height: float) -> float:
    """Fraction of the box's area that lies inside the ``width`` x ``height`` picture."""
    x, y, w, h = box
    iw = min(x + w, float(width)) - max(x, 0.0)
    ih = min(y + h, float(height)) - max(y, 0.0)
    if iw <= 0 or ih <= 0:
        return 0.0
    return (iw * ih) / (w * h)


def clip_box(box, width: float, height: float, min_inside: float = DEFAULT_MIN_INSIDE):
    """-> (box clipped to the picture, clipped: bool), or BoxError('box_outside_image') when less
    than ``min_inside`` of the box's area (or nothing) is inside."""
    fraction = inside_fraction(box, width, height)
    if fraction <= 0.0 or fraction < min_inside:
        raise BoxError("box_outside_image",
                       f"bbox {round_box(box)} has {fraction:.0%} of its area inside the "
                       f"{round(width, 2):g}x{round(height, 2):g} image (--min-box-inside "
                       f"{min_inside:g} needed)")
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    clipped = (x0, y0, x1, y1) != (x, y, x + w, y + h)
    return [x0, y0, x1 - x0, y1 - y0], clipped


def round_box(box, ndigits: int = 2) -> list[float]:
    return [round(v, ndigits) for v in box]
