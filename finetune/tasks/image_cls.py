"""Image classification from class folders (ImageNet layout): the vision encoder alone.

Model (the X-FM classifier): the head input is [token 0, mean of the patch tokens] (2d; both
halves are the same vector in X-FM, whose token 0 is the patch mean) into a 5-Linear MLP
2d -> 4d -> 8d -> 4d -> 2d -> classes with LayerNorm + GELU between the Linears. ``head: linear``
puts one Linear there instead (BEiT's and timm's head, trunc-normal 0.02, zero bias): on a small
encoder trained from few pictures the deep head fits slower and generalises worse (BENCHMARKS.md).

Training (the X-FM ImageNet recipe, ``configs/finetune/image_cls.yaml``): timm's ImageNet train
transform (RandomResizedCrop, flip, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing),
mixup 0.8 / cutmix 1.0 with label smoothing 0.1 (``timm.data.Mixup``) and soft-target
cross-entropy; evaluation: resize the short side to ``S / crop_pct``, centre crop S. Layer-wise lr
decay and the head lr multiplier are ``optim.layer_decay`` / ``optim.head_lr_mult``.
``vflip`` and ``rot90`` (off in the ImageNet recipe, on in the demo's) add vertical flips and random
quarter turns, for pictures whose class does not depend on orientation.

Mixup randomness: timm's ``Mixup`` draws lambda, mixup-or-cutmix and the box from numpy's global
RNG. It runs here inside ``loss`` on the device batch, with numpy's global state seeded from
``ctx.generator`` (a function of seed, epoch, micro-batch and rank) for the call and restored
afterwards, so a resumed run mixes exactly as the uninterrupted one. (In ``collate`` it would
run in a loader worker whose numpy state is not tied to the batch position.)

Splits: ``split_dirs`` maps the run's split names to sub-folders of ``root`` (ImageNet ships
``train/`` and ``val/``; the synthetic world too, so its recipe selects and reports on ``val``).
Class indices are the training folder's sorted sub-folder names (torchvision's ``ImageFolder``
rule), recorded in the config (``classes``) so a saved model knows them without the data.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from xfm.finetune.formats import DataFormatError, read_image_folder
from xfm.finetune.images import IMAGE_MEAN, IMAGE_STD, load_image
from xfm.finetune.metrics import topk_accuracy
from xfm.finetune.registry import register
from xfm.finetune.task import Task


@dataclass
class ImageFoldersConfig:
    """Where the class folders are and how images become tensors (shared with ``image_probe``)."""

    root: str = "${XFM_DATA:-data}/world/classes"
    split_dirs: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val"})
    classes: list[str] = field(default_factory=list)  # empty: the training folder's sub-folders, sorted
    # normalisation of the pretraining loaders by default (the original ImageNet script used
    # ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225))
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    eval_crop_pct: Optional[float] = None  # None: 224/256 up to 224 px, else 1.0 (the original rule)

    def __post_init__(self):
        if "train" not in self.split_dirs:
            raise ValueError("task.split_dirs needs a 'train' entry (the folder the classes come from)")
        if self.eval_crop_pct is not None and not 0.0 < self.eval_crop_pct <= 1.0:
            raise ValueError("task.eval_crop_pct must be in (0, 1]")


@dataclass
class ImageClsConfig(ImageFoldersConfig):
    # train transform (timm create_transform)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    vflip: float = 0.0
    # a random multiple of 90 degrees before everything else: for pictures whose class does not
    # depend on their orientation (drawn shapes, aerial or microscope pictures), never ImageNet
    rot90: bool = False
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm policy string; None: off
    reprob: float = 0.25
    remode: Literal["const", "rand", "pixel"] = "pixel"
    recount: int = 1
    # mixup / cutmix (timm.data.Mixup); both alphas 0 and no cutmix_minmax: off
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: Optional[tuple[float, float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    smoothing: float = 0.1
    head: Literal["xfm_mlp", "linear"] = "xfm_mlp"

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


# ----------------------------------------------------------------------------- shared pieces
def pooled_features(states: torch.Tensor) -> torch.Tensor:
    """(B, 1+N, D) vision states -> (B, 2D): [token 0, mean of the patch tokens]."""
    return torch.cat((states[:, 0], states[:, 1:].mean(dim=1)), dim=-1)


def classification_head(d_in: int, num_classes: int) -> nn.Sequential:
    """The X-FM classifier MLP on a ``d_in`` input: d_in -> 2 d_in -> 4 d_in -> 2 d_in -> d_in ->
    classes, LayerNorm (eps 1e-5, torch's default, as the original) + GELU after each hidden Linear."""
    widths = [d_in, 2 * d_in, 4 * d_in, 2 * d_in, d_in]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
    layers.append(nn.Linear(d_in, num_classes))
    return nn.Sequential(*layers)


def linear_head(d_in: int, num_classes: int) -> nn.Linear:
    """BEiT's / timm's classifier: one Linear, trunc-normal(0.02) weight, zero bias."""
    from timm.layers import trunc_normal_

    head = nn.Linear(d_in, num_classes)
    trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def resolve_classes(cfg: ImageFoldersConfig) -> list[str]:
    """The class list: the config's, else the training folder's sorted sub-folder names (the
    ``read_image_folder`` rule). Written back into ``cfg`` so a saved model records it."""
    if not cfg.classes:
        root = os.path.join(cfg.root, cfg.split_dirs["train"])
        if not os.path.isdir(root):
            raise DataFormatError(f"{root}: training image folder not found (task.root + task.split_dirs.train; "
                                  f"or give task.classes)")
        cfg.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not cfg.classes:
            raise DataFormatError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if len(set(cfg.classes)) != len(cfg.classes):
        raise ValueError("task.classes has duplicate names")
    return list(cfg.classes)


def split_folder(cfg: ImageFoldersConfig, split: str) -> str:
    if split not in cfg.split_dirs:
        raise ValueError(f"split {split!r} has no folder: task.split_dirs has {sorted(cfg.split_dirs)} "
                         f"(point train.eval_split / train.test_split at one of them)")
    return os.path.join(cfg.root, cfg.split_dirs[split])


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize op for every level its RandAugment draws. The increasing-posterize level
    maps magnitude 10 (m9 + noise, clipped at 10) to 0 bits, which Pillow turned into a black
    image (a zero bit mask) until it started rejecting 0; this keeps the old result."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off: black
    return ImageOps.posterize(img, bits_to_keep)


def with_zero_bit_posterize(transform):
    """Point the posterize ops of a timm transform (a Compose holding a RandAugment) at
    ``posterize_any_bits``; only this transform's op objects change."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = posterize_any_bits
    return transform


class RandomRot90:
    """Rotate a PIL picture by 0, 90, 180 or 270 degrees, drawn from ``random`` like timm's own
    train transforms (so the loader's per-example seeding covers it)."""

    TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

    def __call__(self, img):
        turn = self.TURNS[random.randrange(4)]
        return img if turn is None else img.transpose(turn)

    def __repr__(self):
        return f"{type(self).__name__}()"


def eval_image_transform(cfg: ImageFoldersConfig, size: int):
    from timm.data import create_transform

    crop_pct = cfg.eval_crop_pct if cfg.eval_crop_pct is not None else (224 / 256 if size <= 224 else 1.0)
    return create_transform(size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            mean=tuple(cfg.mean), std=tuple(cfg.std))


class FolderImages(torch.utils.data.Dataset):
    """(path, class) samples -> {"image": transformed tensor, "label": class index}."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return {"image": self.transform(load_image(path)), "label": label}


def read_split(cfg: ImageFoldersConfig, split: str, classes: list[str]):
    return read_image_folder(split_folder(cfg, split), classes)


def collate_images(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long)}


@contextlib.contextmanager
def numpy_seeded_from(generator: torch.Generator):
    """numpy's global RNG seeded from ``generator`` inside the block, restored afterwards (for
    library code such as timm's Mixup that draws from ``np.random`` directly)."""
    words = torch.randint(0, 2 ** 31 - 1, (4,), generator=generator, device=generator.device).tolist()
    saved = np.random.get_state()
    np.random.seed(np.asarray(words, dtype=np.uint32))
    try:
        yield
    finally:
        np.random.set_state(saved)


def seeded_mixup(mixup, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None):
    """``timm.data.Mixup`` on a batch, its draws taken from ``generator`` -> (images, soft targets).
    ``images`` is mixed in place (as timm does)."""
    if generator is None:
        raise ValueError("mixup needs ctx.generator (the loop seeds one per micro-batch)")
    if images.shape[0] % 2:
        raise ValueError(f"mixup pairs examples within a batch: the batch size must be even, got {images.shape[0]}")
    with numpy_seeded_from(generator):
        return mixup(images, labels)


@register("image_cls")
class ImageClsTask(Task):
    Config = ImageClsConfig
    parts = ("vision",)
    main_metric = "top1"
    float_inputs = ("image",)

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        self.classes = resolve_classes(task_cfg)
        self.mixup = None
        if task_cfg.mixup_active:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=task_cfg.mixup, cutmix_alpha=task_cfg.cutmix,
                               cutmix_minmax=task_cfg.cutmix_minmax, prob=task_cfg.mixup_prob,
                               switch_prob=task_cfg.mixup_switch_prob, mode=task_cfg.mixup_mode,
                               label_smoothing=task_cfg.smoothing, num_classes=len(self.classes))
            if cfg.train.batch_size % 2:
                raise ValueError(f"task.mixup / task.cutmix pair examples within a batch: train.batch_size must "
                                 f"be even, got {cfg.train.batch_size}")

    @property
    def image_size(self) -> int:
        return self.model_cfg.vision.image_size

    def splits(self):
        return tuple(self.task_cfg.split_dirs)

    def build_head(self, xfm):
        d_in = 2 * self.model_cfg.vision.hidden_size
        if self.task_cfg.head == "linear":
            return linear_head(d_in, len(self.classes))
        return classification_head(d_in, len(self.classes))

    def train_transform(self):
        from timm.data import create_transform

        c = self.task_cfg
        transform = with_zero_bit_posterize(create_transform(
            self.image_size, is_training=True, scale=tuple(c.crop_scale), hflip=c.hflip, vflip=c.vflip,
            auto_augment=c.auto_augment, interpolation="bicubic", re_prob=c.reprob, re_mode=c.remode,
            re_count=c.recount, mean=tuple(c.mean), std=tuple(c.std)))
        if c.rot90:
            transform.transforms.insert(0, RandomRot90())
        return transform

    def dataset(self, split, train):
        folder = read_split(self.task_cfg, split, self.classes)
        transform = self.train_transform() if train else eval_image_transform(self.task_cfg, self.image_size)
        return FolderImages(folder.samples, transform)

    def collate(self, items, train):
        return collate_images(items)

    def logits(self, model, images):
        return model.head(pooled_features(model.xfm.encode_image(images))).float()

    def loss(self, model, batch, ctx):
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            images, targets = seeded_mixup(self.mixup, images, labels, ctx.generator)
            loss = SoftTargetCrossEntropy()(self.logits(model, images), targets.float())
            return loss, {"soft_ce": loss.detach()}
        loss = F.cross_entropy(self.logits(model, images), labels, label_smoothing=self.task_cfg.smoothing)
        return loss, {"ce": loss.detach()}

    def predict(self, model, batch, ctx):
        return {"logits": self.logits(model, batch["image"]), "label": batch["label"]}

    def compute_metrics(self, outputs, split, dataset):
        # top-5 of a set with at most 5 classes is 100 by definition (ImageNet has 1000)
        return topk_accuracy(outputs["logits"].numpy(), outputs["label"].numpy(), ks=(1, 5))
