"""A training checkpoint (DeepSpeed shards of any ZeRO stage) -> one full fp32 state dict.

Uses DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` for stages 1-3 (no process group,
CPU only); a stage-0 checkpoint already holds the whole module. ``prefix`` is the training
wrapper's attribute path to strip (``model.`` for the pretraining wrapper)."""
from __future__ import annotations

from pathlib import Path

import torch

from xfm.config import read_yaml
from xfm.runtime.checkpointing import read_latest



def _checkpoint_dir(run_dir: Path) -> Path:
    data = read_yaml(run_dir / "config.yaml")
    ckpt = (data.get("checkpoint") or {}).get("dir")
    return Path(ckpt) if ckpt else run_dir / "checkpoints"


def consolidated_state_dict(run_dir: str | Path, tag: str | None = None,
                            prefix: str = "model.") -> tuple[dict, str]:
    """Full fp32 state dict of the model (our key names) from a run's checkpoint."""
    run_dir = Path(run_dir)
    ckpt_dir = _checkpoint_dir(run_dir)
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no 'latest' checkpoint (has the run saved one?)")
    tag_dir = ckpt_dir / tag
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint")
    if any(tag_dir.glob("*optim_states.pt")) and any(tag_dir.glob("zero_pp_rank_*")) or \
            any(tag_dir.glob("bf16_zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:  # ZeRO stage 0: the model states file holds the whole module
        files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{tag_dir}: neither ZeRO shards nor mp_rank_*_model_states.pt")
        state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            raise KeyError(f"{tag_dir}: unexpected key {k!r} (expected the training wrapper's {prefix!r} prefix)")
        out[k[len(prefix):]] = v.float() if v.is_floating_point() else v
    return out, tag


