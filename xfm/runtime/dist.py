"""Process-group start-up that works the same under ``deepspeed``, ``torchrun``, SLURM ``srun``
and a plain ``python`` (one process).

``deepspeed.init_distributed`` reads ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` but ignores SLURM's
variables (docs/DESIGN.md, pitfalls), so under ``srun`` we map them ourselves: rank =
``SLURM_PROCID``, local rank = ``SLURM_LOCALID``, world = ``SLURM_NTASKS``, master = the first
host of ``scontrol show hostnames $SLURM_JOB_NODELIST``.

On the CPU accelerator DeepSpeed would JIT-compile a shared-memory all-reduce op when the
process group starts (``skip_cpu_inference_comm_op``); we start without it.
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    launcher: str  # "slurm", "torchrun", "deepspeed", "env" (another launcher's RANK/WORLD_SIZE), "single"


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # no scontrol on this node: a plain "host" or "prefix[1-4,7]" list
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rng = head.split("[", 1)
        first = rng.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_from_launcher(environ=os.environ) -> DistInfo:
    """Fill RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from whatever launched us."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        # named for the start line; both set the same variables
        launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in environ else
                    "deepspeed" if "LOCAL_SIZE" in environ else "env")
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ and int(environ["SLURM_NTASKS"]) >= 1 \
            and "SLURM_STEP_ID" in environ:
        launcher = "slurm"
        environ["RANK"] = environ["SLURM_PROCID"]
        environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
        environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
        environ.setdefault("LOCAL_WORLD_SIZE", environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        if "MASTER_ADDR" not in environ:
            nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "localhost"
            environ["MASTER_ADDR"] = _first_slurm_host(nodelist)
        # one port per job, so two jobs sharing a node do not collide
        environ.setdefault("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        launcher = "single"
        environ["RANK"] = "0"
        environ["LOCAL_RANK"] = "0"
        environ["WORLD_SIZE"] = "1"
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(_free_port()))
    environ.setdefault("LOCAL_RANK", "0")
    return DistInfo(int(environ["RANK"]), int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"]), launcher)


def skip_cpu_inference_comm_op() -> None:
    """Keep DeepSpeed's CPU accelerator from compiling its shared-memory all-reduce op at
    process-group start (DeepSpeed 0.19: ``deepspeed.comm.torch.build_shm_op``). The build takes
    ~40 s of a C++ compiler on 2 cores the first time in each ``TORCH_EXTENSIONS_DIR``, every rank
    waits on its lock, and virtual environments sharing one cache rebuild it in turn. Only
    DeepSpeed's tensor-parallel inference layers use the op (``inference_all_reduce``, which falls
    back to ``torch.distributed.all_reduce`` without it); training's collectives are
    torch.distributed's with or without it. A DeepSpeed without that function keeps its own
    behaviour (a slower first start, nothing else)."""
    import importlib

    # by module name: the attribute `deepspeed.comm.torch` is the torch package itself (deepspeed.comm
    # re-exports its names), so `import deepspeed.comm.torch as m` would bind torch
    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_torch_comm, "build_shm_op"):
        ds_torch_comm.build_shm_op = lambda: None


def init_distributed(backend: str | None, timeout_s: int) -> DistInfo:
    """Start the process group (idempotent). A collective that waits longer than ``timeout_s``
    raises instead of hanging, which is how a rank-divergent step shows up."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    info = env_from_launcher()
    acc = get_accelerator()
    if backend is None:
        backend = "nccl" if acc.device_name() == "cuda" else "gloo"
    if acc.device_name() != "cpu":
        acc.set_device(info.local_rank)
    else:
        skip_cpu_inference_comm_op()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=timeout_s),
                                   rank=info.rank, world_size=info.world_size)
    return info
