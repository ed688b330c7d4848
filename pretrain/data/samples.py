"""Raw webdataset sample -> one training example -> a batch of INTERFACES.md ("Batches").

One ``Decoder`` per stream turns the bytes of a sample into tensors (decode, augment, tokenise,
mask) with the per-sample generator, raising ``BadSample(reason)`` for anything unusable, and a
``collate`` that pads the text and stacks everything into the batch dict the objectives take.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch

from .config import DataConfig
from .seeding import source_image_id
from .transforms import (BadSample, ImageTransform, RegionTransform, box_patch_mask,
                         boxes_to_cxcywh, clip_box, decode_image, swap_left_right)

REQUIRED_KEYS = {"pairs": ("jpg", "txt", "json"), "regions": ("jpg", "json"),
                 "text": ("txt",), "images": ("jpg",)}


def check_keys(stream: str, raw: dict) -> None:
    missing = [k for k in REQUIRED_KEYS[stream] if k not in raw]
    if missing:
        raise BadSample("missing_keys", f"{raw.get('__url__')} sample {raw.get('__key__')!r} lacks {missing}")


def read_text(raw: dict, key: str = "txt") -> str:
    try:
        text = raw[key].decode("utf-8").strip()
    except UnicodeDecodeError as exn:
        raise BadSample("bad_text", f"{raw.get('__key__')!r}: {exn}") from None
    if not text:
        raise BadSample("empty_text", f"{raw.get('__url__')} sample {raw.get('__key__')!r}")
    return text


def read_json(raw: dict) -> dict:
    try:
        meta = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise BadSample("bad_json", f"{raw.get('__url__')} sample {raw.get('__key__')!r}: {exn}") from None
    if not isinstance(meta, dict):
        raise BadSample("bad_json", f"{raw.get('__key__')!r}: top level is {type(meta).__name__}, not an object")
    return meta


class TextEncoder:
    """Tokenise (and MLM-mask) one text. Captions/phrases are truncated; documents of the text
    stream give a random window of ``max_len - 2`` tokens (the rest of a long document would
    otherwise never be seen)."""

    def __init__(self, tokenizer, max_len: int, masker, window: bool = False):
        self.tok = tokenizer
        self.max_len = max_len
        self.masker = masker
        self.window = window
        # the special tokens the tokenizer puts around one sequence (<s> ... </s>, [CLS] ... [SEP]),
        # found by comparing one encoding with and without them (transformers 5 has no
        # build_inputs_with_special_tokens)
        full = tokenizer("a")["input_ids"]
        body = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(full) - len(body) + 1) if full[i:i + len(body)] == body), None)
        if at is None:
            raise ValueError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens")
        self.prefix, self.suffix = list(full[:at]), list(full[at + len(body):])

    def __call__(self, text: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.window:
            # verbose=False: documents are longer than the model on purpose (a window is taken)
            body = self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]
            n = self.max_len - len(self.prefix) - len(self.suffix)
            start = int(rng.integers(0, len(body) - n + 1)) if len(body) > n else 0
            ids = self.prefix + body[start:start + n] + self.suffix
        else:
            ids = self.tok(text, truncation=True, max_length=self.max_len)["input_ids"]
        ids = np.asarray(ids, dtype=np.int64)
        masked, labels = self.masker(ids, rng)
        return {"ids": ids, "masked": np.asarray(masked, dtype=np.int64), "labels": np.asarray(labels, dtype=np.int64)}


def pad_texts(rows: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    L = max(len(r["ids"]) for r in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    masked = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        ids[i, :n] = torch.from_numpy(r["ids"])
        masked[i, :n] = torch.from_numpy(r["masked"])
        labels[i, :n] = torch.from_numpy(r["labels"])
        mask[i, :n] = 1
    return {"text_ids": ids, "text_mask": mask, "text_ids_masked": masked, "mlm_labels": labels}


def stack_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``image`` and ``mim_mask`` of the examples of an image stream (pairs, images)."""
    return {"image": torch.stack([e["image"] for e in examples]),
            "mim_mask": torch.from_numpy(np.stack([e["mim_mask"] for e in examples])).bool()}


