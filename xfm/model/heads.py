"""Heads shared by the pretraining objectives, official X-FM shapes and HF/official names.

- ``vision_proj``, ``text_proj``: Linear to ``embed_dim`` (token 0 of each encoder).
- ``temp``: learnable temperature; calling the module returns it clamped to [temp_min, temp_max]
  with the gradient of the official in-place clamp (straight-through; see ``Temperature.forward``)
  (read as ``heads.temp()``, never ``.temp.data``: ZeRO-3 gathers it inside this call).
- ``itm``, ``bbox``: Linear(d, 2d) -> LayerNorm -> GELU -> Linear(2d, 2 | 4) (keys ``0,1,3``).
- ``text_mlm``, ``fusion_mlm``: RoBERTa LM head (dense -> GELU -> layer_norm -> decoder + bias).
  The text head's decoder weight IS the language encoder's word-embedding Parameter (tied);
  the fusion head has its own vocab x d matrix (the official fusion word-embedding table).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Temperature(nn.Module):
    def __init__(self, init: float, minimum: float, maximum: float):
        super().__init__()
        if not 0 < minimum <= maximum:
            raise ValueError(f"temperature bounds must satisfy 0 < temp_min <= temp_max, got {minimum}, {maximum}")
        self.temp = nn.Parameter(torch.tensor(float(init)))
        self.init_value, self.minimum, self.maximum = float(init), float(minimum), float(maximum)

    def forward(self) -> torch.Tensor:
        # The official code clamps the parameter in place (``temp.clamp_(0.001, 0.5)`` under
        # no_grad) before the forward, so the loss always sees a clamped value AND the gradient
        # is taken at that value. A plain ``clamp()`` would give the same value but a zero
        # gradient once an optimizer step has pushed the parameter past a bound, freezing it
        # there for good. The straight-through form below keeps the official gradient; an
        # in-place clamp is not an option here because under ZeRO-3 the gathered copy that
        # forward sees is discarded (the engine may also project the stored value after a step).
        # (written so that the value is exactly the clamped one: t - t.detach() is exactly 0)
        t = self.temp
        return t.detach().clamp(self.minimum, self.maximum) + (t - t.detach())

    def init_weights(self) -> None:
        with torch.no_grad():
            self.temp.fill_(self.init_value)


def mlp_head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(),
                         nn.Linear(2 * width, out))


class LMHead(nn.Module):
    """RoBERTa LM head; ``decoder`` is bias-free, the output bias is ``bias`` (as HF ties them)."""

    def __init__(self, width: int, vocab: int, eps: float, tied_weight: nn.Parameter | None = None):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.layer_norm = nn.LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab, bias=False)
        if tied_weight is not None:
            if tied_weight.shape != self.decoder.weight.shape:
                raise ValueError(f"tied LM decoder needs a {tuple(self.decoder.weight.shape)} matrix, "
                                 f"got {tuple(tied_weight.shape)}")
            self.decoder.weight = tied_weight
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(states)))
        return self.decoder(x) + self.bias


class Heads(nn.Module):
    def __init__(self, cfg, tied_word_embeddings: nn.Parameter):
        super().__init__()
        dt, dv = cfg.text.hidden_size, cfg.vision.hidden_size
        self.vision_proj = nn.Linear(dv, cfg.embed_dim)
        self.text_proj = nn.Linear(dt, cfg.embed_dim)
        self.temp = Temperature(cfg.temp_init, cfg.temp_min, cfg.temp_max)
        self.itm = mlp_head(dt, 2)
        self.bbox = mlp_head(dt, 4)
        eps = cfg.text.layer_norm_eps
        self.text_mlm = LMHead(dt, cfg.text.vocab_size, eps, tied_weight=tied_word_embeddings)
        self.fusion_mlm = LMHead(dt, cfg.text.vocab_size, eps)
        self.init_std = cfg.init_std

    def init_weights(self) -> None:
        """N(0, ``init_std``) like the BERT-style parts; the tied text decoder is left to the
        embeddings."""
        tied = self.text_mlm.decoder.weight
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight is not tied:
                nn.init.normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.text_mlm.bias)
        nn.init.zeros_(self.fusion_mlm.bias)
        self.temp.init_weights()
