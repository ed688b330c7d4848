"""Our own format: a directory with ``model.safetensors`` + ``config.yaml``.

``config.yaml`` is the fully resolved ModelConfig (``xfm.config.save_config``), so the model is
rebuilt exactly. Tied parameters (the text MLM decoder = the word embeddings) are stored once,
under the first name ``named_parameters`` gives; the file's metadata lists the dropped aliases
(``xfm.tied``) and they are restored by the model's own tying when it is rebuilt. Loading is
strict: a missing or unexpected tensor or a shape mismatch is an error naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, load_config, save_config
from ..model_config import ModelConfig
from .apply import apply_mapped, require_clean, tied_aliases
from .files import read_safetensors
from .report import CheckpointError, LoadReport

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"
FORMAT_TAG = "xfm"


def is_native_dir(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/model.safetensors`` (tied tensors once) and ``directory/config.yaml``."""
    from safetensors.torch import save_file
    directory = Path(directory)
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save_pretrained needs an XFM model with a ModelConfig, got {type(model).__name__}")
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    aliases = tied_aliases(model)
    tied: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        canonical = aliases.get(name, [name])[0]
        if canonical != name:
            tied[name] = canonical
            continue
        if t.is_meta:
            raise CheckpointError(f"cannot save {name}: the model is on the meta device (no data)")
        tensors[name] = t.detach().to("cpu").contiguous()
    meta = {"format": FORMAT_TAG, "tied": json.dumps(tied)}
    # write both files under temporary names first so a crash never leaves a half checkpoint
    tmp_w, tmp_c = directory / (WEIGHTS + ".tmp"), directory / (CONFIG + ".tmp")
    save_file(tensors, str(tmp_w), metadata=meta)
    save_config(config, tmp_c)
    os.replace(tmp_w, directory / WEIGHTS)
    os.replace(tmp_c, directory / CONFIG)
    return directory


def read_native_config(directory: Path) -> ModelConfig:
    try:
        return load_config(directory / CONFIG, ModelConfig)
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG}: {e}") from e


TASK_FILE = "task.yaml"  # present in a fine-tuned model directory (xfm-finetune's best/)
TASK_HEAD_PREFIX = "task_head."


def _task_meta(directory: Path) -> dict | None:
    path = directory / TASK_FILE
    if not path.is_file():
        return None
    import yaml

    meta = yaml.safe_load(path.read_text()) or {}
    if not isinstance(meta, dict) or "task" not in meta:
        raise CheckpointError(f"{path}: not a fine-tuned model description (no 'task' key)")
    return meta


def load_native(model: nn.Module, directory: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Copy ``directory/model.safetensors`` into an already built model.

    A fine-tuned model directory (with ``task.yaml``) holds only the X-FM parts its task uses
    plus the task's head under ``task_head.*``: the head is skipped (documented, with the task's
    name) and the parts the task does not have keep the model's own values, reported as new."""
    directory = Path(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS}")
    sd = read_safetensors(weights)
    meta = _task_meta(directory)
    ignored, in_scope, is_new = {}, (lambda k: True), (lambda k: False)
    if meta is not None:
        parts = tuple(meta.get("parts") or ())
        reason = (f"head of the fine-tuned {meta['task']!r} model (load it with "
                  f"xfm.finetune.model_io.load_task_model)")
        ignored = {k: reason for k in sd if k.startswith(TASK_HEAD_PREFIX)}
        sd = {k: v for k, v in sd.items() if not k.startswith(TASK_HEAD_PREFIX)}
        in_scope = lambda k: k.split(".")[0] in parts  # noqa: E731
        is_new = lambda k: k.split(".")[0] not in parts  # noqa: E731
    mapped = {k: (k, v) for k, v in sd.items()}
    report = apply_mapped(model, mapped, source=str(weights), fmt="xfm", in_scope=lambda k: True,
                          is_new=is_new, ignored=ignored)
    if meta is not None:
        report.new = sorted(k for k in model.state_dict() if not in_scope(k) and k not in report.loaded)
        report.missing = [k for k in report.missing if in_scope(k)]
    if strict:
        require_clean(report, "model's")
    return report


def build_native(directory: str | os.PathLike, overrides: dict | None = None,
                 *, strict: bool = True):
    """Rebuild the model from ``config.yaml`` (plus overrides, e.g. dropouts) and load its weights."""
    from ..model import XFM
    from .build_config import apply_config_overrides
    directory = Path(directory)
    config = read_native_config(directory)
    if overrides:
        config = apply_config_overrides(config, overrides, source=str(directory / CONFIG))
    model = XFM(config)
    report = load_native(model, directory, strict=strict)
    return model, report