class Decoder(ABC):
    """Base: ``decode(raw, rng) -> example`` and ``collate(examples) -> batch``."""

    stream = ""

    def __init__(self, cfg: DataConfig, tokenizer, text_masker, fusion_masker, block_masker):
        self.cfg = cfg
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.text_masker = text_masker
        self.fusion_masker = fusion_masker
        self.block_masker = block_masker

    @abstractmethod
    def decode(self, raw: dict, rng: np.random.Generator) -> dict[str, Any]:
        """One raw sample -> one example; ``BadSample`` for anything unusable."""

    @abstractmethod
    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Examples of ``decode`` -> one batch (INTERFACES.md "Batches")."""

    @staticmethod
    def tokens(batch: dict[str, torch.Tensor]) -> int:
        return int(batch["text_mask"].sum()) if "text_mask" in batch else 0


class PairsDecoder(Decoder):
    stream = "pairs"

    def __init__(self, cfg, tokenizer, text_masker, fusion_masker, block_masker):
        super().__init__(cfg, tokenizer, text_masker, fusion_masker, block_masker)
        self.transform = ImageTransform(cfg.augment, cfg.image_size)
        self.text = TextEncoder(tokenizer, cfg.text_len_for("pairs"), fusion_masker)

    def decode(self, raw, rng):
        check_keys("pairs", raw)
        meta = read_json(raw)
        image_id, source = meta.get("image_id"), meta.get("source")
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
            raise BadSample("bad_json", f"{raw.get('__url__')} sample {raw.get('__key__')!r}: "
                                        f"'image_id' must be a string, got {image_id!r}")
        if not isinstance(source, str):  # without it, equal ids of two datasets would be one picture
            raise BadSample("bad_json", f"{raw.get('__url__')} sample {raw.get('__key__')!r}: "
                                        f"'source' must be a string (the dataset image_id belongs to), got {source!r}")
        caption = read_text(raw)
        img = decode_image(raw["jpg"])
        image, flipped = self.transform(img, rng)
        if flipped:  # the caption must describe the mirrored picture
            caption = swap_left_right(caption)
        return {"image": image, "text": self.text(caption, rng),
                "image_id": source_image_id(source, image_id), "mim_mask": self.block_masker(rng)}

    def collate(self, examples):
        batch = stack_images(examples)
        batch.update(pad_texts([e["text"] for e in examples], self.pad_id))
        batch["image_ids"] = torch.tensor([e["image_id"] for e in examples], dtype=torch.long)
        return batch


class ImagesDecoder(Decoder):
    stream = "images"

    def __init__(self, cfg, tokenizer, text_masker, fusion_masker, block_masker):
        super().__init__(cfg, tokenizer, text_masker, fusion_masker, block_masker)
        self.transform = ImageTransform(cfg.augment, cfg.image_size)

    def decode(self, raw, rng):
        check_keys("images", raw)
        img = decode_image(raw["jpg"])
        image, _ = self.transform(img, rng)  # no text to keep consistent with a flip
        return {"image": image, "mim_mask": self.block_masker(rng)}

    def collate(self, examples):
        return stack_images(examples)


class TextDecoder(Decoder):
    stream = "text"

    def __init__(self, cfg, tokenizer, text_masker, fusion_masker, block_masker):
        super().__init__(cfg, tokenizer, text_masker, fusion_masker, block_masker)
        self.text = TextEncoder(tokenizer, cfg.text_len_for("text"), text_masker, window=True)

    def decode(self, raw, rng):
        check_keys("text", raw)
        return {"text": self.text(read_text(raw), rng)}

    def collate(self, examples):
        t = pad_texts([e["text"] for e in examples], self.pad_id)
        return {"text_ids_masked": t["text_ids_masked"], "text_mask": t["text_mask"],
                "mlm_labels": t["mlm_labels"]}


class RegionsDecoder(Decoder):
    """One image with up to ``max_regions`` (phrase, box) rows, plus a whole-image row for its
    caption when there is one (``is_whole_image``: no box loss)."""

    stream = "regions"

    def __init__(self, cfg, tokenizer, text_masker, fusion_masker, block_masker):
        super().__init__(cfg, tokenizer, text_masker, fusion_masker, block_masker)
        self.transform = RegionTransform(cfg.augment, cfg.image_size)
        self.text = TextEncoder(tokenizer, cfg.text_len_for("regions"), fusion_masker)
        self.max_regions = cfg.regions.max_regions  # only built for a configured stream

    def _regions(self, raw, meta, width, height):
        regions = meta.get("regions")
        if not isinstance(regions, list):
            raise BadSample("bad_json", f"{raw.get('__key__')!r}: 'regions' must be a list, got {type(regions).__name__}")
        out = []
        for r in regions:
            if not isinstance(r, dict) or not isinstance(r.get("phrase"), str) or not r["phrase"].strip():
                raise BadSample("bad_json", f"{raw.get('__key__')!r}: region without a 'phrase' string: {r!r}")
            bbox = r.get("bbox")
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise BadSample("bad_json", f"{raw.get('__key__')!r}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
            box = clip_box(bbox, width, height)
            if box is not None:  # a box entirely outside the stored image is dropped, not fatal
                out.append((r["phrase"].strip(), box))
        return out

    def decode(self, raw, rng):
        check_keys("regions", raw)
        meta = read_json(raw)
        caption = meta.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise BadSample("bad_json", f"{raw.get('__key__')!r}: 'caption' must be a string or null")
        img = decode_image(raw["jpg"])
        regions = self._regions(raw, meta, *img.size)
        if not regions and not (caption and caption.strip()):
            raise BadSample("no_regions", f"{raw.get('__url__')} sample {raw.get('__key__')!r}")
        if len(regions) > self.max_regions:
            pick = np.sort(rng.choice(len(regions), self.max_regions, replace=False))
            regions = [regions[i] for i in pick]
        boxes = np.array([b for _, b in regions], dtype=np.float64).reshape(-1, 4)
        image, boxes01, flipped = self.transform(img, boxes, rng)
        fix = swap_left_right if flipped else (lambda s: s)
        texts = [self.text(fix(p), rng) for p, _ in regions]
        whole = [False] * len(regions)
        if caption and caption.strip():
            texts.append(self.text(fix(caption.strip()), rng))
            boxes01 = np.concatenate([boxes01, [[0.0, 0.0, 1.0, 1.0]]], axis=0)
            whole.append(True)
        return {"image": image, "texts": texts, "boxes01": boxes01, "whole": whole}

    def collate(self, examples):
        grid = self.cfg.grid
        batch = {"image": torch.stack([e["image"] for e in examples])}
        rows = [t for e in examples for t in e["texts"]]
        batch.update(pad_texts(rows, self.pad_id))
        boxes = np.concatenate([e["boxes01"] for e in examples], axis=0)
        batch["region_image_index"] = torch.tensor(
            [i for i, e in enumerate(examples) for _ in e["texts"]], dtype=torch.long)
        batch["region_patch_mask"] = torch.from_numpy(box_patch_mask(boxes, grid))
        batch["region_boxes"] = torch.from_numpy(boxes_to_cxcywh(boxes)).float()
        batch["is_whole_image"] = torch.tensor([w for e in examples for w in e["whole"]], dtype=torch.bool)
        return batch


DECODERS: dict[str, Callable[..., Decoder]] = {
    "pairs": PairsDecoder, "regions": RegionsDecoder, "text": TextDecoder, "images": ImagesDecoder,
}
