"""Referring-expression grounding (RefCOCO / RefCOCO+ / RefCOCOg, box variant).

Model: the pretraining box head on fusion token 0 of (full picture, phrase):
``model.xfm.predict_bbox`` gives a sigmoid (cx, cy, w, h) in [0, 1] of the picture the model
saw. Loss: L1 summed over the 4 coordinates + (1 - GIoU), each averaged over the batch, as the
original. The language encoder is trained (fine-tuning has no stop-gradient). The other
pretraining heads stay in the model unused, so a fine-tuned ``best/`` is a whole X-FM model
(``XFM.from_pretrained`` loads it; its box head is the fine-tuned one).

Data (``layout``):
- ``json``: X-VLM rows ``{image, text, bbox, ref_id, split?}`` from ``files[split]``; when
  ``refs`` and ``instances`` are given too, rows without ``bbox`` take the annotation's box and
  rows without ``split`` the ref's split (X-VLM's own files carry neither).
- ``refer``: the original ``refs(unc).p`` + ``instances.json``; ``refer_splits`` maps our splits to
  the release's (``test`` -> ``testA`` + ``testB``).

Boxes are pixels of the stored picture (the frame COCO annotates and the original evaluation
reads), so pictures are read without applying an EXIF orientation.

Training transform (the original recipe): a random crop that keeps the whole box (each edge
anywhere between the picture's edge and the box), a horizontal flip with "left"/"right" swapped
in the phrase, resize to S x S, RandAugment with photometric operations only (the box must not
move). The target is the box's normalised (cx, cy, w, h) in the transformed picture.

Evaluation: the whole picture resized to S x S; the predicted box is mapped back to pixels of the
original picture and scored with the original inclusive-pixel IoU; ``acc`` = share with IoU >=
0.5 (fraction), plus ``acc_<split>`` for each split name the records carry (val, testA, testB).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xfm.config import expand_env
from xfm.finetune.formats import DataFormatError, check_images, read_grounding_json, read_refer
from xfm.finetune.images import eval_transform, load_image, normalise, swap_left_right
from xfm.finetune.metrics import (box_iou_inclusive, grounding_accuracy, grounding_accuracy_by_split,
                                  normalized_cxcywh_to_xywh)
from xfm.finetune.registry import register
from xfm.finetune.task import Task, text_capacity
from xfm.finetune.task import pad_ids
from xfm.objectives.losses import giou_loss

WORLD = "${XFM_DATA:-data}/world"
# RandAugment operations that leave every pixel where it is (the box stays valid): the original
# list without its "Identity" (timm has none; it applies each chosen op with probability 1/2)
PHOTOMETRIC_OPS = ("AutoContrast", "Equalize", "Brightness", "Sharpness")
IOU_THRESHOLD = 0.5


@dataclass
class GroundingAugment:
    crop: bool = True       # random crop that keeps the box
    hflip: bool = True      # with "left" / "right" swapped in the phrase
    randaugment: bool = True
    randaugment_n: int = 2
    randaugment_m: int = 7
    randaugment_ops: list[str] = field(default_factory=lambda: list(PHOTOMETRIC_OPS))


@dataclass
class GroundingConfig:
    layout: Literal["json", "refer"] = "json"
    files: dict[str, list[str]] = field(default_factory=lambda: {
        "train": [f"{WORLD}/grounding/refcoco_train.jsonl"], "val": [f"{WORLD}/grounding/refcoco_val.jsonl"],
        "test": [f"{WORLD}/grounding/refcoco_test.jsonl"]})
    image_root: str = WORLD
    refs: Optional[str] = None          # refcoco+/refs(unc).p
    instances: Optional[str] = None     # refcoco+/instances.json
    refer_splits: dict[str, list[str]] = field(default_factory=lambda: {
        "train": ["train"], "val": ["val"], "test": ["testA", "testB"]})
    sentence_field: str = "sent"        # refer layout: "sent" (as X-VLM's JSON) or "raw"
    max_len: int = 40
    augment: GroundingAugment = field(default_factory=GroundingAugment)
    check_images: bool = True

    def __post_init__(self):
        if self.layout == "refer" and not (self.refs and self.instances):
            raise ValueError("layout 'refer' needs task.refs (refs(unc).p) and task.instances (instances.json)")
        if bool(self.refs) != bool(self.instances):
            raise ValueError("task.refs and task.instances go together (the boxes are the annotations')")
        for op in self.augment.randaugment_ops:
            if op not in PHOTOMETRIC_OPS:
                raise ValueError(f"task.augment.randaugment_ops: {op!r} moves pixels (the box would no longer "
                                 f"fit); allowed: {list(PHOTOMETRIC_OPS)}")


def read_grounding_split(cfg: GroundingConfig, split: str):
    """The split's examples in either layout (see the module doc)."""
    root = expand_env(cfg.image_root)
    refs = expand_env(cfg.refs) if cfg.refs else None
    instances = expand_env(cfg.instances) if cfg.instances else None
    if cfg.layout == "refer":
        if split not in cfg.refer_splits:
            raise KeyError(f"grounding: no refer split for {split!r} (task.refer_splits has {sorted(cfg.refer_splits)})")
        return read_refer(refs, instances, root, splits=cfg.refer_splits[split], sentence_field=cfg.sentence_field)
    if split not in cfg.files:
        raise KeyError(f"grounding: no files for split {split!r} (task.files has {sorted(cfg.files)})")
    paths = [expand_env(p) for p in cfg.files[split]]
    if refs is None:
        return read_grounding_json(paths, root)
    known = read_refer(refs, instances, root, sentence_field=cfg.sentence_field)
    boxes = {ex.ref_id: ex.bbox for ex in known}
    splits = {ex.ref_id: ex.split for ex in known}
    return [ex if ex.split is not None else replace(ex, split=splits.get(ex.ref_id))
            for ex in read_grounding_json(paths, root, boxes=boxes)]


