"""Hugging Face BERT / RoBERTa directories -> our language encoder (and optionally fusion layers).

A directory as ``save_pretrained`` writes it: ``config.json`` plus ``model.safetensors`` or
``pytorch_model.bin`` (or their sharded ``*.index.json`` forms). Keys may carry the ``bert.`` /
``roberta.`` prefix of the task models (``BertForMaskedLM``...) or not (``BertModel``).
Our text encoder uses HF's own layer names, so the encoder maps one to one; the MLM head, when
the checkpoint has one, fills ``heads.text_mlm`` (BERT's ``cls.predictions`` and RoBERTa's
``lm_head`` compute the same thing: dense -> GELU -> LayerNorm -> tied decoder + bias).

The X-VLM way of initialising a fusion encoder from a text checkpoint is available as
``fusion_from_text=True``: fusion layer ``i`` takes the self-attention and FFN of checkpoint
layer ``fusion_layer_offset + i``; the cross-attention stays freshly initialised.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..model_config import TextConfig
from .apply import apply_mapped, same_tensor
from .files import find_state_dict, read_file
from .report import CheckpointError, LoadReport

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SUPPORTED_TYPES = ("bert", "roberta")

_IGNORABLE = [
    (re.compile(r"^(embeddings\.)?position_ids$|\.position_ids$"), "position_ids buffer"),
    (re.compile(r"^pooler\."), "BERT/RoBERTa pooler (X-FM pools token 0 through its own heads)"),
    (re.compile(r"^cls\.seq_relationship\."), "BERT next-sentence head"),
]
_HEAD_MAP = {  # source MLM head names -> ours (BERT, then RoBERTa)
    "cls.predictions.transform.dense.": "heads.text_mlm.dense.",
    "cls.predictions.transform.LayerNorm.": "heads.text_mlm.layer_norm.",
    "lm_head.dense.": "heads.text_mlm.dense.",
    "lm_head.layer_norm.": "heads.text_mlm.layer_norm.",
}
_HEAD_BIAS = ("cls.predictions.bias", "lm_head.bias")
_HEAD_DECODER = {"cls.predictions.decoder.weight": "word", "lm_head.decoder.weight": "word",
                 "cls.predictions.decoder.bias": "bias", "lm_head.decoder.bias": "bias"}


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json, not a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    return cfg


def text_config_from_hf(cfg: dict, source: str, base: TextConfig | None = None) -> TextConfig:
    """Our TextConfig for an HF BERT/RoBERTa config.json (dropouts included)."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise CheckpointError(f"{source}/config.json: model_type {model_type!r} is not supported; "
                              f"expected one of {list(SUPPORTED_TYPES)}")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}/config.json: hidden_act {act!r}: the language encoder "
                              f"uses exact (erf) GELU, so these weights would compute differently")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise CheckpointError(f"{source}/config.json: position_embedding_type {pos!r} is not "
                              f"supported (absolute only)")
    required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings"]
    absent = [k for k in required if k not in cfg]
    if absent:
        raise CheckpointError(f"{source}/config.json: missing field(s) {absent}")
    bert = model_type == "bert"
    base = base or TextConfig()
    return replace(
        base,
        vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
        intermediate_size=int(cfg["intermediate_size"]),
        max_position_embeddings=int(cfg["max_position_embeddings"]),
        type_vocab_size=int(cfg.get("type_vocab_size", 2 if bert else 1)),
        pad_token_id=int(cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else (0 if bert else 1)),
        position_style="bert" if bert else "roberta",
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12 if bert else 1e-5)),
        hidden_dropout=float(cfg.get("hidden_dropout_prob", base.hidden_dropout)),
        attention_dropout=float(cfg.get("attention_probs_dropout_prob", base.attention_dropout)),
    )


