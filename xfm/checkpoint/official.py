"""The official X-FM checkpoints (``torch.save({'model': state_dict, ...})``) -> our model.

Key layout: ``tests/data/xfm_official_keys_{tiny,base}.json`` (docs/METHOD.md). Mapping:

| official | ours |
|---|---|
| ``vision_encoder.*`` | ``vision.*`` |
| ``text_encoder.roberta.{embeddings,encoder}.*`` | ``text.*`` |
| ``text_encoder.lm_head.{dense,layer_norm,bias}`` | ``heads.text_mlm.*`` |
| ``fusion_encoder.roberta.encoder.*`` | ``fusion.encoder.*`` |
| ``fusion_encoder.roberta.embeddings.word_embeddings.weight`` | ``heads.fusion_mlm.decoder.weight`` |
| ``fusion_encoder.lm_head.{dense,layer_norm,bias}`` | ``heads.fusion_mlm.*`` |
| ``vision_proj``, ``text_proj``, ``temp``, ``itm_head``, ``bbox_head`` | ``heads.{vision_proj,text_proj,temp.temp,itm,bbox}`` |

Documented as unused (``report.ignored``): the caption heads ``*.lm_cap_head.*`` (generation code
only), the fusion encoder's position/token-type embeddings and LayerNorm (its input bypasses its
embedding layer; they are kept beside the model as ``model.auxiliary_state["fusion_embeddings"]``
because the answer/caption decoder starts from them, see ``xfm.model.decoder``), the ``position_ids`` and ``relative_position_index`` buffers (ours are
recomputed; the index is compared with ours), and the tied duplicates ``*.lm_head.decoder.weight``
(= that encoder's word embeddings) and ``*.lm_head.decoder.bias`` (= ``lm_head.bias``), which are
checked to really be equal.

The config is inferred from tensor shapes (see :func:`infer_official_config`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from .apply import apply_mapped, same_tensor
from .report import CheckpointError, LoadReport
from .timm_beit import check_relative_position_index, count_layers, infer_vision_fields, map_beit

V, T, F = "vision_encoder.", "text_encoder.", "fusion_encoder."
TR, FR = T + "roberta.", F + "roberta."
_LAYER = {p: re.compile(rf"^{re.escape(p)}encoder\.layer\.(\d+)\.") for p in (TR, FR)}
_HEAD_SIMPLE = {"vision_proj.": "heads.vision_proj.", "text_proj.": "heads.text_proj.",
                "itm_head.": "heads.itm.", "bbox_head.": "heads.bbox.",
                T + "lm_head.dense.": "heads.text_mlm.dense.",
                T + "lm_head.layer_norm.": "heads.text_mlm.layer_norm.",
                F + "lm_head.dense.": "heads.fusion_mlm.dense.",
                F + "lm_head.layer_norm.": "heads.fusion_mlm.layer_norm.",
                TR + "embeddings.": "text.embeddings.", TR + "encoder.": "text.encoder.",
                FR + "encoder.": "fusion.encoder."}
_FUSION_EMB = re.compile(rf"^{re.escape(FR)}embeddings\.(position_embeddings|token_type_embeddings|LayerNorm)\.")
_IGNORABLE = [
    (re.compile(r"\.lm_cap_head\."), "caption head (used only by the official generation code)"),
    (re.compile(r"\.position_ids$"), "position_ids buffer"),
    (re.compile(r"relative_position_index$"), "relative_position_index buffer (recomputed, compared with ours)"),
    (_FUSION_EMB,
     "fusion encoder embeddings (bypassed: its input is the language encoder's output); kept as "
     "model.auxiliary_state['fusion_embeddings'] for the answer/caption decoder"),
]


def looks_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(V) for k in sd) and any(k.startswith(TR) for k in sd)


def _need(sd, key, source):
    if key not in sd:
        raise CheckpointError(f"{source}: missing {key!r}, cannot infer the model's shape "
                              f"(not a complete official X-FM checkpoint?)")
    return sd[key]


def infer_official_fields(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Dotted ModelConfig fields fixed by the tensor shapes (all but the text/fusion heads)."""
    vision = {k[len(V):]: v for k, v in sd.items() if k.startswith(V)}
    out = {f"vision.{k}": v for k, v in infer_vision_fields(vision, source).items()}
    word = _need(sd, TR + "embeddings.word_embeddings.weight", source)
    vocab, width = (int(s) for s in word.shape)
    t_layers, f_layers = count_layers(sd, _LAYER[TR]), count_layers(sd, _LAYER[FR])
    if t_layers == 0 or f_layers == 0:
        raise CheckpointError(f"{source}: found {t_layers} text and {f_layers} fusion layers; "
                              f"an official X-FM checkpoint has both")
    t_inter = _need(sd, TR + "encoder.layer.0.intermediate.dense.weight", source).shape[0]
    f_inter = _need(sd, FR + "encoder.layer.0.intermediate.dense.weight", source).shape[0]
    f_query = _need(sd, FR + "encoder.layer.0.attention.self.query.weight", source)
    if f_query.shape[0] != width:
        raise CheckpointError(f"{source}: fusion width {f_query.shape[0]} differs from the text width "
                              f"{width}; the fusion encoder runs at the text width")
    out.update({
        "text.vocab_size": vocab, "text.hidden_size": width, "text.num_layers": t_layers,
        "text.intermediate_size": int(t_inter),
        "text.max_position_embeddings": int(_need(sd, TR + "embeddings.position_embeddings.weight", source).shape[0]),
        "text.type_vocab_size": int(_need(sd, TR + "embeddings.token_type_embeddings.weight", source).shape[0]),
        "fusion.num_layers": f_layers, "fusion.intermediate_size": int(f_inter),
        "embed_dim": int(_need(sd, "vision_proj.weight", source).shape[0]),
    })
    return out