class BoxKeepingTransform:
    """Crop keeping the box, flip, resize, photometric RandAugment -> (tensor, (cx, cy, w, h) in
    [0, 1] of the output, flipped). Randomness: python's ``random`` (seeded per example)."""

    def __init__(self, size: int, aug: GroundingAugment):
        self.size, self.aug = size, aug
        self.randaug = None
        if aug.randaugment and aug.randaugment_ops:
            from timm.data.auto_augment import rand_augment_transform

            from xfm.finetune.images import IMAGE_MEAN

            fill = tuple(int(round(255 * m)) for m in IMAGE_MEAN)
            self.randaug = rand_augment_transform(f"rand-m{aug.randaugment_m}-n{aug.randaugment_n}",
                                                  {"img_mean": fill}, transforms=list(aug.randaugment_ops))

    def __call__(self, img: Image.Image, box) -> tuple[torch.Tensor, np.ndarray, bool]:
        W, H = img.size
        x, y, w, h = (float(v) for v in box)
        if self.aug.crop:
            # integer edges between the picture's edge and the box (the box stays whole)
            x0 = random.randint(0, max(0, math.floor(x)))
            y0 = random.randint(0, max(0, math.floor(y)))
            x1 = random.randint(min(W, max(x0 + 1, math.ceil(x + w))), W)
            y1 = random.randint(min(H, max(y0 + 1, math.ceil(y + h))), H)
        else:
            x0, y0, x1, y1 = 0, 0, W, H
        img = img.crop((x0, y0, x1, y1))
        cw, ch = x1 - x0, y1 - y0
        bx, by = x - x0, y - y0
        flipped = bool(self.aug.hflip and random.random() < 0.5)
        if flipped:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            bx = cw - bx - w
        img = img.resize((self.size, self.size), Image.BICUBIC)
        if self.randaug is not None:
            img = self.randaug(img)
        target = np.array([(bx + w / 2) / cw, (by + h / 2) / ch, w / cw, h / ch], dtype=np.float32)
        return normalise(img), np.clip(target, 0.0, 1.0), flipped


def predict_boxes(xfm, image, ids, mask) -> torch.Tensor:
    """(B, 4) normalised (cx, cy, w, h): the box head on fusion token 0 of (picture, phrase)."""
    text = xfm.encode_text(ids, mask)
    return xfm.predict_bbox(xfm.fuse(xfm.encode_image(image), None, text, mask)).float()


def box_loss(pred: torch.Tensor, target: torch.Tensor):
    """(total, L1, GIoU part): L1 summed over the 4 coordinates + (1 - GIoU), each a batch mean."""
    l1 = F.l1_loss(pred, target, reduction="none").sum(1).mean()
    giou = giou_loss(pred, target).mean()
    return l1 + giou, l1, giou


