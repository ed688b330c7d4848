"""Answer/caption decoder: causal BERT layers with cross-attention, own embeddings, an LM head.

The layers are the fusion encoder's layer type (post-LN self-attention -> cross-attention -> FFN,
same parameter names), run causally. Token embeddings are RoBERTa-style (word + token type 0 +
position, LayerNorm, dropout); the word-embedding matrix IS the LM head's decoder matrix (one
Parameter, as Hugging Face ties a causal LM). ``TextDecoder.from_fusion(model)`` initialises it the
way the X-FM VQA model does: layers from the fusion encoder, LM head (and so the word embeddings)
from the fusion MLM head, positions/LayerNorm from the official checkpoint's fusion embeddings.

Masks, as the official decoder: self-attention ``(1 - causal * key_mask) * -10000``; cross-attention
``(1 - mask) * -1e9`` (no mask = every encoder state visible). Rows are right-padded; the position
of token t is ``pad_id + 1 + t`` (RoBERTa's rule for right-padded rows; ``bert`` style: t).

Incremental decoding: ``start`` computes every layer's cross-attention keys/values once per
encoder state and returns a :class:`DecoderCache`; ``step`` feeds new tokens and appends their
self-attention keys/values to it. ``next_logits`` is the uncached reference (full forward).
All attention goes through ``xfm.kernels.attention``. Parameters are read only inside the
``__call__`` of the module owning them (ZeRO-3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from xfm import kernels
from xfm.model_config import ModelConfig

from .bert import BertLayer, init_bert_weights, merge_heads, split_heads
from .heads import LMHead
from .masks import CROSS_MASK_VALUE, TEXT_MASK_VALUE, additive_key_mask

EMBEDDING_KEYS = ("position_embeddings.weight", "token_type_embeddings.weight",
                  "LayerNorm.weight", "LayerNorm.bias")
OFFICIAL_EMBEDDINGS_PREFIX = "fusion_encoder.roberta.embeddings."


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    cross_width: int  # width of the states the decoder cross-attends to
    max_position_embeddings: int
    type_vocab_size: int = 1
    pad_token_id: int = 1
    position_style: str = "roberta"
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_std: float = 0.02  # the model's init_std: what the parts not copied from it start from

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"decoder hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_layers < 1:
            raise ValueError(f"decoder num_layers must be >= 1, got {self.num_layers}")
        if self.position_style not in ("roberta", "bert"):
            raise ValueError(f"decoder position_style must be 'roberta' or 'bert', got {self.position_style!r}")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, num_layers: int | None = None,
                          cross_width: int | None = None) -> "DecoderConfig":
        """The decoder shaped like ``cfg``'s fusion encoder (text width, fusion heads/FFN/dropout,
        text vocabulary and positions); ``cross_width`` defaults to the fusion's (vision width)."""
        n = cfg.fusion.num_layers if num_layers is None else int(num_layers)
        if not 1 <= n <= cfg.fusion.num_layers:
            raise ValueError(f"decoder num_layers must be in 1..{cfg.fusion.num_layers} (the fusion "
                             f"encoder's depth, where its layers come from), got {num_layers}")
        t = cfg.text
        return cls(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_layers=n,
                   num_heads=cfg.fusion.num_heads, intermediate_size=cfg.fusion.intermediate_size,
                   cross_width=cfg.vision.hidden_size if cross_width is None else int(cross_width),
                   max_position_embeddings=t.max_position_embeddings,
                   type_vocab_size=t.type_vocab_size, pad_token_id=t.pad_token_id,
                   position_style=t.position_style, layer_norm_eps=t.layer_norm_eps,
                   hidden_dropout=cfg.fusion.hidden_dropout,
                   attention_dropout=cfg.fusion.attention_dropout, init_std=cfg.init_std)


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, L, V)
    loss: torch.Tensor | None  # per reduction; None without labels
    hidden: torch.Tensor  # (B, L, d) last layer states


