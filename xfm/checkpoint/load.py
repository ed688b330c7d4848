"""One entry point for every weight format: ``load_pretrained(path)`` builds a model,
``load_into(model, path)`` fills an existing one, ``save_pretrained(model, dir)`` writes ours.

Formats, detected in this order (the choice is logged on ``xfm.checkpoint``):

1. ``xfm``: a directory with ``model.safetensors`` + ``config.yaml`` (ours, exact round trip);
2. ``hf``: a directory with ``config.json`` (BERT or RoBERTa) -> language encoder;
3. ``official``: a file whose state dict has ``vision_encoder.*`` and ``text_encoder.roberta.*``
   keys (the official X-FM ``.th`` pickles) -> the whole model, config inferred from shapes;
4. ``timm-beit``: a file holding a timm BEiT(-v2) state dict -> vision encoder.

Tensors kept beside a model (``model.auxiliary_state``, e.g. the official fusion embeddings the
answer/caption decoder starts from) survive a round trip through our format as
``auxiliary.safetensors``.

Anything else (a missing path, a directory of another kind, a garbage or truncated file, a
state dict of an unknown model) is a :class:`CheckpointError` naming the path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .apply import require_clean
from .build_config import default_heads, resolve_config
from .hf_text import is_hf_dir, load_hf_text, read_hf_config, text_config_from_hf
from .files import find_state_dict, read_file, read_safetensors
from .native import WEIGHTS, CONFIG, build_native, is_native_dir, load_native
from .native import save_pretrained as _save_native
from .official import infer_official_fields, load_official_state_dict, looks_official
from .report import CheckpointError, LoadReport, log
from .timm_beit import infer_vision_fields, load_timm_beit, looks_like_beit

__all__ = ["load_pretrained", "load_into", "save_pretrained", "detect_format", "official_config"]


# tensors kept beside the model, not parameters of it (``model.auxiliary_state``: e.g. the official
# fusion embeddings the answer/caption decoder starts from), stored as ``group.name`` keys
AUXILIARY = "auxiliary.safetensors"


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Our format (``model.safetensors`` + ``config.yaml``, see ``native``) plus
    ``auxiliary.safetensors`` when the model carries ``auxiliary_state``."""
    from safetensors.torch import save_file
    directory = _save_native(model, directory)
    aux = getattr(model, "auxiliary_state", None) or {}
    tensors = {f"{group}.{name}": t.detach().to("cpu").contiguous()
               for group, state in aux.items() for name, t in state.items()}
    target = directory / AUXILIARY
    if tensors:
        save_file(tensors, str(directory / (AUXILIARY + ".tmp")), metadata={"format": "xfm-auxiliary"})
        os.replace(directory / (AUXILIARY + ".tmp"), target)
    elif target.exists():  # a stale file from an earlier save would attach the wrong tensors
        target.unlink()
    return directory


def _attach_auxiliary(model: nn.Module, directory: Path) -> None:
    path = directory / AUXILIARY
    if not path.is_file():
        return
    aux: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in read_safetensors(path).items():
        group, _, name = key.partition(".")
        aux.setdefault(group, {})[name] = t
    model.auxiliary_state = aux


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return find_state_dict(read_file(path), path)