def map_official(sd: Mapping[str, torch.Tensor], source: str):
    """Official names -> ours. Returns (mapped, ignored, unused). Tied duplicates are checked."""
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    ignored: dict[str, str] = {}
    unused: list[str] = []
    vision = {k[len(V):]: v for k, v in sd.items() if k.startswith(V)}
    v_mapped, v_ignored, v_unused = map_beit(vision)
    mapped.update({ours: (V + src, t) for ours, (src, t) in v_mapped.items()})
    ignored.update({V + k: r for k, r in v_ignored.items()})
    unused.extend(V + k for k in v_unused)
    for k, v in sd.items():
        if k.startswith(V):
            continue
        reason = next((r for rx, r in _IGNORABLE if rx.search(k)), None)
        if reason:
            ignored[k] = reason
        elif k == "temp":
            mapped["heads.temp.temp"] = (k, v)
        elif k == FR + "embeddings.word_embeddings.weight":
            mapped["heads.fusion_mlm.decoder.weight"] = (k, v)
        elif k in (T + "lm_head.bias", F + "lm_head.bias"):
            mapped[("heads.text_mlm" if k.startswith(T) else "heads.fusion_mlm") + ".bias"] = (k, v)
        elif k.endswith(".lm_head.decoder.weight") or k.endswith(".lm_head.decoder.bias"):
            enc = k.split(".")[0]
            tied_to = (f"{enc}.roberta.embeddings.word_embeddings.weight" if k.endswith("weight")
                       else f"{enc}.lm_head.bias")
            if tied_to not in sd:
                unused.append(k)
            elif not same_tensor(v, sd[tied_to]):
                raise CheckpointError(f"{source}: {k} should be tied to {tied_to} (the official heads "
                                      f"tie them) but holds different values")
            else:
                ignored[k] = f"tied duplicate of {tied_to}"
        elif (p := next((p for p in _HEAD_SIMPLE if k.startswith(p)), None)) is not None:
            mapped[_HEAD_SIMPLE[p] + k[len(p):]] = (k, v)
        else:
            unused.append(k)
    return mapped, ignored, unused


def fusion_embeddings(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fusion encoder's position/token-type embeddings and LayerNorm, keys without the
    ``fusion_encoder.roberta.embeddings.`` prefix (e.g. ``position_embeddings.weight``)."""
    prefix = FR + "embeddings."
    return {k[len(prefix):]: v.detach().clone() for k, v in sd.items() if _FUSION_EMB.search(k)}


def load_official_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Map + copy an official state dict into ``model`` (every key of ours is in scope).

    The fusion embeddings, which are no part of ``XFM``, are set on the model as
    ``model.auxiliary_state["fusion_embeddings"]`` (plain tensors, not parameters) for
    ``TextDecoder.from_fusion``."""
    mapped, ignored, unused = map_official(sd, source)
    check_relative_position_index(model, sd, source, src_prefix=V)
    report = apply_mapped(model, mapped, source=source, fmt="official-xfm",
                          in_scope=lambda k: True, ignored=ignored, unused=unused)
    kept = fusion_embeddings(sd)
    if kept:
        aux = dict(getattr(model, "auxiliary_state", None) or {})
        aux["fusion_embeddings"] = kept
        model.auxiliary_state = aux
    return report
