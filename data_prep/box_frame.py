"""Which pixel frame an image's region boxes are in, for a picture with an EXIF orientation.

A photo can store its pixels sideways with an EXIF tag saying how to turn it upright. Annotation
tools differ: some show (and annotate) the stored pixel array, others the upright picture a viewer
displays. The shards always store the displayed picture, so boxes in the stored frame are rotated
with the EXIF orientation and boxes in the displayed frame are not; using the wrong one puts the
box on the wrong part of the picture (or outside it).

Per image, ``--box-frame auto`` decides from, in this order:

1. the image size the annotation declares (COCO ``images[]``, Visual Genome ``image_data.json``,
   ``width``/``height`` of RefCOCO-style records), when the orientation swaps width and height:
   the declared size is the size of the frame the annotator saw;
2. the boxes themselves: the frame in which more boxes keep enough of their area inside the
   picture (then: more of their total area inside) is the one they were drawn in;
3. nothing else: when both frames fit the boxes equally well (a 180-degree or mirrored photo, a
   square photo, a few boxes in the middle) the image is rejected as ``box_frame_ambiguous``
   instead of guessing. A wrong guess would write misplaced boxes that nothing downstream can
   detect; a rejection is counted, listed and names the flag that settles it.

``--box-frame stored`` / ``displayed`` states the frame for every image of the run (for formats
that declare no size and a corpus whose tool is known).
"""
from __future__ import annotations

from dataclasses import dataclass

from .boxes import inside_fraction

FRAMES = ("stored", "displayed")
CHOICES = ("auto",) + FRAMES


class FrameError(Exception):
    """The image cannot be used; ``reason`` is the token counted in stats.json."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class FrameChoice:
    frame: str             # "stored" or "displayed"
    rule: str | None       # "option", "declared_size", "box_fit"; None: no EXIF rotation


def _fit_score(img, boxes, frame: str, min_inside: float):
    width, height = img.displayed_size
    fractions = [inside_fraction(img.displayed_box(b, frame), width, height) for b in boxes]
    kept = sum(1 for f in fractions if f > 0.0 and f >= min_inside)
    return kept, round(sum(fractions), 9)


def choose_frame(img, declared_size, boxes, requested: str, min_inside: float) -> FrameChoice:
    """``img``: the ``PreparedImage``; ``declared_size``: (width, height) from the annotation or
    None; ``boxes``: the image's parsed [x, y, w, h] boxes. -> FrameChoice, or FrameError."""
    if requested not in CHOICES:
        raise ValueError(f"box frame must be one of {CHOICES}, got {requested!r}")
    stored, displayed = img.stored_size, img.displayed_size
    if declared_size is not None:
        declared = tuple(declared_size)
        if declared not in (stored, displayed):
            # boxes made for another picture (or another resolution) would land in the wrong place
            raise FrameError("size_mismatch",
                             f"annotation says {declared[0]}x{declared[1]}, image is "
                             f"{stored[0]}x{stored[1]}")
    if img.orientation == 1:
        return FrameChoice("stored", None)          # both frames are the same picture
    if requested != "auto":
        return FrameChoice(requested, "option")
    if declared_size is not None and stored != displayed:
        frame = "stored" if tuple(declared_size) == stored else "displayed"
        return FrameChoice(frame, "declared_size")
    if not boxes:
        return FrameChoice("stored", None)          # no box to place: nothing to decide
    scores = {f: _fit_score(img, boxes, f, min_inside) for f in FRAMES}
    if scores["stored"] != scores["displayed"]:
        return FrameChoice(max(FRAMES, key=scores.__getitem__), "box_fit")
    what = ("declares a size that fits both" if declared_size is not None
            else "declares no image size")
    raise FrameError("box_frame_ambiguous",
                     f"EXIF orientation {img.orientation}: the boxes fit the stored pixels and "
                     f"the displayed picture equally well and the annotation {what}; pass "
                     f"--box-frame stored or --box-frame displayed")
