"""The picture transforms' fast paths equal the plain computation they replace.

- ``normalise`` (numpy) equals ``(x / 255 - mean) / std`` computed with torch ops, bit for bit.
- ``TrainTransform`` at crop scale 1 on a square picture (resized directly, without
  ``RandomResizedCrop``'s draws) equals torchvision's resized crop of the whole picture; a picture
  that is not square still goes through torchvision's draws, crop for crop.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from xfm.finetune.images import IMAGE_MEAN, IMAGE_STD, TrainAugment, TrainTransform, normalise


def torch_normalise(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(IMAGE_MEAN).view(3, 1, 1)) / torch.tensor(IMAGE_STD).view(3, 1, 1)


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [32, 37, 64, 224])
def test_normalise_equals_the_torch_formula(size):
    img = picture(size, size, seed=size)
    got = normalise(img)
    assert got.shape == (3, size, size) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, torch_normalise(img))


@pytest.mark.parametrize("size", [32, 48, 64, 100])
def test_scale_one_on_a_square_picture_is_the_whole_picture_resized(size):
    img = picture(size, size, seed=size)
    tt = TrainTransform(32, TrainAugment(crop_scale=(1.0, 1.0), hflip=False, randaugment=False))
    ref = TF.resized_crop(img, 0, 0, size, size, [32, 32], InterpolationMode.BICUBIC)
    for _ in range(3):
        x, flipped = tt(img)
        assert not flipped and torch.equal(x, torch_normalise(ref))


@pytest.mark.parametrize("w,h", [(64, 60), (96, 40)])
def test_a_picture_that_is_not_square_still_goes_through_the_random_crop(w, h):
    """At scale 1 a non-square picture can get crops a pixel short of it (64 x 60) or the centre
    crop at the ratio bound (96 x 40): the transform draws them as torchvision does."""
    from torchvision.transforms import RandomResizedCrop

    img = picture(w, h)
    tt = TrainTransform(32, TrainAugment(crop_scale=(1.0, 1.0), hflip=False, randaugment=False))
    for seed in range(5):
        torch.manual_seed(seed)
        i, j, ch, cw = RandomResizedCrop.get_params(img, scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
        ref = TF.resized_crop(img, i, j, ch, cw, [32, 32], InterpolationMode.BICUBIC)
        torch.manual_seed(seed)
        assert torch.equal(tt(img)[0], torch_normalise(ref)), (w, h, seed)
