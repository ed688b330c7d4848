"""GLUE (and the synthetic world's GLUE-style sets): the language encoder alone, token 0 into
Linear(d, 2d) -> LayerNorm -> GELU -> Linear(2d, labels), cross-entropy (MSE for STS-B).

The vision and fusion encoders are not built. GLUE's test files have no labels, so by default
the model is selected on ``dev`` and the final evaluation is on ``dev`` too (MNLI: selected on
``dev_matched``, reported on ``dev_mismatched`` - set ``split_files`` to change).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xfm.finetune.formats import glue_task as glue_format, read_glue
from xfm.finetune.metrics import glue_main_metric, glue_metrics
from xfm.finetune.registry import register
from xfm.finetune.task import Task, pad_ids, text_capacity


@dataclass
class GlueConfig:
    name: str = "SynthRTE"  # a GLUE task (CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE) or SynthRTE / SynthCoLA
    data_dir: str = "${XFM_DATA:-data}/world/glue/SynthRTE"
    max_len: int = 128
    # our split -> the task's file split
    split_files: dict[str, str] = field(default_factory=dict)
    metric_task: Optional[str] = None  # whose official metrics (default: the task; Synth* -> the real one)

    def __post_init__(self):
        glue_format(self.name)  # unknown names fail here, naming the known ones


def _metric_task(cfg: GlueConfig) -> str:
    if cfg.metric_task:
        return cfg.metric_task
    return cfg.name[len("Synth"):] if cfg.name.startswith("Synth") else cfg.name


def _default_split_files(name: str) -> dict[str, str]:
    if name == "MNLI":
        return {"train": "train", "val": "dev_matched", "test": "dev_mismatched"}
    return {"train": "train", "val": "dev", "test": "dev"}


class TokenPairs(torch.utils.data.Dataset):
    def __init__(self, examples, tokenizer, max_len: int, regression: bool):
        self.examples, self.tokenizer, self.max_len, self.regression = examples, tokenizer, max_len, regression

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        enc = self.tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=self.max_len)
        label = ex.label if ex.label is not None else (0.0 if self.regression else -100)
        return {"ids": enc["input_ids"], "label": label}


def mlp_head(d_in: int, d_hidden: int, d_out: int, eps: float = 1e-12) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Linear, the head shape of the X-FM task models."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden, eps=eps), nn.GELU(),
                         nn.Linear(d_hidden, d_out))


@register("glue")
class GlueTask(Task):
    Config = GlueConfig
    parts = ("text",)
    float_inputs = ()

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        self.format = glue_format(task_cfg.name)
        self.metric_task = _metric_task(task_cfg)
        self.main_metric = glue_main_metric(self.metric_task)
        self.split_files = {**_default_split_files(task_cfg.name), **task_cfg.split_files}

    def build_head(self, xfm):
        d = self.model_cfg.text.hidden_size
        return mlp_head(d, 2 * d, self.format.num_labels)

    def dataset(self, split, train):
        examples = read_glue(self.task_cfg.name, self.task_cfg.data_dir, self.split_files[split])
        return TokenPairs(examples, self.tokenizer, text_capacity(self.model_cfg, self.task_cfg.max_len),
                          self.format.is_regression)

    def collate(self, items, train):
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        dtype = torch.float32 if self.format.is_regression else torch.long
        return {"ids": ids, "mask": mask, "label": torch.tensor([it["label"] for it in items], dtype=dtype)}

    def logits(self, model, batch):
        states = model.xfm.encode_text(batch["ids"], batch["mask"])
        return model.head(states[:, 0]).float()

    def loss(self, model, batch, ctx):
        logits = self.logits(model, batch)
        if self.format.is_regression:
            loss = F.mse_loss(logits.squeeze(-1), batch["label"].float())
        else:
            loss = F.cross_entropy(logits, batch["label"])
        return loss, {"ce" if not self.format.is_regression else "mse": loss.detach()}

    def predict(self, model, batch, ctx):
        return {"logits": self.logits(model, batch), "label": batch["label"]}

    def compute_metrics(self, outputs, split, dataset):
        logits = outputs["logits"]
        preds = logits.squeeze(-1) if self.format.is_regression else logits
        labels = outputs["label"]
        if not self.format.is_regression and bool((labels < 0).any()):
            raise ValueError(f"glue {self.task_cfg.name}: split {split!r} ({self.split_files[split]}) has no labels; "
                             f"point task.split_files.{split} at a labelled file (dev)")
        return glue_metrics(self.metric_task, preds.numpy(), labels.numpy())
