"""The module DeepSpeed wraps: ``forward(stream, batch, ctx)`` runs that stream's objectives.

Running the objectives inside the engine's forward is what lets ZeRO-3 gather each submodule's
parameters as it is called and release them after, and lets the engine own backward/step. The
weighted sum is the loss that goes to backward; the unweighted parts go to the logs.
"""
from __future__ import annotations

import torch
from torch import nn


class PretrainWrapper(nn.Module):
    def __init__(self, model: nn.Module, loss_weights: dict[str, float] | None = None,
                 stream_losses: dict | None = None):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights or {})
        if stream_losses is None:
            from xfm.objectives import STREAM_LOSSES as stream_losses
        self.stream_losses = stream_losses

    def weight(self, stream: str, name: str) -> float:
        return self.loss_weights.get(f"{stream}.{name}", self.loss_weights.get(stream, 1.0))

    def forward(self, stream: str, batch: dict, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if stream not in self.stream_losses:
            raise KeyError(f"no objectives for stream {stream!r}; known {sorted(self.stream_losses)}")
        parts = self.stream_losses[stream](self.model, batch, ctx)
        if not parts:
            raise RuntimeError(f"stream {stream!r}: the objectives returned no loss")
        loss = None
        for name, value in parts.items():
            term = self.weight(stream, name) * value
            loss = term if loss is None else loss + term
        return loss, parts
