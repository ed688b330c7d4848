"""``xfm-export RUN_DIR --out DIR [--tag step00000040]``: a training checkpoint -> a model dir.

Consolidates the ZeRO shards of the run's latest (or the given) checkpoint into full fp32
tensors with DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` (stages 1-3; a stage-0
checkpoint is already whole), strips the training wrapper's ``model.`` prefix, loads them
strictly into an ``XFM`` built from the run's resolved ``model_config.yaml`` and writes
``model.safetensors`` + ``config.yaml`` with ``xfm.checkpoint.save_pretrained``: the directory
``XFM.from_pretrained`` and the finetune tree load. The run's pretraining config is copied as
``pretrain_config.yaml`` for provenance. Runs in one process on CPU; no process group needed.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import torch

from xfm.config import load_config
from xfm.model_config import ModelConfig
from xfm.runtime.consolidate import consolidated_state_dict

def export(run_dir: str | Path, out_dir: str | Path, tag: str | None = None):
    """Write ``out_dir`` (model.safetensors + config.yaml); returns the loaded XFM."""
    from xfm.checkpoint import save_pretrained
    from xfm.model import XFM

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model_cfg = load_config(run_dir / "model_config.yaml", ModelConfig)
    state, tag = consolidated_state_dict(run_dir, tag)
    model = XFM(model_cfg, init_weights=False)  # every weight comes from the checkpoint
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _tied_alias(model, k, state)]
    if missing or result.unexpected_keys:
        raise KeyError(f"{run_dir} ({tag}): checkpoint does not match the model: missing {missing[:5]}"
                       f" ({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})")
    save_pretrained(model, out_dir)
    shutil.copyfile(run_dir / "config.yaml", out_dir / "pretrain_config.yaml")
    return model


def _tied_alias(model, key: str, state: dict) -> bool:
    """A key missing only because it is the same Parameter as one that was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(params[other] is params[key] for other in state if other in params and other != key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xfm-export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a pretraining run directory (has config.yaml and checkpoints/)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--tag", help="checkpoint tag (default: the run's latest)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        model = export(args.run_dir, args.out, args.tag)
    except (FileNotFoundError, KeyError) as e:
        print(f"xfm-export: {e}", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(f"xfm-export: wrote {args.out} ({n:,} parameters) from {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