def _classify(path: Path, sd: dict[str, torch.Tensor] | None = None):
    """-> (format, state dict or None). Reads a file once; directories are told by their files."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        if is_native_dir(path):
            return "xfm", None
        if is_hf_dir(path):
            return "hf", None
        raise CheckpointError(
            f"{path}: not a checkpoint directory: expected {WEIGHTS} + {CONFIG} (xfm) or config.json "
            f"+ weights (Hugging Face BERT/RoBERTa); it holds {sorted(p.name for p in path.iterdir())[:20]}")
    sd = _read_state_dict(path) if sd is None else sd
    if looks_official(sd):
        return "official", sd
    if looks_like_beit(sd):
        return "timm-beit", sd
    if any(k.endswith("embeddings.word_embeddings.weight") for k in sd):
        raise CheckpointError(f"{path}: looks like Hugging Face BERT/RoBERTa weights; pass the model "
                              f"directory (with its config.json) instead of the weight file")
    raise CheckpointError(f"{path}: unknown checkpoint format: neither an official X-FM state dict "
                          f"(vision_encoder.*, text_encoder.roberta.*) nor a timm BEiT state dict; "
                          f"first keys: {list(sd)[:8]}")


def detect_format(path: str | os.PathLike) -> str:
    """``xfm`` | ``hf`` | ``official`` | ``timm-beit`` (reads a file to look at its keys)."""
    return _classify(Path(path))[0]


def official_config(sd: dict[str, torch.Tensor], *, source: str = "<state dict>",
                    num_heads: int | None = None, **overrides):
    """The ModelConfig an official state dict implies (shapes) + heads + overrides."""
    inferred = infer_official_fields(sd, source)
    width = inferred["text.hidden_size"]
    heads = num_heads or default_heads(width, "text/fusion", source)
    inferred.update({"text.num_heads": heads, "fusion.num_heads": heads})
    return resolve_config(inferred, source=source, overrides=overrides)


def load_pretrained(path: str | os.PathLike, num_heads: int | None = None, *, strict: bool = True,
                    fusion_from_text: bool = False, fusion_layer_offset: int = 0, **overrides: Any):
    """Build an ``XFM`` from any supported checkpoint (see the module doc) and load it.

    ``num_heads``: head count of the encoders whose head count the weights do not fix (the text
    and fusion encoders of an official or timm checkpoint; default width / 64). The vision head
    count is read from the relative position tables, an HF model's from its config.json.
    ``overrides``: any ModelConfig field (``stop_text_grad=False``, ``vision__drop_path=0.0``,
    ``size="tiny"`` for the preset the unknown parts come from).
    ``strict``: a missing or unexpected key is an error (else only reported).
    ``fusion_from_text`` / ``fusion_layer_offset``: HF directories only (see ``hf_text``).
    The model is returned in eval mode with the report as ``model.load_report``.
    """
    from ..model import XFM
    path = Path(path)
    fmt, sd = _classify(path)
    log.info("%s: detected checkpoint format %r", path, fmt)
    if fusion_from_text and fmt != "hf":
        raise CheckpointError(f"{path}: fusion_from_text applies to Hugging Face text checkpoints, "
                              f"this is a {fmt!r} checkpoint")
    if fmt == "xfm":
        if num_heads is not None:
            raise CheckpointError(f"{path}: num_heads is fixed by {CONFIG}; override text/fusion "
                                  f"heads explicitly if you really mean it")
        model, report = build_native(path, overrides, strict=strict)
        _attach_auxiliary(model, path)
    elif fmt == "official":
        config = official_config(sd, source=str(path), num_heads=num_heads, **overrides)
        model = XFM(config)
        report = load_official_state_dict(model, sd, str(path))
    elif fmt == "hf":
        hf = read_hf_config(path)
        text = text_config_from_hf(hf, str(path))
        if num_heads is not None and num_heads != text.num_heads:
            raise CheckpointError(f"{path}: num_heads={num_heads} contradicts num_attention_heads="
                                  f"{text.num_heads} in config.json")
        inferred = {f"text.{k}": v for k, v in vars(text).items()}
        # the fusion layers run at the text width: take the text layers' shape unless overridden
        inferred.update({"fusion.num_heads": text.num_heads,
                         "fusion.intermediate_size": text.intermediate_size})
        model = XFM(resolve_config(inferred, source=str(path), overrides=overrides, match_presets=False))
        report = load_hf_text(model, path, fusion_from_text=fusion_from_text,
                              fusion_layer_offset=fusion_layer_offset)
    else:  # timm-beit
        inferred = {f"vision.{k}": v for k, v in infer_vision_fields(sd, str(path)).items()}
        if num_heads is not None:
            inferred.update({"text.num_heads": num_heads, "fusion.num_heads": num_heads})
        model = XFM(resolve_config(inferred, source=str(path), overrides=overrides, match_presets=False))
        report = load_timm_beit(model, sd, source=str(path))
    if strict and fmt != "xfm":
        require_clean(report, {"official": "official X-FM", "hf": "Hugging Face text",
                               "timm-beit": "timm BEiT"}[fmt])
    report.log()
    model.load_report = report
    return model.eval()


def load_into(model: nn.Module, path: str | os.PathLike, *, strict: bool = False,
              fusion_from_text: bool = False, fusion_layer_offset: int = 0) -> LoadReport:
    """Fill an existing model from any supported checkpoint (e.g. initialise the language encoder
    from a RoBERTa directory and the vision encoder from a BEiT-v2 file before pretraining).
    Shapes must match the model's config; returns (and logs) the report."""
    path = Path(path)
    fmt, sd = _classify(path)
    log.info("%s: detected checkpoint format %r", path, fmt)
    if fmt == "xfm":
        report = load_native(model, path, strict=strict)
        _attach_auxiliary(model, path)
    elif fmt == "official":
        report = load_official_state_dict(model, sd, str(path))
    elif fmt == "hf":
        report = load_hf_text(model, path, fusion_from_text=fusion_from_text,
                              fusion_layer_offset=fusion_layer_offset)
    else:
        report = load_timm_beit(model, sd, source=str(path))
    if strict:
        require_clean(report, fmt)
    report.log()
    return report
