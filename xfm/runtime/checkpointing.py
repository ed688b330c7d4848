"""Training checkpoints: DeepSpeed's sharded model/optimizer state + our per-rank state.

Layout of ``CKPT_DIR``::

    step00000040/               one DeepSpeed tag (every rank writes its own ZeRO shard)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt ...   (DeepSpeed)
        xfm_rank00000.pt, xfm_rank00001.pt                                 (ours, one per rank)
    latest                      the tag of the newest complete checkpoint

Ours per rank: the step, every RNG (python, numpy, torch CPU and accelerator), every stream's
position (``StreamSet.state_dict``) and the schedule (``{"total_steps": N}``: the lr schedule is
a pure function of the step and its length, ``xfm.runtime.optim.set_lr``), which are rank-local
or needed before the engine exists, so they do not live in DeepSpeed's ``client_state`` (only
rank 0 writes that). ``latest`` is written last, through a temporary file and ``os.replace``,
after a barrier: a run killed in the middle of a save resumes from the previous complete
checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(ckpt_dir: str | os.PathLike) -> str | None:
    path = Path(ckpt_dir) / LATEST
    if not path.exists():
        return None
    tag = path.read_text().strip()
    if not (Path(ckpt_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names checkpoint {tag!r}, which does not exist in {ckpt_dir}")
    return tag


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    tmp = ckpt_dir / f".{LATEST}.tmp"
    tmp.write_text(tag + "\n")
    os.replace(tmp, ckpt_dir / LATEST)


class ScheduleMismatch(ValueError):
    """A resume asks for another schedule than the checkpoint was trained with."""


def read_schedule(ckpt_dir: str | os.PathLike, tag: str | None = None) -> dict | None:
    """The schedule stored with checkpoint ``tag`` (default: the latest), read without an engine
    (so a mismatch stops the run before anything is built); None for a checkpoint without one."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        return None
    own = ckpt_dir / tag / f"xfm_rank{0:05d}.pt"
    if not own.exists():
        return None
    return torch.load(own, map_location="cpu", weights_only=False).get("schedule")


def check_schedule(stored: dict | None, requested: dict, *, allow_change: bool = False,
                   override: str = "optim.reschedule=true", where: str = "the checkpoint") -> None:
    """Raise ``ScheduleMismatch`` naming both values and ``override`` when ``requested``
    differs from ``stored`` (and the change was not asked for)."""
    if stored is None or allow_change:
        return
    diff = {k: (stored[k], requested[k]) for k in requested if k in stored and stored[k] != requested[k]}
    if diff:
        what = ", ".join(f"{k}={old} in {where}, {new} requested" for k, (old, new) in diff.items())
        raise ScheduleMismatch(
            f"resume: the schedule differs ({what}). The lr schedule depends on its length, so "
            f"resuming with another one changes the lr of every remaining step. To end this run "
            f"earlier use --stop-at STEP (the schedule stays); to change the length on purpose pass "
            f"--set {override}")


def save(engine, ckpt_dir: str | os.PathLike, step: int, streams_state: dict, meta: dict,
         keep_last: int = 0, *, schedule: dict | None = None) -> str:
    """Collective: every rank must call it. Returns the tag written. ``schedule`` (e.g.
    ``{"total_steps": N}``) is stored with every rank's state (``read_schedule``)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"xfm_step": step, **meta},
                           save_latest=False)
    own = {"step": step, "rng": rng_state(), "streams": streams_state, "schedule": schedule,
           "world_size": dist.get_world_size() if dist.is_initialized() else 1}
    tmp = ckpt_dir / tag / f".xfm_rank{rank:05d}.pt.tmp"
    torch.save(own, tmp)
    os.replace(tmp, ckpt_dir / tag / f"xfm_rank{rank:05d}.pt")
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        _write_latest(ckpt_dir, tag)
        if keep_last > 0:
            tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
            for old in tags[:-keep_last]:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return tag


def load(engine, ckpt_dir: str | os.PathLike, tag: str | None = None) -> tuple[int, dict]:
    """Restore engine (model + optimizer), RNGs; returns (step, streams_state) for the caller."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir} (no '{LATEST}' file)")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    own_path = ckpt_dir / tag / f"xfm_rank{rank:05d}.pt"
    if not own_path.exists():
        raise FileNotFoundError(f"{own_path} is missing: checkpoint {tag} was not written by rank {rank}")
    own = torch.load(own_path, map_location="cpu", weights_only=False)
    if own["world_size"] != world:
        raise RuntimeError(
            f"checkpoint {ckpt_dir / tag} was written by {own['world_size']} ranks, this run has {world}: "
            "convert it with DeepSpeed's ds_to_universal and load it as a universal checkpoint "
            "(engine.deepspeed: {checkpoint: {load_universal: true}}), or export + init_from")
    load_path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    set_rng_state(own["rng"])
    return int(own["step"]), own["streams"]