class CrossCache:
    """Per layer the cross-attention keys/values (B, H, S, Dh) and the additive mask (B,1,1,S)."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor | None):
        self.kv, self.mask = kv, mask

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]

    def index_select(self, index: torch.Tensor) -> "CrossCache":
        """Rows picked by ``index`` (e.g. ``repeat_interleave`` for several answers per question)."""
        return CrossCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv],
                          None if self.mask is None else self.mask.index_select(0, index))

    def repeat_interleave(self, n: int) -> "CrossCache":
        if n == 1:
            return self
        index = torch.arange(self.batch_size, device=self.kv[0][0].device).repeat_interleave(n)
        return self.index_select(index)


@dataclass
class DecoderCache:
    """State of an incremental decode: cross keys/values (fixed) and the self-attention
    keys/values of every token fed so far (B, H, T, Dh) per layer."""
    cross: CrossCache
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the self-attention cache (beam search). The cross cache is not
        touched: beams only move within their own item, whose rows share the encoder states."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class DecoderEmbeddings(nn.Module):
    """word (the tied LM matrix) + token type 0 + position -> LayerNorm -> dropout."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.pad_token_id = cfg.pad_token_id
        self.position_style = cfg.position_style
        self.max_positions = cfg.max_position_embeddings
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        pos_pad = cfg.pad_token_id if cfg.position_style == "roberta" else None
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, padding_idx=pos_pad)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def position_ids(self, batch: int, length: int, past: int, mask: torch.Tensor | None,
                     device) -> torch.Tensor:
        idx = torch.arange(past, past + length, device=device).expand(batch, length)
        if self.position_style == "bert":
            last = past + length - 1
            if last >= self.max_positions:
                raise ValueError(f"decoder position {last} exceeds max_position_embeddings {self.max_positions}")
            return idx
        last = past + length + self.pad_token_id
        if last >= self.max_positions:
            raise ValueError(f"decoder sequence of {past + length} tokens too long: RoBERTa positions run "
                             f"up to length + pad_id ({last}) but max_position_embeddings is {self.max_positions}")
        pos = idx + self.pad_token_id + 1
        if mask is not None:  # padding sits at the pad position, as RoBERTa puts it
            pos = torch.where(mask.bool(), pos, torch.full_like(pos, self.pad_token_id))
        return pos

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, past: int = 0) -> torch.Tensor:
        b, n = ids.shape
        x = self.word_embeddings(ids)
        x = x + self.token_type_embeddings(torch.zeros_like(ids))
        x = x + self.position_embeddings(self.position_ids(b, n, past, mask, ids.device))
        return self.dropout(self.LayerNorm(x))


class DecoderLayer(BertLayer):
    """The fusion layer type, with self-attention keys/values that may extend a cache and
    cross-attention keys/values given precomputed."""

    def __init__(self, cfg: DecoderConfig, backend: str | None = None):
        super().__init__(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps,
                         cfg.hidden_dropout, cfg.attention_dropout, cross_kv_size=cfg.cross_width,
                         backend=backend)
        self.num_heads = cfg.num_heads
        self.backend = backend

    def cross_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = self.crossattention.self
        return split_heads(att.key(states), self.num_heads), split_heads(att.value(states), self.num_heads)

    def _attend(self, q, k, v, mask, att):
        p = att.attention_dropout if self.training else 0.0
        return merge_heads(kernels.attention(q, k, v, mask, dropout_p=p, backend=self.backend))

    def forward(self, hidden, self_mask, cross_kv, cross_mask, past_kv=None):
        """-> (hidden, (keys, values) of the self-attention incl. ``past_kv``)."""
        att = self.attention.self
        q = split_heads(att.query(hidden), self.num_heads)
        k = split_heads(att.key(hidden), self.num_heads)
        v = split_heads(att.value(hidden), self.num_heads)
        if past_kv is not None:
            k, v = torch.cat((past_kv[0], k), dim=2), torch.cat((past_kv[1], v), dim=2)
        hidden = self.attention.output(self._attend(q, k, v, self_mask, att), hidden)
        cross = self.crossattention.self
        cq = split_heads(cross.query(hidden), self.num_heads)
        hidden = self.crossattention.output(self._attend(cq, *cross_kv, cross_mask, cross), hidden)
        return self.output(self.intermediate(hidden), hidden), (k, v)


