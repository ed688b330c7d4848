"""The fine-tuning run's typed config.

``configs/finetune/<task>.yaml`` is read into ``FinetuneConfig``: the sections shared with
pretraining (``optim``, ``engine``, ``checkpoint``, ``logging`` from ``xfm.runtime.config``), the
epoch loop (``train``), how the checkpoint's model is adjusted (``model``), and ``task``: the
task's own section, checked against the registered task's ``Config`` dataclass (so an unknown
key there is an error naming ``task.<key>`` and the file, like everywhere else).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from xfm.config import ConfigError, load_config
from xfm.runtime.config import CheckpointConfig, EngineConfig, LoggingConfig, OptimConfig


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """AdamW as in pretraining plus the fine-tuning recipes' knobs.

    ``layer_decay`` < 1: layer-wise lr decay (BEiT/ImageNet recipe): a parameter at depth
    ``i`` of an encoder with ``n`` layers trains at ``lr * layer_decay ** (n + 1 - i)`` (embeddings
    depth 0, head depth n + 1). ``head_lr_mult``: lr multiplier of the task's new head.
    ``lr_mult`` applies to the parameters whose task-model name starts with one of
    ``lr_mult_prefixes`` (none by default; pretraining's ``heads.`` would name nothing here).
    ``warmup_ratio`` > 0 overrides ``warmup_steps`` with that share of the total steps."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    lr_mult_prefixes: list[str] = field(default_factory=list)
    layer_decay: float = 1.0
    head_lr_mult: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError("optim.layer_decay must be in (0, 1]")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("optim.warmup_ratio must be in [0, 1)")


@dataclass
class FinetuneEngineConfig(EngineConfig):
    zero_stage: int = 2  # fine-tuning recipes default to stage 2 (stage 3 and 0 work too)


@dataclass
class TrainConfig:
    epochs: float = 1.0          # may be fractional (the demo); max_steps > 0 wins
    max_steps: int = 0
    batch_size: int = 32         # per rank, per micro-step
    eval_batch_size: int = 64    # per rank
    eval_every: int = 0          # optimizer steps between evaluations; 0 = at the end of each epoch
    eval_split: str = "val"      # the split the best model is selected on
    test_split: Optional[str] = "test"  # evaluated with the best model at the end (None: skip)
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    num_workers: int = 2
    # MB of decoded pictures kept in memory for the run (0: off); pays off with num_workers 0
    # on small sets of small pictures (finetune/image_cache.py)
    image_cache_mb: float = 0.0
    skip_train: bool = False     # evaluation-only recipes (zero-shot)

    def __post_init__(self):
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("train.batch_size and train.eval_batch_size must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("train.epochs or train.max_steps must be > 0")
        if self.image_cache_mb < 0:
            raise ValueError(f"train.image_cache_mb must be >= 0 (0 switches the cache off), got {self.image_cache_mb}")


@dataclass
class FinetuneModelSection:
    """How the checkpoint's model is built: field overrides (e.g. ``{vision: {drop_path: 0.1}}``)
    and ``num_heads`` for official checkpoints (their head count is not in the weights)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    num_heads: Optional[int] = None


@dataclass
class FinetuneConfig:
    task: dict[str, Any] = field(default_factory=dict)  # the task's own section
    tokenizer: str = "${XFM_DATA:-data}/world/tokenizer"
    checkpoint_path: Optional[str] = None  # --checkpoint
    model: FinetuneModelSection = field(default_factory=FinetuneModelSection)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    engine: FinetuneEngineConfig = field(default_factory=FinetuneEngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep_last=1))
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    out: str = "runs/finetune"
    seed: int = 42
    deterministic: bool = False


def load_finetune_config(path: str, task_config_cls: type, overrides: list[str] | None = None):
    """-> (FinetuneConfig, the task's own config object)."""
    from xfm.config import _build

    cfg = load_config(path, FinetuneConfig, overrides)
    try:
        task_cfg = _build(task_config_cls, cfg.task, "task")  # errors name task.<key>
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg, task_cfg
