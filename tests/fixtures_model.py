"""Synthetic batches for the tiny model, one per data stream (what the loaders yield).

Plain functions (``make_pairs_batch(cfg, ...)`` etc.) for anyone who needs a batch of a given shape,
and pytest fixtures (``tiny_config``, ``tiny_model``, ``pairs_batch``, ``regions_batch``,
``text_batch``, ``images_batch``) for the common case. Ids follow RoBERTa's specials:
``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4; ordinary tokens from 5 up.
"""
from __future__ import annotations

import pytest
import torch

from xfm.model_config import ModelConfig, model_config

BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
FIRST_WORD = 5


def make_text(cfg: ModelConfig, rows: int, length: int, g: torch.Generator, mask_prob: float = 0.3):
    """Random captions ``<s> w... </s> <pad>...`` with random lengths, plus an MLM-masked copy.

    Returns ``(ids, mask, ids_masked, labels)``; every row has at least one masked word and
    labels are -100 elsewhere.
    """
    vocab = cfg.text.vocab_size
    ids = torch.full((rows, length), PAD, dtype=torch.long)
    lengths = torch.randint(max(3, length // 2), length + 1, (rows,), generator=g)
    for r, n in enumerate(lengths.tolist()):
        ids[r, 0] = BOS
        ids[r, 1:n - 1] = torch.randint(FIRST_WORD, vocab, (n - 2,), generator=g)
        ids[r, n - 1] = EOS
    mask = (ids != PAD).long()
    words = ids >= FIRST_WORD
    pick = (torch.rand(rows, length, generator=g) < mask_prob) & words
    first_word = words.long().argmax(1)
    pick[torch.arange(rows), first_word] = True  # at least one per row
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    ids_masked = torch.where(pick, torch.full_like(ids, MASK), ids)
    return ids, mask, ids_masked, labels


def make_mim_mask(cfg: ModelConfig, rows: int, g: torch.Generator, frac: float = 75 / 196) -> torch.Tensor:
    """(rows, N) bool with exactly round(frac * N) masked patches per row (the paper's 75/196)."""
    n = cfg.vision.num_patches
    k = max(1, round(frac * n))
    order = torch.rand(rows, n, generator=g).argsort(1)
    out = torch.zeros(rows, n, dtype=torch.bool)
    out.scatter_(1, order[:, :k], True)
    return out


def make_images(cfg: ModelConfig, rows: int, g: torch.Generator) -> torch.Tensor:
    s = cfg.vision.image_size
    return torch.randn(rows, 3, s, s, generator=g)


def boxes_to_patch_mask(boxes_cxcywh: torch.Tensor, grid: int) -> torch.Tensor:
    """(R,4) normalised (cx,cy,w,h) -> (R, grid*grid) bool: patches overlapping the box."""
    cx, cy, w, h = boxes_cxcywh.unbind(1)
    x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    edges = torch.arange(grid, dtype=boxes_cxcywh.dtype) / grid
    cols = (x0[:, None] < edges + 1 / grid) & (x1[:, None] > edges)  # (R, grid)
    rows = (y0[:, None] < edges + 1 / grid) & (y1[:, None] > edges)
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(boxes_cxcywh), grid * grid)


def make_pairs_batch(cfg: ModelConfig, batch_size: int = 4, length: int = 10, seed: int = 0,
                     repeat_first_image: bool = True) -> dict:
    """Image-text pairs; with ``repeat_first_image`` rows 0 and 1 show the same picture (same
    pixels, same image id) with different captions."""
    g = torch.Generator().manual_seed(seed)
    image = make_images(cfg, batch_size, g)
    image_ids = torch.arange(batch_size, dtype=torch.long) + 100
    if repeat_first_image and batch_size > 2:
        image[1] = image[0]
        image_ids[1] = image_ids[0]
    ids, mask, ids_masked, labels = make_text(cfg, batch_size, length, g)
    return {"image": image, "text_ids": ids, "text_mask": mask, "text_ids_masked": ids_masked,
            "mlm_labels": labels, "image_ids": image_ids, "mim_mask": make_mim_mask(cfg, batch_size, g)}


def make_regions_batch(cfg: ModelConfig, num_images: int = 2, num_regions: int = 5, length: int = 8,
                       seed: int = 0) -> dict:
    """Regions of ``num_images`` pictures; the last row is a whole-image caption (no box loss)."""
    g = torch.Generator().manual_seed(seed)
    image = make_images(cfg, num_images, g)
    index = torch.arange(num_regions) % num_images
    wh = 0.2 + 0.6 * torch.rand(num_regions, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(num_regions, 2, generator=g)
    boxes = torch.cat((centre, wh), dim=1)
    whole = torch.zeros(num_regions, dtype=torch.bool)
    whole[-1] = True
    boxes[-1] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    patch_mask = boxes_to_patch_mask(boxes, cfg.vision.grid)
    ids, mask, ids_masked, labels = make_text(cfg, num_regions, length, g)
    return {"image": image, "text_ids": ids, "text_mask": mask, "text_ids_masked": ids_masked,
            "mlm_labels": labels, "region_image_index": index, "region_patch_mask": patch_mask,
            "region_boxes": boxes, "is_whole_image": whole}


def make_text_batch(cfg: ModelConfig, batch_size: int = 4, length: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    _, mask, ids_masked, labels = make_text(cfg, batch_size, length, g, mask_prob=0.15)
    return {"text_ids_masked": ids_masked, "text_mask": mask, "mlm_labels": labels}


def make_images_batch(cfg: ModelConfig, batch_size: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": make_images(cfg, batch_size, g), "mim_mask": make_mim_mask(cfg, batch_size, g)}


def make_stream_batch(stream: str, cfg: ModelConfig, seed: int = 0) -> dict:
    return {"pairs": make_pairs_batch, "regions": make_regions_batch, "text": make_text_batch,
            "images": make_images_batch}[stream](cfg, seed=seed)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return model_config("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    from xfm.model import XFM
    torch.manual_seed(0)
    return XFM(tiny_config)


@pytest.fixture
def pairs_batch(tiny_config):
    return make_pairs_batch(tiny_config)


@pytest.fixture
def regions_batch(tiny_config):
    return make_regions_batch(tiny_config)


@pytest.fixture
def text_batch(tiny_config):
    return make_text_batch(tiny_config)


@pytest.fixture
def images_batch(tiny_config):
    return make_images_batch(tiny_config)