def causal_mask(length: int, past: int, key_mask: torch.Tensor | None, dtype, device) -> torch.Tensor | None:
    """Additive (B|1, 1, length, past+length) mask: query t sees keys <= past+t that are not padding.
    None when nothing is hidden (one new token, no padding)."""
    if length == 1 and key_mask is None:
        return None
    keys = torch.arange(past + length, device=device)
    keep = keys[None, :] <= (torch.arange(length, device=device) + past)[:, None]  # (L, P+L)
    keep = keep[None, None]
    if key_mask is not None:
        keep = keep & key_mask.bool()[:, None, None, :]
    return (1.0 - keep.to(dtype)) * TEXT_MASK_VALUE


def _check_right_padded(mask: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"decoder attention_mask must be (batch, length), got {tuple(mask.shape)}")
    if (mask[:, 1:].bool() & ~mask[:, :-1].bool()).any():
        raise ValueError("decoder rows must be right-padded (attention_mask 1...1 0...0): a 1 follows a 0")


class TextDecoder(nn.Module):
    """``decoder(input_ids, attention_mask, encoder_states, encoder_mask, labels)`` for training;
    ``start``/``step`` for incremental decoding (see ``xfm.model.generation``)."""

    def __init__(self, config: DecoderConfig, *, backend: str | None = None, init_weights: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = DecoderEmbeddings(config)
        self.layer = nn.ModuleList([DecoderLayer(config, backend) for _ in range(config.num_layers)])
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps,
                              tied_weight=self.embeddings.word_embeddings.weight)
        self.grad_checkpointing = False
        # how each part was initialised (set by from_fusion), for logs and reports
        self.init_notes: dict[str, str] = {}
        if init_weights:
            self.init_weights()

    # ----------------------------------------------------------------------------- set-up
    def tie_weights(self) -> None:
        """The LM decoder matrix IS the word-embedding Parameter (re-tie after ``to_empty`` or an
        ``assign=True`` load)."""
        self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight

    def init_weights(self) -> None:
        """BERT init (N(0, ``init_std``), zero biases, unit LayerNorm, zero padding rows), zero LM
        bias."""
        self.tie_weights()
        init_bert_weights(self, self.config.init_std)
        nn.init.zeros_(self.lm_head.bias)

    @classmethod
    def from_fusion(cls, model, num_layers: int | None = None,
                    embeddings_state: Mapping[str, torch.Tensor] | None = None,
                    cross_width: int | None = None) -> "TextDecoder":
        """A decoder initialised from an XFM model, as the official VQA model does.

        - layers 0..num_layers-1 (default: all) = copies of the fusion encoder's layers;
        - LM head (dense, LayerNorm, bias) = a copy of the fusion MLM head; its decoder matrix,
          which is also the decoder's word-embedding table, = a copy of the fusion MLM decoder;
        - position/token-type embeddings and LayerNorm from ``embeddings_state`` (the official
          checkpoint's ``fusion_encoder.roberta.embeddings.*``, with or without that prefix);
          when None, from ``model.auxiliary_state["fusion_embeddings"]`` (kept by the official
          loader); when the model has none (a model pretrained here or loaded from another
          format, which never has fusion embeddings), from the language encoder's embeddings
          (the positions and LayerNorm trained for the same tokenizer);
        - ``cross_width`` (default: the fusion's cross-attention input width, the vision width):
          the width of the states the decoder will attend to. When it differs, the
          cross-attention key/value projections start fresh (N(0, ``init_std``)), as in the official code.

        Call it before any DeepSpeed ZeRO-3 wrapping (it reads the model's full parameters).
        ``decoder.init_notes`` says where each part came from.
        """
        cfg = DecoderConfig.from_model_config(model.config, num_layers, cross_width)
        attn = None if model.config.kernels.attention == "auto" else model.config.kernels.attention
        ref = next(model.parameters())
        dec = cls(cfg, backend=attn).to(device=ref.device, dtype=ref.dtype)
        fusion_cross_width = model.config.vision.hidden_size
        fresh = [] if cfg.cross_width == fusion_cross_width else ["crossattention.self.key", "crossattention.self.value"]
        with torch.no_grad():
            for i, layer in enumerate(dec.layer):
                src = model.fusion.encoder.layer[i].state_dict()
                if fresh:
                    src = {k: v for k, v in src.items() if not any(k.startswith(f) for f in fresh)}
                    missing, unexpected = layer.load_state_dict(src, strict=False)
                    assert not unexpected and all(any(m.startswith(f) for f in fresh) for m in missing)
                else:
                    layer.load_state_dict(src)
            head = model.heads.fusion_mlm
            for name in ("dense", "layer_norm"):
                getattr(dec.lm_head, name).load_state_dict(getattr(head, name).state_dict())
            dec.lm_head.bias.copy_(head.bias)
            dec.embeddings.word_embeddings.weight.copy_(head.decoder.weight)
            source, state = _embedding_source(model, embeddings_state)
            for key in EMBEDDING_KEYS:
                _copy_embedding(dec.embeddings, key, state[key], source)
        dec.init_notes = {
            "layers": f"fusion encoder layers 0..{cfg.num_layers - 1}",
            "lm_head": "fusion MLM head (decoder matrix = word embeddings)",
            "embeddings": source,
        }
        if fresh:
            dec.init_notes["cross_kv"] = (f"fresh: cross width {cfg.cross_width} differs from the fusion's "
                                          f"{fusion_cross_width}")
        return dec.train(model.training)

    # ----------------------------------------------------------------------------- pieces
    def cross_kv(self, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None = None) -> CrossCache:
        """Every layer's cross-attention keys/values, once per encoder state."""
        if encoder_states.dim() != 3:
            raise ValueError(f"encoder_states must be (batch, length, width), got {tuple(encoder_states.shape)}")
        mask = None
        if encoder_mask is not None:
            if encoder_mask.shape != encoder_states.shape[:2]:
                raise ValueError(f"encoder_mask {tuple(encoder_mask.shape)} does not match encoder_states "
                                 f"{tuple(encoder_states.shape[:2])}")
            mask = additive_key_mask(encoder_mask, encoder_states.dtype, CROSS_MASK_VALUE)
        return CrossCache([layer.cross_kv(encoder_states) for layer in self.layer], mask)

    def _run_layers(self, hidden, self_mask, cross: CrossCache, cache: DecoderCache | None):
        if cross.batch_size != hidden.shape[0]:
            raise ValueError(f"{hidden.shape[0]} decoder rows but {cross.batch_size} encoder rows")
        for i, layer in enumerate(self.layer):
            past = None if cache is None or cache.length == 0 else (cache.keys[i], cache.values[i])
            if cache is None and self.grad_checkpointing and self.training and torch.is_grad_enabled():
                hidden, _ = torch.utils.checkpoint.checkpoint(
                    layer, hidden, self_mask, cross.kv[i], cross.mask, use_reentrant=False)
            else:
                hidden, kv = layer(hidden, self_mask, cross.kv[i], cross.mask, past)
                if cache is not None:
                    if cache.length == 0:
                        cache.keys.append(kv[0])
                        cache.values.append(kv[1])
                    else:
                        cache.keys[i], cache.values[i] = kv
        return hidden

    # ----------------------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_states: torch.Tensor | None = None, encoder_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, reduction: str = "none",
                label_smoothing: float = 0.0, cross: CrossCache | None = None) -> DecoderOutput:
        """Teacher-forced pass. ``labels`` (B,L) are the targets at each input position (-100 =
        ignore; see :func:`decoder_labels`); position t's logits predict ``labels[:, t+1]``.

        ``reduction``: ``none`` -> (B,) summed token NLL per sequence (the VQA loss), ``sum`` ->
        their total, ``mean`` -> total / number of target tokens (the captioning loss).
        ``label_smoothing`` s: the official form, target weight 1-s on the label and s/V on every
        other class (the captioning configs use 0.1).
        Cross-attention: ``encoder_states``/``encoder_mask``, or a precomputed ``cross``.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got {tuple(input_ids.shape)}")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids "
                                 f"{tuple(input_ids.shape)}")
            _check_right_padded(attention_mask)
        if cross is None:
            if encoder_states is None:
                raise ValueError("the decoder cross-attends: pass encoder_states (or a precomputed cross)")
            cross = self.cross_kv(encoder_states, encoder_mask)
        x = self.embeddings(input_ids, attention_mask)
        mask = causal_mask(input_ids.shape[1], 0, attention_mask, x.dtype, x.device)
        hidden = self._run_layers(x, mask, cross, None)
        logits = self.lm_head(hidden)
        loss = None if labels is None else sequence_nll(logits, labels, reduction, label_smoothing)
        return DecoderOutput(logits, loss, hidden)

    # ----------------------------------------------------------------------------- decoding
    def start(self, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None = None,
              expand: int = 1) -> DecoderCache:
        """An empty cache over these encoder states; each row repeated ``expand`` times (beams)."""
        return DecoderCache(self.cross_kv(encoder_states, encoder_mask).repeat_interleave(expand))

    def step(self, ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Feed the new tokens ``ids`` (B, n) (the prompt first, then one token at a time) and
        return the next-token logits (B, V) after the last of them. Rows are unpadded."""
        n = ids.shape[1]
        x = self.embeddings(ids, None, past=cache.length)
        mask = causal_mask(n, cache.length, None, x.dtype, x.device)
        hidden = self._run_layers(x, mask, cache.cross, cache)
        cache.length += n
        return self.lm_head(hidden[:, -1])

    def next_logits(self, ids: torch.Tensor, encoder_states: torch.Tensor | None = None,
                    encoder_mask: torch.Tensor | None = None, cross: CrossCache | None = None) -> torch.Tensor:
        """Uncached reference: the whole sequence again, next-token logits (B, V) after it."""
        if cross is None:
            cross = self.cross_kv(encoder_states, encoder_mask)
        x = self.embeddings(ids, None)
        hidden = self._run_layers(x, causal_mask(ids.shape[1], 0, None, x.dtype, x.device), cross, None)
        return self.lm_head(hidden[:, -1])


