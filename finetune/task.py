"""What a task is: the contract between one task module and the shared loop.

A task owns its model (the encoders it needs + its head), its dataset readers, collation, loss,
evaluation and metric names. The loop (``xfm.finetune.loop``) owns everything else: the engine,
epochs, distributed sampling, evaluation scheduling, the best model, checkpoints and metrics.

Lifecycle: ``Task(cfg, task_cfg, model_cfg, tokenizer)``; ``build_model(backbone)`` turns a
loaded ``XFM`` (any checkpoint kind) into the task's ``nn.Module``; ``dataset(split, train)``
returns a map-style dataset whose items are dicts; ``collate(items, train)`` batches them; the
engine calls ``forward_loss`` during training; ``evaluate(runner, split)`` scores a split.
The default ``evaluate`` runs ``predict`` over the split (each example exactly once across
ranks, in dataset order) and hands the outputs to ``compute_metrics``; tasks whose evaluation is
not per example (retrieval ranks everything against everything) override ``evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn


@dataclass
class TaskContext:
    """Per-call facts the model code needs (no torch.distributed calls inside the model)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None
    generator: torch.Generator | None = None
    step: int = 0


class TaskModel(nn.Module):
    """The module the engine wraps: the (possibly pruned) X-FM backbone as ``xfm`` and the task's
    new layers as ``head``. ``forward(mode, batch, ctx)`` dispatches to the task, so DeepSpeed
    (ZeRO-3 in particular) sees every call go through the engine."""

    def __init__(self, task: "Task", xfm: nn.Module, head: nn.Module | None):
        super().__init__()
        self.xfm = xfm
        self.head = head if head is not None else nn.Identity()
        self._task = [task]  # a list, so the task is not registered as a submodule

    @property
    def task(self) -> "Task":
        return self._task[0]

    def forward(self, mode: str, batch: dict, ctx: TaskContext):
        if mode == "loss":
            return self.task.loss(self, batch, ctx)
        if mode == "predict":
            return self.task.predict(self, batch, ctx)
        return getattr(self.task, mode)(self, batch, ctx)


class Task:
    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    # which X-FM parts the task keeps; the rest is dropped from the model (GLUE: text only)
    parts: ClassVar[tuple[str, ...]] = ("text", "vision", "fusion", "heads")
    # task config fields naming files that inference needs (VQA: the answer list): a saved model
    # directory carries a copy of each, so it still works when moved away from the data
    bundled_files: ClassVar[tuple[str, ...]] = ()
    main_metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    # batch keys that are float model inputs (cast to the engine's dtype); targets stay fp32
    float_inputs: ClassVar[tuple[str, ...]] = ("image",)
    # prefixes of the parameters that are new for this task (head lr multiplier, load report)
    head_prefixes: ClassVar[tuple[str, ...]] = ("head.",)
    # how the head starts, for the load report
    head_init: ClassVar[str] = "randomly initialised"

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        self.cfg = cfg
        self.task_cfg = task_cfg
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer

    # --- model ---------------------------------------------------------------------------
    def build_head(self, xfm: nn.Module) -> nn.Module | None:
        """The task's new layers (randomly initialised)."""
        return None

    def build_model(self, xfm: nn.Module) -> TaskModel:
        prune_backbone(xfm, self.parts)
        return TaskModel(self, xfm, self.build_head(xfm))

    # --- data ----------------------------------------------------------------------------
    def splits(self) -> Sequence[str]:
        return ("train", "val", "test")

    def dataset(self, split: str, train: bool) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, items: list[dict], train: bool) -> dict:
        raise NotImplementedError

    # --- training / evaluation -----------------------------------------------------------
    def on_train_start(self, runner) -> None:
        """Called on every rank, in step, once the weights are in place (also after a resume)
        and before the first training step: work that needs the engine before training (the
        features of a frozen encoder, computed once)."""

    def loss(self, model: TaskModel, batch: dict, ctx: TaskContext) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def predict(self, model: TaskModel, batch: dict, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Per-example outputs (leading dim = batch) for ``compute_metrics``."""
        raise NotImplementedError

    def compute_metrics(self, outputs: dict[str, torch.Tensor], split: str, dataset) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, runner, split: str) -> dict[str, float]:
        outputs, dataset = runner.predict_split(self, split)
        metrics = self.compute_metrics(outputs, split, dataset) if runner.is_main else {}
        self.write_predictions(runner, split, outputs, dataset)
        return runner.broadcast(metrics)

    def write_predictions(self, runner, split: str, outputs: dict, dataset) -> None:
        """Optional: leaderboard files (VQA results, COCO captions) into the run directory."""


def prune_backbone(xfm: nn.Module, keep: Sequence[str]) -> None:
    """Drop the X-FM parts a task does not use (their weights are then neither trained, saved
    nor gathered under ZeRO-3)."""
    for part in ("text", "vision", "fusion", "heads"):
        if part not in keep and getattr(xfm, part, None) is not None:
            setattr(xfm, part, None)


def text_capacity(model_cfg, max_len: int) -> int:
    """The longest text the language encoder takes: RoBERTa positions start after the pad id,
    so ``max_position_embeddings - pad_id - 1`` tokens (BERT-style tables: all of them)."""
    text = model_cfg.text
    offset = text.pad_token_id + 1 if text.position_style == "roberta" else 0
    return max(2, min(max_len, text.max_position_embeddings - offset))


def pad_ids(seqs: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to ``width`` (default: the longest) -> (ids, 0/1 mask)."""
    width = width or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask
