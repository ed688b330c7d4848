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
from xfm.objectives.streams import STREAMS  # the one list of stream names
from xfm.pretrain.data import DataConfig
from xfm.runtime.config import ENCODERS, CheckpointConfig, EngineConfig, OptimConfig
from xfm.runtime.config import LoggingConfig as BaseLoggingConfig


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
    # group is left completely alone by that optimizer step: weights, AdamW moments and step
    # count (what torch's AdamW does for a parameter without gradient; under ZeRO every
    # partition would step otherwise). false: every part steps every time.
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
class LoggingConfig(BaseLoggingConfig):
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
    steps: int = 1000  # the schedule length (stored in checkpoints; see optim.reschedule)
    # end this invocation after this step (checkpoint saved, exit 0) without touching the
    # schedule; a later --resume continues to ``steps``
    stop_at: Optional[int] = None
    out: str = "runs/pretrain"
    seed: int = 42
    deterministic: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be in [1, steps={self.steps}], got {self.stop_at}")


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