# ----------------------------------------------------------------------------- losses, labels
def decoder_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, ignore_prefix: int = 0) -> torch.Tensor:
    """Targets for :meth:`TextDecoder.forward`: the ids, -100 on padding and on the first
    ``ignore_prefix`` positions (a caption prompt: the official code does not train on it)."""
    labels = input_ids.masked_fill(~attention_mask.bool(), -100)
    if ignore_prefix:
        labels[:, :ignore_prefix] = -100
    return labels


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "none",
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token NLL: ``logits[:, t]`` predicts ``labels[:, t+1]``; -100 is ignored. Float32."""
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape[:2])}")
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    valid = target.ne(-100)
    safe = target.masked_fill(~valid, 0)
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    tok = -picked
    if label_smoothing:
        s, vocab = label_smoothing, logits.shape[-1]
        # official LabelSmoothSoftmaxCE: weight 1-s on the label, s/V on each other class
        tok = (1 - s) * tok - (s / vocab) * (logp.sum(-1) - picked)
    tok = tok * valid
    per_seq = tok.sum(1)
    if reduction == "none":
        return per_seq
    if reduction == "sum":
        return per_seq.sum()
    return per_seq.sum() / valid.sum().clamp(min=1)


# ----------------------------------------------------------------------------- embeddings source
def _embedding_source(model, given):
    if given is not None:
        state = {k[len(OFFICIAL_EMBEDDINGS_PREFIX):] if k.startswith(OFFICIAL_EMBEDDINGS_PREFIX) else k: v
                 for k, v in given.items()}
        missing = [k for k in EMBEDDING_KEYS if k not in state]
        if missing:
            raise ValueError(f"embeddings_state lacks {missing} (expected the official "
                             f"{OFFICIAL_EMBEDDINGS_PREFIX}* tensors, with or without that prefix)")
        return "given embeddings_state", state
    aux = (getattr(model, "auxiliary_state", None) or {}).get("fusion_embeddings")
    if aux is not None:
        return "official fusion encoder embeddings (model.auxiliary_state)", aux
    text = model.text.embeddings
    return ("language encoder embeddings (the model carries no fusion embeddings)",
            {"position_embeddings.weight": text.position_embeddings.weight,
             "token_type_embeddings.weight": text.token_type_embeddings.weight,
             "LayerNorm.weight": text.LayerNorm.weight, "LayerNorm.bias": text.LayerNorm.bias})


def _copy_embedding(embeddings: nn.Module, key: str, value: torch.Tensor, source: str) -> None:
    module, attr = key.split(".")
    target = getattr(getattr(embeddings, module), attr)
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the decoder needs "
                         f"{tuple(target.shape)}")
    target.copy_(value.to(device=target.device, dtype=target.dtype))
