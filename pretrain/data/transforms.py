"""Image augmentation for the four streams, boxes transformed with the pixels.

Pairs and image-only samples: RandomResizedCrop (scale 0.2-1, bicubic), horizontal flip,
RandAugment(2, 7) over the ops without colour changes (timm's ``rand_augment_transform`` with a
restricted op list); a flipped pair's caption gets "left" and "right" swapped. Region samples: a
crop that keeps every chosen box, a flip that also swaps the words "left" and "right" in the
phrases and the caption, and RandAugment over photometric ops only (a geometric op would move a
shape out of its box). Both flips use one word swap, ``swap_left_right``. All randomness comes
from the per-sample generator passed in (see seeding.py).
"""
from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from xfm.runtime.seeding import global_rngs_seeded

from .config import AugmentConfig
from .seeding import sample_seed


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now: a truncated JPEG fails here, not later in a transform
        return img.convert("RGB")
    except Exception as exn:
        raise BadSample("bad_image", f"{type(exn).__name__}: {exn}") from None


def make_randaugment(aug: AugmentConfig, ops: Sequence[str]):
    if not aug.randaugment or not ops:
        return None
    fill = tuple(int(round(255 * m)) for m in aug.mean)
    return rand_augment_transform(f"rand-m{aug.randaugment_m}-n{aug.randaugment_n}",
                                  {"img_mean": fill}, transforms=list(ops))


def to_normalised_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


class ImageTransform:
    """Pairs / image-only augmentation -> (normalised (3, S, S) float tensor, flipped). A caller
    with a text about the picture swaps its left/right words when ``flipped``."""

    def __init__(self, aug: AugmentConfig, size: int):
        self.aug = aug
        self.size = size
        self.randaug = make_randaugment(aug, aug.randaugment_ops)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
        aug = self.aug
        flipped = False
        with global_rngs_seeded(sample_seed(rng)):  # torchvision's crop sampler and timm draw from globals
            if aug.random_resized_crop:
                i, j, h, w = RandomResizedCrop.get_params(img, list(aug.crop_scale), list(aug.crop_ratio))
                img = TF.resized_crop(img, i, j, h, w, [self.size, self.size],
                                      interpolation=InterpolationMode.BICUBIC)
            else:
                img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
            if aug.hflip and rng.random() < 0.5:
                img = TF.hflip(img)
                flipped = True
            if self.randaug is not None:
                img = self.randaug(img)
        return to_normalised_tensor(img, aug.mean, aug.std), flipped


# "left"/"right" and the direction words built on them, as whole words ("leftover" and
# "copyright" stay); the suffix is kept, only the stem swaps
_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """The caption of the mirrored picture: "left" <-> "right" (also "leftmost" <-> "rightmost",
    "leftward(s)" <-> "rightward(s)") as whole words, keeping the case (lower, Capitalised,
    UPPER). Every path that flips an image horizontally applies it to the image's texts."""

    def repl(m: re.Match) -> str:
        stem = m.group(1)
        new = "right" if stem.lower() == "left" else "left"
        if stem.isupper():
            new = new.upper()
        elif stem[0].isupper():
            new = new.capitalize()
        return new + (m.group(2) or "")

    return _LEFT_RIGHT.sub(repl, text)


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """Pixel box (x, y, w, h) clipped to the image as (x0, y0, x1, y1); None if nothing is left."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return x0, y0, x1, y1


class RegionTransform:
    """Crop keeping the boxes, resize to S x S, flip (with left/right word swap), photometric
    RandAugment. Returns the image tensor, the boxes as (x0, y0, x1, y1) in [0, 1] of the
    output, and whether it flipped."""

    def __init__(self, aug: AugmentConfig, size: int):
        self.aug = aug
        self.size = size
        self.randaug = make_randaugment(aug, aug.region_randaugment_ops)

    def __call__(self, img: Image.Image, boxes: np.ndarray, rng: np.random.Generator):
        aug = self.aug
        W, H = img.size
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if aug.region_crop and len(boxes):
            ux0, uy0 = boxes[:, 0].min(), boxes[:, 1].min()
            ux1, uy1 = boxes[:, 2].max(), boxes[:, 3].max()
            # integer crop edges anywhere between the image edge and the boxes' union
            cx0 = int(rng.integers(0, int(np.floor(ux0)) + 1))
            cy0 = int(rng.integers(0, int(np.floor(uy0)) + 1))
            cx1 = int(rng.integers(int(np.ceil(ux1)), W + 1))
            cy1 = int(rng.integers(int(np.ceil(uy1)), H + 1))
        else:
            cx0, cy0, cx1, cy1 = 0, 0, W, H
        img = img.crop((cx0, cy0, cx1, cy1)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        out = np.empty_like(boxes)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - cx0) / (cx1 - cx0)
        out[:, [1, 3]] = (boxes[:, [1, 3]] - cy0) / (cy1 - cy0)
        flipped = bool(aug.region_hflip and rng.random() < 0.5)
        if flipped:
            img = TF.hflip(img)
            out[:, [0, 2]] = 1.0 - out[:, [2, 0]]
        if self.randaug is not None:
            with global_rngs_seeded(sample_seed(rng)):
                img = self.randaug(img)
        return to_normalised_tensor(img, aug.mean, aug.std), np.clip(out, 0.0, 1.0), flipped


def boxes_to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                     xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)


def box_patch_mask(xyxy: np.ndarray, grid: int) -> np.ndarray:
    """(R, grid*grid) bool: patches with a positive overlap with each normalised box."""
    xyxy = np.round(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) * grid, 6)
    idx = np.arange(grid)
    cols = (idx[None, :] < xyxy[:, 2:3]) & (idx[None, :] + 1 > xyxy[:, 0:1])  # (R, grid)
    rows = (idx[None, :] < xyxy[:, 3:4]) & (idx[None, :] + 1 > xyxy[:, 1:2])
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(xyxy), grid * grid)
