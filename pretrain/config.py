"""The pretraining run's typed config: one small dataclass per concern.

``load_pretrain_config(path, overrides)`` reads ``configs/pretrain/<name>.yaml`` (with ``defaults``
includes and ``--set`` overrides) into ``PretrainConfig``; every unknown key or wrong type is an
error naming key and file (``xfm.config``). The data section is the streaming loaders' own
``DataConfig`` (``xfm.pretrain.data``), so the loaders and the engine read one schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from xfm.config import ConfigError, from_dict, load_config, to_dict, _deep_merge
from xfm.model_config import ModelConfig, model_config
from xfm.pretrain.data import DataConfig

STREAMS = ("text", "regions", "images", "pairs")
ENCODERS = ("text", "vision", "fusion")


@dataclass
class ModelSection:
    """Which model: a built-in size, or a model YAML file, plus nested field overrides."""

    size: str = "tiny"
    config_path: Optional[str] = None  # a ModelConfig YAML; wins over ``size``
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {vision: {drop_path: 0.0}}
    # checkpoints applied in order before training (RoBERTa dir, BEiT-v2 file, X-FM dir/.th):
    # whatever xfm.checkpoint.load_into reads; keys they do not cover keep their random init
    init_from: list[str] = field(default_factory=list)

    def build(self) -> ModelConfig:
        if self.config_path:
            base = to_dict(load_config(self.config_path, ModelConfig))
        else:
            base = to_dict(model_config(self.size))
        return from_dict(ModelConfig, _deep_merge(base, self.overrides), "model.overrides")


@dataclass
class OptimConfig:
    """AdamW with parameter groups (XFM_METHOD.md, "Optimisation")."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    # parameters whose name starts with one of these get lr * lr_mult (new heads + temperature)
    lr_mult: float = 2.0
    lr_mult_prefixes: list[str] = field(default_factory=lambda: ["heads."])
    warmup_steps: int = 2500
    decay: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # the lr decays to lr * min_lr_ratio at the last step

    def __post_init__(self):
        if self.lr <= 0 or self.lr_mult <= 0:
            raise ValueError("optim.lr and optim.lr_mult must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1]")


@dataclass
class EngineConfig:
    """DeepSpeed engine settings; ``deepspeed`` is merged last into the generated DS config."""

    zero_stage: int = 3
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_clipping: float = 1.0  # set explicitly: DeepSpeed's own default changed in 0.19.3
    grad_accum: int = 1
    activation_checkpointing: list[str] = field(default_factory=list)  # subset of ENCODERS
    backend: Optional[str] = None  # None: nccl on GPUs, gloo on CPU
    dist_timeout_s: int = 1800  # a rank waiting longer than this in a collective fails loudly
    deepspeed: dict[str, Any] = field(default_factory=dict)  # extra DS config (offload, buckets...)

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0..3, got {self.zero_stage}")
        if self.grad_accum < 1:
            raise ValueError("engine.grad_accum must be >= 1")
        bad = [e for e in self.activation_checkpointing if e not in ENCODERS]
        if bad:
            raise ValueError(f"engine.activation_checkpointing: unknown encoder(s) {bad}; known {list(ENCODERS)}")


@dataclass
class StreamsConfig:
    """Which streams train, their loss weights, and how they are grouped into optimizer steps.

    ``step_groups``: every group is one optimizer step (the losses of its streams are summed);
    the paper makes one step for text and one for regions + images + pairs. ``[[text, regions,
    images, pairs]]`` is one joint step. ``mode: all`` runs every group every step; ``mode:
    sample`` runs one group per step drawn with ``group_probs`` from an RNG seeded by (seed,
    step) only, so every rank draws the same group (ZeRO-3 hangs otherwise).
    ``loss_weights``: ``{stream: w}`` or ``{stream.loss: w}`` (the latter wins); default 1.
    """

    step_groups: list[list[str]] = field(default_factory=lambda: [["text"], ["regions", "images", "pairs"]])
    mode: Literal["all", "sample"] = "all"
    group_probs: list[float] = field(default_factory=list)
    loss_weights: dict[str, float] = field(default_factory=dict)
    # a model part (text / vision / fusion / each head) none of whose modules ran in a step
    # group gets lr 0 in that optimizer step (what torch's AdamW does for a parameter without
    # gradient; under ZeRO every partition steps). false: every part steps every time.
    freeze_unused_parts: bool = True

    def __post_init__(self):
        seen = []
        for g in self.step_groups:
            if not g:
                raise ValueError("streams.step_groups: empty group")
            for s in g:
                if s not in STREAMS:
                    raise ValueError(f"streams.step_groups: unknown stream {s!r}; known {list(STREAMS)}")
                if s in seen:
                    raise ValueError(f"streams.step_groups: stream {s!r} appears twice")
                seen.append(s)
        if not self.step_groups:
            raise ValueError("streams.step_groups: at least one group is needed")
        if self.mode == "sample" and self.group_probs and len(self.group_probs) != len(self.step_groups):
            raise ValueError("streams.group_probs: one probability per step group")

    @property
    def streams(self) -> list[str]:
        return [s for g in self.step_groups for s in g]


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps; 0 = only at the end and on SIGTERM/SIGUSR1
    dir: Optional[str] = None  # default RUN_DIR/checkpoints
    keep_last: int = 3  # 0 keeps every checkpoint


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = False
    progress: bool = True
    # every rank appends to RUN_DIR/plans/rank<r>.jsonl a line with each step's plan and one per
    # stream batch it is about to run, with its row count (hang triage: which rank was where)
    trace_plan: bool = False


@dataclass
class PretrainConfig:
    data: DataConfig
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    steps: int = 1000
    out: str = "runs/pretrain"
    seed: int = 42
    deterministic: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def load_pretrain_config(path: str, overrides: list[str] | None = None) -> PretrainConfig:
    cfg = load_config(path, PretrainConfig, overrides)
    try:
        cfg.model.build()  # surface bad model overrides now, naming the file
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


__all__ = [
    "PretrainConfig", "ModelSection", "OptimConfig", "EngineConfig", "StreamsConfig",
    "CheckpointConfig", "LoggingConfig", "load_pretrain_config", "ConfigError", "STREAMS",
]
