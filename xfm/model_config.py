"""The model's typed config: one small dataclass per encoder, sizes ``tiny``, ``base``, ``large``.

YAML files in ``configs/model/<size>.yaml`` hold the same values; ``model_config(name)`` returns
the built-in ones so tests need no file. Widths: the fusion encoder runs at the language width and
cross-attends to vision states of the vision width.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Backend = Literal["auto", "torch", "triton"]


@dataclass
class TextConfig:
    """Language encoder: RoBERTa/BERT-style, post-LN."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    # "roberta": positions = cumsum(non-pad) + pad_id (pad gets pad_id); "bert": 0..L-1
    position_style: Literal["roberta", "bert"] = "roberta"
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"text.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")


@dataclass
class VisionConfig:
    """Vision encoder: BEiT-v2 ViT (relative position bias, layer scale, mask token)."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_scale_init: float = 0.1
    drop_path: float = 0.1
    layer_norm_eps: float = 1e-6
    # how many of the last blocks run a second, box-restricted pass for region batches
    # (X-VLM "local attention"); 0 disables the restricted pass (box-pooled features only)
    region_attn_depth: int = 4

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size {self.image_size} not divisible by patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass
class FusionConfig:
    """Fusion encoder: self-attn -> cross-attn(image) -> FFN in every layer, at the text width."""

    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1


@dataclass
class KernelsConfig:
    """Which implementation each fused op uses: auto (Triton when eligible), torch, triton."""

    attention: Backend = "auto"
    contrastive: Backend = "auto"


@dataclass
class ModelConfig:
    size: str = "base"
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    embed_dim: int = 256
    temp_init: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    # technique 1: detach language states before the fusion encoder (pretraining only)
    stop_text_grad: bool = True
    # technique 2: masked image modelling guided by VL training
    mim: bool = True
    # activation checkpointing per encoder (set by the engine config)
    grad_checkpointing: bool = False
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


def _tiny() -> ModelConfig:
    # matches ../shared/refdata/xfm_official_keys_tiny.json: image 32, patch 8, width 64,
    # 2+2+2 layers, 4 heads, vocab 1000, 64 positions, embed 32
    return ModelConfig(
        size="tiny",
        text=TextConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                        intermediate_size=256, max_position_embeddings=64,
                        hidden_dropout=0.0, attention_dropout=0.0),
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4,
                            drop_path=0.0, region_attn_depth=1),
        fusion=FusionConfig(num_layers=2, num_heads=4, intermediate_size=256,
                            hidden_dropout=0.0, attention_dropout=0.0),
        embed_dim=32,
    )


def _large() -> ModelConfig:
    return ModelConfig(
        size="large",
        text=TextConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
        vision=VisionConfig(hidden_size=1024, num_layers=24, num_heads=16, drop_path=0.2),
        fusion=FusionConfig(num_layers=12, num_heads=16, intermediate_size=4096),
    )


SIZES = {"tiny": _tiny, "base": ModelConfig, "large": _large}


def model_config(size: str, **overrides) -> ModelConfig:
    """Built-in size preset, with top-level field overrides (``stop_text_grad=False``...)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    return replace(SIZES[size](), **overrides)
