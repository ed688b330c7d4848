"""Typed config sections shared by pretraining and fine-tuning: optimizer, engine, checkpoints,
logging. Each run config (``PretrainConfig``, ``FinetuneConfig``) embeds them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

ENCODERS = ("text", "vision", "fusion")


@dataclass
class OptimConfig:
    """AdamW with parameter groups and the lr schedule (xfm.runtime.optim)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    # parameters whose name starts with one of these get lr * lr_mult (new heads + temperature)
    lr_mult: float = 2.0
    lr_mult_prefixes: list[str] = field(default_factory=lambda: ["heads."])
    # which parameters get no weight decay (xfm.runtime.optim): "original" = the original X-FM
    # code's substring rule on the official names (the paper's recipe); "clean" = biases, every
    # normalisation layer and scalars
    groups: Literal["original", "clean"] = "clean"
    warmup_steps: int = 2500
    decay: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # the lr decays to lr * min_lr_ratio at the last step
    # the schedule length is stored in every checkpoint; a resume that asks for another length
    # stops with an error unless this is true (then the schedule is recomputed for the new length
    # from the resumed step on: the lr jumps to where the new schedule is at that step)
    reschedule: bool = False
    # AdamW implementation (xfm.runtime.optimizers): auto = torch's fused kernel on CUDA, plain on CPU
    impl: Literal["auto", "torch", "torch_fused", "deepspeed_fused", "apex_fused"] = "auto"

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
class CheckpointConfig:
    every: int = 1000  # steps; 0 = only at the end and on SIGTERM/SIGUSR1
    dir: Optional[str] = None  # default RUN_DIR/checkpoints
    keep_last: int = 3  # 0 keeps every checkpoint


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = False
    progress: bool = True


