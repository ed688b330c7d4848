"""A full ModelConfig from what a checkpoint's shapes say, a size preset and the caller's overrides.

Shapes fix widths, depths, vocabulary, positions, patch and image size and the embedding size;
they do not fix the text/fusion head count (``num_heads``, default width / 64), dropouts and the
other training-time fields: those come from a size preset. When the inferred shapes are exactly
those of a built-in preset (``tiny``/``base``/``large``) that preset is the starting point, else
``base`` (named ``custom``); ``size=`` picks the preset explicitly. Any ModelConfig field can then
be overridden by keyword: top-level fields by name (``stop_text_grad=False``), nested ones as
``vision__drop_path=0.0``, ``**{"vision.drop_path": 0.0}`` or ``vision={"drop_path": 0.0}``.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..config import ConfigError, from_dict, to_dict
from ..model_config import SIZES, ModelConfig, model_config
from .report import CheckpointError


def flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``vision__drop_path`` / ``vision.drop_path`` / ``vision={...}`` -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if isinstance(value, Mapping):
            for sub, v in flatten_overrides(value).items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _set(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"{dotted}: {p!r} is not a section of ModelConfig")
        node = node[p]
    if last not in node:
        raise ConfigError(f"{dotted}: unknown ModelConfig field; valid here: {sorted(node)}")
    node[last] = value


def _get(data: dict, dotted: str) -> Any:
    for p in dotted.split("."):
        data = data[p]
    return data


def apply_config_overrides(config: ModelConfig, overrides: Mapping[str, Any], source: str) -> ModelConfig:
    """A copy of ``config`` with keyword overrides applied (type-checked like a YAML file)."""
    data = to_dict(config)
    try:
        for k, v in flatten_overrides(overrides).items():
            _set(data, k, v)
        return from_dict(ModelConfig, data, source=f"{source} (+ overrides)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def default_heads(width: int, where: str, source: str) -> int:
    if width % 64:
        raise CheckpointError(f"{source}: {where} width {width} is not a multiple of 64, so the "
                              f"head count cannot default to width / 64; pass num_heads=")
    return width // 64


def resolve_config(inferred: Mapping[str, Any], *, source: str, overrides: Mapping[str, Any],
                   match_presets: bool = True) -> ModelConfig:
    """``inferred``: dotted ModelConfig fields -> values read from the checkpoint."""
    flat = flatten_overrides(overrides)
    size = flat.pop("size", None)
    if size is not None and size not in SIZES:
        raise CheckpointError(f"{source}: unknown size {size!r}; known: {sorted(SIZES)}")
    chosen = size
    if chosen is None and match_presets:
        for name in SIZES:
            preset = to_dict(model_config(name))
            if all(_get(preset, k) == v for k, v in inferred.items()):
                chosen = name
                break
    data = to_dict(model_config(chosen or "base"))
    if chosen is None:
        data["size"] = "custom"
    try:
        for k, v in inferred.items():
            _set(data, k, v)
        # a preset's region depth may exceed an inferred shallower vision encoder
        if "vision.num_layers" in inferred and "vision.region_attn_depth" not in flat:
            data["vision"]["region_attn_depth"] = min(data["vision"]["region_attn_depth"],
                                                     data["vision"]["num_layers"])
        for k, v in flat.items():
            _set(data, k, v)
        return from_dict(ModelConfig, data, source=f"{source} (inferred config + overrides)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
