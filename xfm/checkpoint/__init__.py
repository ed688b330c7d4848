"""Weights in and out: HF BERT/RoBERTa, timm BEiT(-v2), the official X-FM ``.th``, and ours.

- ``load_pretrained(path, num_heads=None, **overrides) -> XFM`` (what ``XFM.from_pretrained``
  calls): detects the format, infers the config, loads, reports.
- ``load_into(model, path)``: fill an existing model (pretraining initialisation).
- ``save_pretrained(model, dir)``: ``model.safetensors`` (tied tensors once) + ``config.yaml``.
- The adapters, usable on their own: ``load_hf_text``, ``load_timm_beit``,
  ``load_official_state_dict``; each returns a :class:`LoadReport` and raises
  :class:`CheckpointError` (naming key, shapes and file) on a shape mismatch.
"""
from .hf_text import load_hf_text, text_config_from_hf
from .load import detect_format, load_into, load_pretrained, official_config, save_pretrained
from .official import infer_official_fields, load_official_state_dict, map_official
from .report import CheckpointError, LoadReport
from .timm_beit import infer_vision_fields, load_timm_beit

__all__ = [
    "load_pretrained", "load_into", "save_pretrained", "detect_format", "official_config",
    "load_hf_text", "text_config_from_hf", "load_timm_beit", "infer_vision_fields",
    "load_official_state_dict", "infer_official_fields", "map_official",
    "CheckpointError", "LoadReport",
]
