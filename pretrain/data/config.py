"""Typed config of the pretraining data streams (nested by the engine's config under ``data:``).

One ``StreamConfig`` per stream (``pairs``, ``regions``, ``text``, ``images``; ``None`` = stream
off), each a weighted list of ``SourceConfig`` shard sets. Defaults follow the paper
(docs/METHOD.md): 30 tokens for captions and phrases, 128 for text, RandomResizedCrop(0.2-1,
bicubic) + flip + RandAugment(2, 7) without colour ops, fusion MLM 50% / at most 15 tokens, text
MLM 15% / at most 20, BEiT block masking of 75 of 196 patches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from xfm.objectives.streams import STREAMS as STREAM_NAMES  # the one list of stream names
DEFAULT_TEXT_LEN = {"pairs": 30, "regions": 30, "text": 128, "images": 0}

# RandAugment ops without colour changes (X-VLM's list, in timm's names): no Color, Contrast,
# Invert, Posterize, Solarize*. Region batches use only the photometric ones, because a
# geometric op would move the box away from its shape.
RANDAUG_OPS = ["AutoContrast", "Equalize", "Brightness", "Sharpness",
               "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "Rotate"]
RANDAUG_OPS_REGIONS = ["AutoContrast", "Equalize", "Brightness", "Sharpness"]

# CLIP's normalisation, as X-VLM / X-FM's loaders use
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class SourceConfig:
    """One shard set: a brace pattern, a local path, a ``pipe:`` URL, or a list of them."""

    urls: Union[str, list[str]]
    weight: float = 1.0
    name: Optional[str] = None  # for logs; default: the first URL

    def __post_init__(self):
        if isinstance(self.urls, str):
            if not self.urls.strip():
                raise ValueError("source.urls is empty")
        elif not self.urls:
            raise ValueError("source.urls is an empty list")
        if not self.weight > 0:
            raise ValueError(f"source.weight must be > 0, got {self.weight}")


@dataclass
class StreamConfig:
    sources: list[SourceConfig]
    batch_size: int  # pairs/text/images: samples; regions: images (each with several region rows)
    max_text_len: Optional[int] = None  # tokens incl. <s> and </s>; None: 30, text stream 128
    shuffle_buffer: int = 1000  # samples shuffled together per worker (block shuffle, see pipeline)
    num_workers: Optional[int] = None  # None: DataConfig.num_workers
    max_regions: int = 5  # regions stream: region rows drawn per image (+1 for its caption)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("stream.sources: at least one source is needed")
        if self.batch_size < 1:
            raise ValueError(f"stream.batch_size must be >= 1, got {self.batch_size}")
        if self.max_text_len is not None and self.max_text_len < 3:
            raise ValueError(f"stream.max_text_len must be >= 3, got {self.max_text_len}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"stream.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError("stream.num_workers must be >= 0")
        if self.max_regions < 1:
            raise ValueError("stream.max_regions must be >= 1")


@dataclass
class AugmentConfig:
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    randaugment: bool = True
    randaugment_n: int = 2
    randaugment_m: int = 7
    randaugment_ops: list[str] = field(default_factory=lambda: list(RANDAUG_OPS))
    region_randaugment_ops: list[str] = field(default_factory=lambda: list(RANDAUG_OPS_REGIONS))
    # regions: the crop keeps every chosen box; it spans at least this fraction of the free
    # margin around the boxes' union (1.0 = no crop)
    region_crop: bool = True
    region_hflip: bool = True  # also swaps "left" <-> "right" in phrases and captions
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD


@dataclass
class MaskingConfig:
    # text MLM (language encoder, text stream)
    text_mask_prob: float = 0.15
    text_max_masks: int = 20
    text_span_prob: float = 0.2
    text_span_lengths: tuple[int, ...] = (2, 3)
    # fusion MLM (captions of pairs, phrases of regions)
    fusion_mask_prob: float = 0.5
    fusion_max_masks: int = 15
    # the original code masks captions with the same generator as texts (spans with p 0.2)
    fusion_span_prob: float = 0.2
    whole_word: bool = True
    mask_frac: float = 0.8
    random_frac: float = 0.1
    # MIM block mask: None = the paper's 75 of 196 patches / blocks >= 16, scaled to the grid
    mim_num_masks: Optional[int] = None
    mim_min_block: Optional[int] = None
    mim_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    # random replacements drawn below this id (a model vocabulary smaller than the tokenizer's)
    random_vocab_size: Optional[int] = None


@dataclass
class DataConfig:
    tokenizer: str  # a tokenizer directory (xfm.tokenizer.load_tokenizer)
    image_size: int = 224
    patch_size: int = 16  # for the MIM and region patch masks; must match the vision encoder
    num_workers: int = 4
    pairs: Optional[StreamConfig] = None
    regions: Optional[StreamConfig] = None
    text: Optional[StreamConfig] = None
    images: Optional[StreamConfig] = None
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prefetch_factor: int = 2
    pin_memory: bool = False
    # "fork" (default on Linux), "spawn", "forkserver"; None = torch's default
    multiprocessing_context: Optional[str] = None

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"data.image_size {self.image_size} is not divisible by data.patch_size {self.patch_size}")
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def stream(self, name: str) -> Optional[StreamConfig]:
        if name not in STREAM_NAMES:
            raise KeyError(f"unknown stream {name!r}; known: {list(STREAM_NAMES)}")
        return getattr(self, name)

    @property
    def enabled(self) -> list[str]:
        return [n for n in STREAM_NAMES if getattr(self, n) is not None]

    def text_len_for(self, name: str) -> int:
        s = self.stream(name)
        return DEFAULT_TEXT_LEN[name] if s is None or s.max_text_len is None else s.max_text_len

    def workers_for(self, name: str) -> int:
        s = self.stream(name)
        return self.num_workers if s is None or s.num_workers is None else s.num_workers
