"""NLVR2: is a statement true of a pair of pictures?

Model (the X-VLM / X-FM NLVR2 model without its optional head pre-training): the sentence goes
through the language encoder once; the fusion encoder fuses it with each picture separately
(one pass over the 2B (picture, sentence) rows: no interaction between the two pictures); the two
fusion token-0 states are concatenated in the order [image 0, image 1] and go to an MLP of the
ITM head's shape on that 2d input: Linear(2d, 4d) -> LayerNorm -> GELU -> Linear(4d, 2).
Cross-entropy; metric: accuracy (fraction). The language encoder is trained (fine-tuning has no
stop-gradient).

Training pictures: RandomResizedCrop + RandAugment (``augment``, finetune/images.py) and a
horizontal flip chosen by ``flip``:
- ``pair`` (default): with probability 1/2 the pair is mirrored as a whole: both pictures are
  flipped, their order is swapped and "left"/"right" are swapped in the sentence. Every statement
  keeps its truth, whether "left" names a picture ("the left image has ...") or a place in one
  ("a dog on the left").
- ``each``: each picture flipped on its own, the sentence unchanged (the original recipe; right
  for statements whose "left"/"right" only ever name the picture, wrong for places in one).
- ``none``: no flip. ``augment.hflip: false`` also turns flipping off.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

from xfm.config import expand_env
from xfm.finetune.formats import NLVR2_EVAL_TEMPLATE, check_images, read_nlvr2
from xfm.finetune.images import TrainAugment, TrainTransform, eval_transform, load_image, swap_left_right
from xfm.finetune.metrics import accuracy
from xfm.finetune.registry import register
from xfm.finetune.task import Task, text_capacity
from xfm.finetune.task import pad_ids
from xfm.model.heads import mlp_head

WORLD = "${XFM_DATA:-data}/world"


@dataclass
class Nlvr2Config:
    # statement files per split (JSON lines or a JSON array; X-VLM and official rows both work)
    files: dict[str, list[str]] = field(default_factory=lambda: {
        "train": [f"{WORLD}/nlvr2/train.jsonl"], "val": [f"{WORLD}/nlvr2/dev.jsonl"],
        "test": [f"{WORLD}/nlvr2/test.jsonl"]})
    image_root: str = WORLD
    # per split: image folder and file-name template of official rows (identifier-based); a split
    # not named here uses image_root and NLVR2_EVAL_TEMPLATE
    split_image_roots: dict[str, str] = field(default_factory=dict)
    image_templates: dict[str, str] = field(default_factory=dict)
    max_len: int = 40
    flip: Literal["pair", "each", "none"] = "pair"
    augment: TrainAugment = field(default_factory=TrainAugment)
    check_images: bool = True  # stat every image file when a split is first read


class Nlvr2Pairs(torch.utils.data.Dataset):
    """Items: both pictures (transformed), the tokenised sentence, the label."""

    def __init__(self, examples, tokenizer, max_len: int, size: int, train: bool, cfg: Nlvr2Config):
        self.examples, self.tokenizer, self.max_len, self.size = examples, tokenizer, max_len, size
        self.train, self.flip = train, (cfg.flip if cfg.augment.hflip else "none")
        # the flip is decided here (per pair or per picture), not inside the crop transform
        self.transform = TrainTransform(size, replace(cfg.augment, hflip=False)) if train else None

    def __len__(self):
        return len(self.examples)

    def _picture(self, ref) -> torch.Tensor:
        img = load_image(ref.path)
        if self.transform is None:
            return eval_transform(img, self.size)
        return self.transform(img)[0]

    def __getitem__(self, i):
        ex = self.examples[i]
        left, right, sentence = self._picture(ex.left), self._picture(ex.right), ex.sentence
        if self.train and self.flip == "pair" and random.random() < 0.5:
            left, right = right.flip(-1), left.flip(-1)
            sentence = swap_left_right(sentence)
        elif self.train and self.flip == "each":
            left = left.flip(-1) if random.random() < 0.5 else left
            right = right.flip(-1) if random.random() < 0.5 else right
        ids = self.tokenizer(sentence, truncation=True, max_length=self.max_len)["input_ids"]
        return {"image0": left, "image1": right, "ids": ids, "label": ex.label}


@register("nlvr2")
class Nlvr2Task(Task):
    Config = Nlvr2Config
    parts = ("text", "vision", "fusion")
    main_metric = "acc"
    float_inputs = ("image0", "image1")

    def build_head(self, xfm):
        return mlp_head(2 * self.model_cfg.text.hidden_size, 2)

    def read_split(self, split: str):
        cfg = self.task_cfg
        if split not in cfg.files:
            raise KeyError(f"nlvr2: no files for split {split!r} (task.files has {sorted(cfg.files)})")
        root = expand_env(cfg.split_image_roots.get(split, cfg.image_root))
        template = cfg.image_templates.get(split, NLVR2_EVAL_TEMPLATE)
        examples = read_nlvr2([expand_env(p) for p in cfg.files[split]], root, image_template=template)
        if not examples:
            raise ValueError(f"nlvr2: split {split!r} ({', '.join(cfg.files[split])}) has no statements")
        if cfg.check_images:
            check_images(examples)
        return examples

    def dataset(self, split, train):
        return Nlvr2Pairs(self.read_split(split), self.tokenizer, text_capacity(self.model_cfg, self.task_cfg.max_len),
                          self.model_cfg.vision.image_size, train, self.task_cfg)

    def collate(self, items, train):
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        return {"image0": torch.stack([it["image0"] for it in items]),
                "image1": torch.stack([it["image1"] for it in items]),
                "ids": ids, "mask": mask, "label": torch.tensor([it["label"] for it in items], dtype=torch.long)}

    def logits(self, model, batch):
        b = batch["ids"].shape[0]
        text = model.xfm.encode_text(batch["ids"], batch["mask"])
        # both pictures of every pair in one vision pass and one fusion pass over 2B rows;
        # each row fuses the sentence with one picture only
        images = model.xfm.encode_image(torch.cat([batch["image0"], batch["image1"]]))
        fused = model.xfm.fuse(images, None, text.repeat(2, 1, 1), batch["mask"].repeat(2, 1))[:, 0]
        return model.head(torch.cat([fused[:b], fused[b:]], dim=1)).float()

    def loss(self, model, batch, ctx):
        loss = F.cross_entropy(self.logits(model, batch), batch["label"])
        return loss, {"ce": loss.detach()}

    def predict(self, model, batch, ctx):
        return {"logits": self.logits(model, batch), "label": batch["label"]}

    def compute_metrics(self, outputs, split, dataset):
        return {"acc": accuracy(outputs["logits"].argmax(-1).numpy(), outputs["label"].numpy())}