def read_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF model directory (single file or sharded with an index)."""
    path = Path(path)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return find_state_dict(read_file(path / name), path / name)
    for name in INDEX_FILES:
        index = path / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid shard index ({e})") from e
            out: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                out.update(find_state_dict(read_file(path / shard), path / shard))
            return out
    raise CheckpointError(f"{path}: no weights found; expected one of "
                          f"{list(WEIGHT_FILES) + list(INDEX_FILES)}; the directory has "
                          f"{sorted(p.name for p in path.iterdir())[:20]}")


def _strip(sd: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in (f"{model_type}.", "bert.", "roberta."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        # checkpoints converted from the original TF BERT name LayerNorm params gamma/beta
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        out[k] = v
    return out


def map_hf_text(sd: dict[str, torch.Tensor], model_type: str, *, fusion_from_text: bool = False,
                fusion_layers: int = 0, fusion_layer_offset: int = 0):
    """HF names -> ours. Returns (mapped, ignored, unused)."""
    sd = _strip(sd, model_type)
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    ignored: dict[str, str] = {}
    unused: list[str] = []
    word = sd.get("embeddings.word_embeddings.weight")
    bias = next((sd[k] for k in _HEAD_BIAS if k in sd), None)
    for k, v in sd.items():
        reason = next((r for rx, r in _IGNORABLE if rx.search(k)), None)
        if reason:
            ignored[k] = reason
        elif k.startswith(("embeddings.", "encoder.layer.")) and ".crossattention." not in k:
            mapped[f"text.{k}"] = (k, v)
        elif k in _HEAD_BIAS:
            mapped["heads.text_mlm.bias"] = (k, v)
        elif k in _HEAD_DECODER:
            tied_to = word if _HEAD_DECODER[k] == "word" else bias
            if tied_to is not None and same_tensor(v, tied_to):
                ignored[k] = "tied to " + ("the word embeddings" if _HEAD_DECODER[k] == "word" else "the MLM bias")
            else:
                unused.append(k)  # an untied decoder cannot be represented: our decoder is tied
        elif any(k.startswith(p) for p in _HEAD_MAP):
            p = next(p for p in _HEAD_MAP if k.startswith(p))
            mapped[_HEAD_MAP[p] + k[len(p):]] = (k, v)
        else:
            unused.append(k)
    if fusion_from_text:
        for i in range(fusion_layers):
            src = fusion_layer_offset + i
            prefix = f"encoder.layer.{src}."
            keys = [k for k in sd if k.startswith(prefix) and ".crossattention." not in k]
            if not keys:
                raise CheckpointError(f"fusion_from_text: the checkpoint has no layer {src} for fusion "
                                      f"layer {i} (offset {fusion_layer_offset}, {fusion_layers} fusion layers)")
            for k in keys:
                mapped[f"fusion.encoder.layer.{i}." + k[len(prefix):]] = (k, sd[k])
    return mapped, ignored, unused


def check_text_config(model: nn.Module, want: TextConfig, source: str) -> None:
    """Refuse to load into a language encoder whose config computes differently."""
    have = getattr(getattr(model, "config", None), "text", None)
    if have is None:
        return
    fields = ["hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings", "type_vocab_size", "pad_token_id", "position_style",
              "layer_norm_eps"]
    diff = [f"{f}: model {getattr(have, f)!r} vs checkpoint {getattr(want, f)!r}"
            for f in fields if getattr(have, f) != getattr(want, f)]
    if diff:
        raise CheckpointError(f"{source}: the model's text config does not match the checkpoint "
                              f"({'; '.join(diff)}); build the model with text_config_from_hf() "
                              f"or use load_pretrained({source!r})")


def load_hf_text(model: nn.Module, path: str | os.PathLike, *, fusion_from_text: bool = False,
                 fusion_layer_offset: int = 0) -> LoadReport:
    """Load an HF BERT/RoBERTa directory into ``model.text`` (+ ``heads.text_mlm`` when the
    checkpoint has an MLM head, + the fusion layers' self-attention/FFN when asked)."""
    path = Path(path)
    cfg = read_hf_config(path)
    want = text_config_from_hf(cfg, str(path))
    check_text_config(model, want, str(path))
    sd = read_hf_weights(path)
    fusion_layers = len(getattr(getattr(model, "fusion", None), "encoder").layer) if fusion_from_text else 0
    mapped, ignored, unused = map_hf_text(sd, cfg["model_type"], fusion_from_text=fusion_from_text,
                                          fusion_layers=fusion_layers,
                                          fusion_layer_offset=fusion_layer_offset)
    has_head = any(k.startswith("heads.text_mlm.") for k in mapped)

    def in_scope(k: str) -> bool:
        return (k.startswith("text.") or k.startswith("heads.text_mlm.")
                or (fusion_from_text and k.startswith("fusion.")))

    def is_new(k: str) -> bool:
        # no MLM head in a bare BertModel/RobertaModel; cross-attention never comes from text
        return (k.startswith("heads.text_mlm.") and not has_head) or ".crossattention." in k

    report = apply_mapped(model, mapped, source=str(path), fmt=f"hf-{cfg['model_type']}",
                          in_scope=in_scope, is_new=is_new, ignored=ignored, unused=unused)
    return report
