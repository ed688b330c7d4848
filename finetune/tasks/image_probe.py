"""Linear probing on class folders: a frozen vision encoder, its features computed once per image,
a linear (or MLP) head trained on them.

Features: [token 0, mean of the patch tokens] (2d, as ``image_cls``) of the evaluation
transform's image (no augmentation). Each split's features are computed once per run, with the
encoder in eval mode: the training split's when training starts (``on_train_start``, after a
resume's weights are in place), an evaluation split's at its first evaluation. The pass runs
through the engine over the split's rank-strided share (every example once, as evaluation), and
every rank receives every feature (one gather per batch), because the training sampler hands any
example to any rank in later epochs. Cost: N x 2d values per rank in ``cache_dtype`` (ImageNet
and a base model: 1.28M x 1536 x 4 bytes = 7.9 GB in float32; ``float16`` halves it).

The encoder's parameters have ``requires_grad`` False: the optimizer holds only the head, and
epochs after the first never touch the encoder. Heads: ``linear`` (the usual probe) or ``mlp``
(the X-FM classifier MLP, which its linear-probing recipe trained), each after a fixed
standardisation of the features by the training set's statistics (``standardize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xfm.finetune.metrics import topk_accuracy
from xfm.finetune.registry import register
from xfm.finetune.sampling import PAD_INDEX
from xfm.finetune.task import Task
from xfm.finetune.tasks.image_cls import (FolderImages, ImageFoldersConfig, classification_head, collate_images,
                                          eval_image_transform, pooled_features, read_split, resolve_classes)

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ImageProbeConfig(ImageFoldersConfig):
    head: Literal["linear", "mlp"] = "linear"
    # standardise each feature by the training set's mean / std before the head (the statistics
    # are buffers of the head, saved with it; MAE's probe uses a BatchNorm without affine for this)
    standardize: bool = True
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    smoothing: float = 0.0  # label smoothing of the cross-entropy


class FeatureStandardizer(nn.Module):
    """(x - mean) / std with fixed per-feature statistics (identity until ``set_stats``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def set_stats(self, features: torch.Tensor) -> None:
        x = features.float()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False) + self.eps)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class CachedFeatures(torch.utils.data.Dataset):
    """One split's examples as {"features", "label"}; the features live in the task's store,
    filled by ``ImageProbeTask.compute_features`` before the first loader over them starts."""

    def __init__(self, store: dict, split: str, labels: list[int]):
        self.store, self.split, self.labels = store, split, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        feats = self.store.get(self.split)
        if feats is None:
            raise RuntimeError(f"image_probe: the features of split {self.split!r} have not been computed "
                               f"(ImageProbeTask.compute_features runs before training / evaluation)")
        return {"features": feats[i], "label": self.labels[i]}


@register("image_probe")
class ImageProbeTask(Task):
    Config = ImageProbeConfig
    parts = ("vision",)
    main_metric = "top1"
    float_inputs = ("image", "features")

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        self.classes = resolve_classes(task_cfg)
        self.features: dict[str, torch.Tensor] = {}
        self._samples: dict[str, list] = {}

    def splits(self):
        return tuple(self.task_cfg.split_dirs)

    # --- model ---------------------------------------------------------------------------
    def build_head(self, xfm):
        d_in = 2 * self.model_cfg.vision.hidden_size
        if self.task_cfg.head == "mlp":
            head = classification_head(d_in, len(self.classes))
        else:
            head = nn.Sequential(nn.Linear(d_in, len(self.classes)))
        if self.task_cfg.standardize:
            head.insert(0, FeatureStandardizer(d_in))
        return head

    def build_model(self, xfm):
        model = super().build_model(xfm)
        model.xfm.requires_grad_(False)
        return model

    # --- data ----------------------------------------------------------------------------
    def samples(self, split: str) -> list[tuple[str, int]]:
        if split not in self._samples:
            self._samples[split] = read_split(self.task_cfg, split, self.classes).samples
        return self._samples[split]

    def dataset(self, split, train):
        return CachedFeatures(self.features, split, [label for _, label in self.samples(split)])

    def collate(self, items, train):
        if "image" in items[0]:  # the feature pass
            return collate_images(items)
        return {"features": torch.stack([it["features"] for it in items]),
                "label": torch.tensor([it["label"] for it in items], dtype=torch.long)}

    # --- features ------------------------------------------------------------------------
    def encode_features(self, model, batch, ctx):
        return pooled_features(model.xfm.encode_image(batch["image"]))

    @torch.no_grad()
    def compute_features(self, runner, split: str) -> torch.Tensor:
        """The split's features in dataset order, on every rank (collective; cached)."""
        if split in self.features:
            return self.features[split]
        samples = self.samples(split)
        images = FolderImages(samples, eval_image_transform(self.task_cfg, self.model_cfg.vision.image_size))
        dtype = CACHE_DTYPES[self.task_cfg.cache_dtype]
        out = torch.zeros(len(samples), 2 * self.model_cfg.vision.hidden_size, dtype=dtype)
        seen = torch.zeros(len(samples), dtype=torch.bool)
        engine = runner.engine
        was_training = engine.training
        engine.eval()
        for batch in runner.eval_loader(split, dataset=images):
            feats = engine("encode_features", runner.to_device(batch), runner.context())
            local = (batch["index"], feats.detach().float().cpu().to(dtype))
            for index, values in runner.gather_objects(local):
                keep = index != PAD_INDEX
                out[index[keep]] = values[keep]
                seen[index[keep]] = True
        engine.train(was_training)
        if not bool(seen.all()):
            raise RuntimeError(f"image_probe features of {split}: {int((~seen).sum())} of {len(samples)} examples "
                               f"were not computed")
        self.features[split] = out
        return out

    def on_train_start(self, runner):
        feats = self.compute_features(runner, "train")
        if self.task_cfg.standardize:  # every rank holds every feature: the same statistics
            runner.model.head[0].set_stats(feats)

    def evaluate(self, runner, split):
        self.compute_features(runner, split)
        return super().evaluate(runner, split)

    # --- training / evaluation -----------------------------------------------------------
    def logits(self, model, batch):
        return model.head(batch["features"]).float()

    def loss(self, model, batch, ctx):
        loss = F.cross_entropy(self.logits(model, batch), batch["label"], label_smoothing=self.task_cfg.smoothing)
        return loss, {"ce": loss.detach()}

    def predict(self, model, batch, ctx):
        return {"logits": self.logits(model, batch), "label": batch["label"]}

    def compute_metrics(self, outputs, split, dataset):
        return topk_accuracy(outputs["logits"].numpy(), outputs["label"].numpy(), ks=(1,))
