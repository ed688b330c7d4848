"""The model's typed config: one small dataclass per encoder, and the named sizes.

The field defaults are the paper's base model. Each named size (``tiny``, ``base``, ``large``) is
one YAML file shipped with the package, ``xfm/sizes/<size>.yaml``, holding only what differs from
those defaults; ``model_config(size)`` reads it, and ``configs/model/<size>.yaml`` includes the
same file for ``--config`` / ``model.config_path`` users, so every value is written once. Widths:
the fusion encoder runs at the language width and cross-attends to vision states of the vision
width.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Literal

from .config import ConfigError, load_config

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


ABS_POS_EMBEDS = ("none", "sincos")


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
    # "none" (BEiT-v2 and the official X-FM: positions only through the relative bias) or
    # "sincos": a fixed 2-D sine-cosine table (timm's build_sincos2d_pos_embed, as MAE) added to
    # the patch embeddings. A deep encoder infers absolute positions from the relative bias at the
    # grid's edges; a 2-layer one does not, and without them a box head cannot localise
    # (BENCHMARKS.md, fine-tuning vs random weights). No parameters: the official key layout stays.
    abs_pos_embed: str = "none"

    def __post_init__(self):
        if self.abs_pos_embed not in ABS_POS_EMBEDS:
            raise ValueError(f"vision.abs_pos_embed must be one of {list(ABS_POS_EMBEDS)}, got {self.abs_pos_embed!r}")
        if self.abs_pos_embed == "sincos" and self.hidden_size % 4:
            raise ValueError(f"vision.abs_pos_embed 'sincos' needs vision.hidden_size divisible by 4, got {self.hidden_size}")
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
    # std of the random init of every Linear, Embedding and patch-embedding weight in the three
    # encoders and the heads (trunc-normal in the vision encoder, normal elsewhere). 0.02 is
    # BEiT's and BERT's, set for width 768, where a Linear's output is ~0.55x its input; at width
    # 128 the same 0.02 gives ~0.23x per Linear, the layers start as near-identities and training
    # from scratch sits on a plateau for hundreds of steps. 0.02 * sqrt(768 / width) keeps the
    # per-Linear gain of the base model (configs/model/demo.yaml, BENCHMARKS.md). Pretrained
    # weights are loaded over the init, so this matters only when training from random weights.
    init_std: float = 0.02
    # technique 1: detach language states before the fusion encoder (pretraining only)
    stop_text_grad: bool = True
    # technique 2: masked image modelling guided by VL training
    mim: bool = True
    # activation checkpointing per encoder (set by the engine config)
    grad_checkpointing: bool = False
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    # torch.compile each repeated block of the three encoders (regional compilation, see
    # xfm.model.compile); off by default: compiling costs start-up time and pays only where
    # measured (bench/step_speed.py)
    compile: bool = False
    # LayerNorm implementation in the encoders: "torch" (nn.LayerNorm) or "apex" (NVIDIA apex's
    # FusedLayerNorm, CUDA only, an optional install: xfm.model.norms says how)
    norm_impl: Literal["torch", "apex"] = "torch"

    def __post_init__(self):
        if not self.init_std > 0:
            raise ValueError(f"model.init_std must be > 0, got {self.init_std!r}")
        if self.norm_impl not in ("torch", "apex"):
            raise ValueError(f"model.norm_impl must be 'torch' or 'apex', got {self.norm_impl!r}")


def _sizes_folder():
    return resources.files("xfm").joinpath("sizes")


def _packaged_sizes() -> tuple[str, ...]:
    folder = _sizes_folder()
    if not folder.is_dir():  # an install that left out the package data: said by model_config
        return ()
    return tuple(sorted(e.name[: -len(".yaml")] for e in folder.iterdir() if e.name.endswith(".yaml")))


# the named sizes are the files that ship in xfm/sizes/
SIZES = _packaged_sizes()


def size_file(size: str):
    """The packaged YAML file of a named size (an ``importlib.resources`` path)."""
    if not SIZES:
        raise FileNotFoundError(f"{_sizes_folder()}: the model size files (xfm/sizes/*.yaml) are not "
                                "installed; reinstall xfm from a complete source tree")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    return _sizes_folder().joinpath(f"{size}.yaml")


def model_config(size: str, **overrides) -> ModelConfig:
    """A named size read from its packaged file, with top-level field overrides
    (``stop_text_grad=False``...)."""
    with resources.as_file(size_file(size)) as path:
        cfg = load_config(path, ModelConfig)
    if cfg.size != size:
        raise ConfigError(f"{path}: size is {cfg.size!r}, but the file is the {size!r} preset")
    return replace(cfg, **overrides)
