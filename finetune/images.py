"""Downstream image loading and transforms, matched to pretraining.

The image size comes from the checkpoint's vision config and the normalisation is the one the
pretraining loaders use (CLIP mean / std, as X-VLM / X-FM), so a fine-tuned model sees what it
was pretrained on. Evaluation: resize to S x S (bicubic). Training (the X-VLM fine-tuning
recipe): RandomResizedCrop(scale 0.5-1, bicubic), optional horizontal flip, RandAugment(2, 7)
without colour ops (timm). A task with text about positions swaps "left"/"right" when it flips
(``swap_left_right``). Randomness: python/numpy/torch RNGs, which the loop seeds per example.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from xfm.finetune.image_cache import active_cache

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# RandAugment ops that move or sharpen pixels but keep colours (captions name colours). timm has
# no "Identity" op (the original list's no-op); timm applies each chosen op with probability 1/2.
GEOMETRIC_OPS = ("AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                 "TranslateXRel", "TranslateYRel", "Rotate")


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file."""


def load_image(path, apply_exif: bool = True) -> Image.Image:
    """RGB picture as a viewer shows it (EXIF orientation applied); ``apply_exif=False``: in its
    stored pixel frame (the frame COCO boxes are annotated in). Inside a fine-tuning run with
    ``train.image_cache_mb`` set, a copy of the picture decoded the first time."""
    cache = active_cache()
    if cache is None:
        return _read_image(path, apply_exif)
    return cache.get((os.fspath(path), apply_exif), lambda: _read_image(path, apply_exif))


def _read_image(path, apply_exif: bool) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            if apply_exif:
                img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises many kinds for a broken file
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


# float32 constants shaped for an H x W x 3 array: the normalisation runs in numpy on the (small)
# picture and hands torch one finished tensor, ~2x faster at 32 px than a chain of torch ops on a
# 3 x 32 x 32 tensor (each torch call costs more than the arithmetic); the values are bit-identical
_MEAN_HWC = np.asarray(IMAGE_MEAN, dtype=np.float32)
_STD_HWC = np.asarray(IMAGE_STD, dtype=np.float32)


def normalise(img: Image.Image) -> torch.Tensor:
    """RGB picture -> 3 x H x W float32 tensor, (x / 255 - mean) / std."""
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - _MEAN_HWC) / _STD_HWC
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    return normalise(img.resize((size, size), Image.BICUBIC))


@dataclass
class TrainAugment:
    """Configurable part of the training transform (a task config embeds it)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    randaugment: bool = True
    randaugment_n: int = 2
    randaugment_m: int = 7


class TrainTransform:
    def __init__(self, size: int, aug: TrainAugment):
        from timm.data.auto_augment import rand_augment_transform

        self.size, self.aug = size, aug
        self.whole_picture = tuple(aug.crop_scale) == (1.0, 1.0)
        self.randaug = None
        if aug.randaugment:
            fill = tuple(int(round(255 * m)) for m in IMAGE_MEAN)
            self.randaug = rand_augment_transform(f"rand-m{aug.randaugment_m}-n{aug.randaugment_n}",
                                                  {"img_mean": fill}, transforms=list(GEOMETRIC_OPS))

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, bool]:
        """-> (normalised tensor, flipped)."""
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms import functional as TF

        if self.whole_picture and img.width == img.height:
            # what RandomResizedCrop returns for a square picture at scale 1 (any accepted draw and
            # its fallback are the whole picture), without its ten draws: half of this transform's
            # time on a small picture
            img = img.resize((self.size, self.size), Image.BICUBIC)
        else:
            i, j, h, w = RandomResizedCrop.get_params(img, scale=tuple(self.aug.crop_scale), ratio=(3 / 4, 4 / 3))
            img = TF.resized_crop(img, i, j, h, w, [self.size, self.size], InterpolationMode.BICUBIC)
        flipped = bool(self.aug.hflip and random.random() < 0.5)
        if flipped:
            img = TF.hflip(img)
        if self.randaug is not None:
            img = self.randaug(img)
        return normalise(img), flipped


_LR = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """"left" <-> "right" (also "leftmost" / "rightmost"), keeping the case of the first letter."""

    def repl(m: re.Match) -> str:
        word = "right" if m.group(1).lower() == "left" else "left"
        if m.group(1)[0].isupper():
            word = word.capitalize()
        return word + (m.group(2) or "")

    return _LR.sub(repl, text)
