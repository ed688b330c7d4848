"""Where a fine-tuning run's weights come from and where its best model goes.

``--checkpoint`` may be:
- a fine-tuned model directory (``best/``: ``model.safetensors`` + ``config.yaml`` +
  ``task.yaml``): the task model is rebuilt and loaded exactly (re-scoring, continued training);
- a pretraining run directory (``config.yaml`` + ``model_config.yaml`` + ``checkpoints/latest``):
  its latest checkpoint is consolidated from the ZeRO shards;
- anything ``xfm.checkpoint.load_pretrained`` reads: an ``xfm-export`` directory, an official
  X-FM ``.th``, a Hugging Face BERT/RoBERTa directory or a timm BEiT-v2 state dict (the last two
  fill one encoder; the rest keeps its random init, fine for GLUE / image classification).

A fine-tuned model directory holds the X-FM parts the task keeps under our usual keys (so
``XFM.from_pretrained(best/)`` loads the encoders) and the task's head under ``task_head.*``,
plus ``task.yaml`` (task name, its config, the parts kept) for ``load_task_model``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from torch import nn

from xfm.checkpoint.native import CONFIG, WEIGHTS
from xfm.config import save_config, to_dict

TASK_FILE = "task.yaml"
HEAD_PREFIX = "task_head."


class LoadedBackbone:
    def __init__(self, model, kind: str, report_text: str, extra: dict | None = None):
        self.model, self.kind, self.report_text, self.extra = model, kind, report_text, extra or {}


def is_task_dir(path: Path) -> bool:
    return path.is_dir() and (path / TASK_FILE).is_file() and (path / WEIGHTS).is_file()


def is_pretrain_run(path: Path) -> bool:
    return path.is_dir() and (path / "model_config.yaml").is_file() and (path / "config.yaml").is_file() \
        and not (path / WEIGHTS).exists()


def load_backbone(path: str | os.PathLike, num_heads: int | None = None, overrides: dict | None = None):
    """-> LoadedBackbone: an ``XFM`` with the checkpoint's weights and a printable load report."""
    from xfm.checkpoint import load_pretrained
    from xfm.checkpoint.build_config import apply_config_overrides

    path = Path(path)
    overrides = dict(overrides or {})
    if is_pretrain_run(path):
        from xfm.config import load_config
        from xfm.model import XFM
        from xfm.model_config import ModelConfig
        from xfm.runtime.consolidate import consolidated_state_dict

        model_cfg = load_config(path / "model_config.yaml", ModelConfig)
        if overrides:
            model_cfg = apply_config_overrides(model_cfg, _flatten(overrides), source=str(path))
        state, tag = consolidated_state_dict(path)
        model = XFM(model_cfg)
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k != "heads.text_mlm.decoder.weight"]
        if missing or result.unexpected_keys:
            raise ValueError(f"{path} ({tag}): checkpoint does not match its model_config.yaml: "
                             f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        model.tie_weights()
        return LoadedBackbone(model, "pretrain-run", f"{path}: pretraining run, checkpoint {tag}, "
                                                     f"{len(state)} tensors loaded")
    model = load_pretrained(path, num_heads=num_heads, strict=False, **_flatten(overrides))
    report = getattr(model, "load_report", None)
    text = report.summary() if report is not None else str(path)
    return LoadedBackbone(model, getattr(report, "format", "xfm"), text)


def _flatten(overrides: dict, prefix: str = "") -> dict:
    """``{vision: {drop_path: 0.1}}`` -> ``{"vision.drop_path": 0.1}`` (the loaders' keyword form)."""
    out = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def new_keys(task_model: nn.Module, head_prefixes) -> list[str]:
    return sorted(k for k in task_model.state_dict() if k.startswith(tuple(head_prefixes)))


# ----------------------------------------------------------------------------- saving
def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full fp32 copy of a (maybe ZeRO-partitioned, maybe bf16) model's state on rank 0.
    Collective: every rank calls it; ranks other than 0 get None."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    rank = dist.get_rank() if dist.is_initialized() else 0
    out = {}
    seen = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied: same values under another name
            if rank == 0:
                out[name] = out[seen[id(p)]]
            continue
        seen[id(p)] = name
        full = None
        try:
            full = safe_get_full_fp32_param(p)
        except Exception:  # not managed by a DeepSpeed optimizer (frozen, or no engine)
            full = None
        if full is None:
            if hasattr(p, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([p]):
                    full = p.data.detach().clone()
            else:
                full = p.data.detach()
        if rank == 0:
            out[name] = full.detach().float().cpu().clone()
    if rank == 0:
        # the buffers state_dict() holds: a non-persistent one (the BEiT relative position
        # index, the sine-cosine position table) is rebuilt by the model, not a checkpoint key
        layout = model.state_dict().keys()
        for name, b in model.named_buffers():
            if name in layout:
                out[name] = b.detach().cpu().clone()
    return out if rank == 0 else None


def save_task_model(state: dict[str, torch.Tensor], out_dir: str | os.PathLike, task, model_cfg,
                    info: dict | None = None) -> Path:
    """Write a fine-tuned model directory from a full state (rank 0 only)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, tied = {}, {}
    by_ptr = {}
    for name, t in state.items():
        if name.startswith("xfm."):
            key = name[len("xfm."):]
        elif name.startswith("head."):
            key = HEAD_PREFIX + name[len("head."):]
        else:
            continue
        ptr = id(t)
        if ptr in by_ptr:
            tied[key] = by_ptr[ptr]
            continue
        by_ptr[ptr] = key
        tensors[key] = t.contiguous()
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "xfm", "tied": json.dumps(tied), "task": task.name})
    os.replace(tmp, out_dir / WEIGHTS)
    save_config(model_cfg, out_dir / CONFIG)
    task_config = to_dict(task.task_cfg)
    task_config.update(_bundle_files(task, out_dir))
    meta = {"task": task.name, "parts": list(task.parts), "task_config": task_config, **(info or {})}
    (out_dir / TASK_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
    return out_dir


def _bundle_files(task, out_dir: Path) -> dict[str, str]:
    """Copy the files named by ``task.bundled_files`` into ``out_dir``; the task config fields
    then hold the copies' names, relative to the directory (resolved by load_task_model)."""
    import shutil

    from xfm.config import expand_env

    fields = {}
    for field in getattr(task, "bundled_files", ()):
        value = getattr(task.task_cfg, field, None)
        if not value:
            continue
        src = Path(expand_env(str(value)))
        if not src.is_file():
            continue  # saved as configured; loading names the missing file
        name = f"{field}{src.suffix}"
        if src.resolve() != (out_dir / name).resolve():
            shutil.copyfile(src, out_dir / name)
        fields[field] = name
    return fields


def task_state_from_dir(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A fine-tuned directory's tensors under the task model's names (``xfm.*``, ``head.*``)."""
    from xfm.checkpoint.files import read_safetensors

    path = Path(path)
    sd = read_safetensors(path / WEIGHTS)
    # tied tensors are stored once; their other names come back from the file's metadata
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), "pt") as f:
        tied = json.loads((f.metadata() or {}).get("tied") or "{}")
    sd.update({alias: sd[source] for alias, source in tied.items() if source in sd and alias not in sd})
    out = {}
    for k, v in sd.items():
        out[("head." + k[len(HEAD_PREFIX):]) if k.startswith(HEAD_PREFIX) else "xfm." + k] = v
    return out


def read_task_file(path: str | os.PathLike) -> dict:
    return yaml.safe_load((Path(path) / TASK_FILE).read_text())


def load_task_model(path: str | os.PathLike, tokenizer=None, device="cpu"):
    """A fine-tuned model directory -> (task, TaskModel in eval mode), without DeepSpeed or a
    process group (inference, tests). The tokenizer comes from the directory (the loop saves it
    there) unless one is given."""
    from xfm.checkpoint.native import read_native_config
    from xfm.config import from_dict
    from xfm.finetune.config import FinetuneConfig
    from xfm.finetune.registry import get_task
    from xfm.model import XFM
    from xfm.tokenizer import load_tokenizer

    path = Path(path)
    if not is_task_dir(path):
        raise FileNotFoundError(f"{path}: not a fine-tuned model directory ({WEIGHTS} + {CONFIG} + {TASK_FILE})")
    meta = read_task_file(path)
    task_cls = get_task(meta["task"])
    task_config = dict(meta.get("task_config") or {})
    for field in getattr(task_cls, "bundled_files", ()):  # copies saved beside the weights
        value = task_config.get(field)
        if value and not os.path.isabs(str(value)) and (path / str(value)).is_file():
            task_config[field] = str(path / str(value))
    task_cfg = from_dict(task_cls.Config, task_config, str(path / TASK_FILE))
    model_cfg = read_native_config(path)
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    task = task_cls(FinetuneConfig(), task_cfg, model_cfg, tokenizer)
    model = task.build_model(XFM(model_cfg))
    state = task_state_from_dir(path)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if not k.endswith("heads.text_mlm.decoder.weight") and not k.endswith("relative_position_index")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not match the {meta['task']} model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    if hasattr(model.xfm, "tie_weights") and getattr(model.xfm, "text", None) is not None \
            and getattr(getattr(model.xfm, "heads", None), "text_mlm", None) is not None:
        model.xfm.tie_weights()
    return task, model.to(device).eval()