class GroundingItems(torch.utils.data.Dataset):
    def __init__(self, examples, tokenizer, max_len: int, size: int, train: bool, aug: GroundingAugment):
        self.examples, self.tokenizer, self.max_len, self.size, self.train = examples, tokenizer, max_len, size, train
        self.transform = BoxKeepingTransform(size, aug) if train else None

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        img = load_image(ex.image.path, apply_exif=False)  # boxes are in the stored frame
        W, H = img.size
        if (ex.width is not None and ex.width != W) or (ex.height is not None and ex.height != H):
            raise DataFormatError(f"{ex.origin}: field 'width'/'height': the record says {ex.width} x {ex.height}, "
                                  f"but {ex.image.path} is {W} x {H}")
        text = ex.text
        if self.train:
            pixels, target, flipped = self.transform(img, ex.bbox)
            if flipped:
                text = swap_left_right(text)
        else:
            pixels = eval_transform(img, self.size)
            x, y, w, h = ex.bbox
            target = np.array([(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], dtype=np.float32)
        ids = self.tokenizer(text, truncation=True, max_length=self.max_len)["input_ids"]
        return {"image": pixels, "ids": ids, "target": torch.from_numpy(target), "size": (W, H)}


@register("grounding")
class GroundingTask(Task):
    Config = GroundingConfig
    parts = ("text", "vision", "fusion", "heads")
    main_metric = "acc"
    float_inputs = ("image",)

    def read_split(self, split: str):
        examples = read_grounding_split(self.task_cfg, split)
        if not examples:
            raise ValueError(f"grounding: split {split!r} has no examples")
        if self.task_cfg.check_images:
            check_images(examples)
        return examples

    def dataset(self, split, train):
        return GroundingItems(self.read_split(split), self.tokenizer,
                              text_capacity(self.model_cfg, self.task_cfg.max_len),
                              self.model_cfg.vision.image_size, train, self.task_cfg.augment)

    def collate(self, items, train):
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        return {"image": torch.stack([it["image"] for it in items]), "ids": ids, "mask": mask,
                "target": torch.stack([it["target"] for it in items]),
                "size": torch.tensor([it["size"] for it in items], dtype=torch.float32)}

    def boxes(self, model, batch):
        return predict_boxes(model.xfm, batch["image"], batch["ids"], batch["mask"])

    def loss(self, model, batch, ctx):
        pred = self.boxes(model, batch)
        total, l1, giou = box_loss(pred, batch["target"].to(pred.dtype))
        return total, {"l1": l1.detach(), "giou": giou.detach()}

    def predict(self, model, batch, ctx):
        return {"box": self.boxes(model, batch), "size": batch["size"]}

    @staticmethod
    def pixel_boxes(outputs) -> np.ndarray:
        """Predicted [x, y, w, h] in pixels of each original picture."""
        size = outputs["size"].double().numpy()
        return normalized_cxcywh_to_xywh(outputs["box"].double().numpy(), size[:, 0], size[:, 1])

    def compute_metrics(self, outputs, split, dataset):
        pred = self.pixel_boxes(outputs)
        gt = np.array([ex.bbox for ex in dataset.examples], dtype=np.float64)
        metrics = {"acc": grounding_accuracy(pred, gt, IOU_THRESHOLD),
                   "mean_iou": float(np.mean(box_iou_inclusive(pred, gt)))}
        names = [ex.split for ex in dataset.examples]
        if all(n is not None for n in names):
            for name, value in grounding_accuracy_by_split(pred, gt, names, IOU_THRESHOLD).items():
                metrics[f"acc_{name}"] = value
        return metrics

    def write_predictions(self, runner, split, outputs, dataset):
        """``RUN_DIR/grounding_<split>.json``: per phrase its ref_id, split, predicted and true
        [x, y, w, h] pixel boxes and their IoU (the original writes its predictions too)."""
        if not runner.is_main:
            return
        pred = self.pixel_boxes(outputs)
        gt = np.array([ex.bbox for ex in dataset.examples], dtype=np.float64)
        iou = np.atleast_1d(box_iou_inclusive(pred, gt))
        rows = [{"ref_id": ex.ref_id, "split": ex.split, "text": ex.text, "pred": [float(v) for v in p],
                 "bbox": [float(v) for v in ex.bbox], "iou": float(i)}
                for ex, p, i in zip(dataset.examples, pred, iou)]
        runner.run_dir.mkdir(parents=True, exist_ok=True)
        path = runner.run_dir / f"grounding_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(path)
