"""Per-process concerns of a training run: seeds, determinism, stop signals, moving batches to
the device, and ending a distributed process cleanly."""
from __future__ import annotations

import os
import random
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist


class StopRequest:
    """SIGTERM / SIGUSR1 set a flag; the loop saves at the end of the current step and exits 0."""

    def __init__(self):
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signum = signum

    def agreed(self, device) -> int:
        """Collective: the largest signal number seen by any rank (0 = keep going)."""
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# Integer tensors that host code reads every step (ITM's no-negative check reads the image ids):
# moved to an accelerator, they also stay on the host as ``<name>_host``, so reading them costs
# no device synchronisation.
HOST_COPIES = ("image_ids",)


def to_device(batch: dict, device, dtype: torch.dtype = torch.float32,
              model_input_floats: tuple[str, ...] = ("image",)) -> dict:
    """Tensors to ``device``; the float model inputs named in ``model_input_floats`` are cast to
    the engine's dtype, every other float (targets such as boxes) stays as it is."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            if k in HOST_COPIES and v.device.type == "cpu" and torch.device(device).type != "cpu":
                out[k + "_host"] = v
            v = v.to(device, non_blocking=True)
            if k in model_input_floats and v.is_floating_point() and dtype != v.dtype:
                v = v.to(dtype)
        out[k] = v
    return out


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def set_encoder_checkpointing(model, encoders: list[str]) -> None:
    """Activation checkpointing per encoder (the model's own switch covers all three)."""
    targets = {"text": getattr(getattr(model, "text", None), "encoder", None),
               "fusion": getattr(getattr(model, "fusion", None), "encoder", None),
               "vision": getattr(model, "vision", None)}
    for name, mod in targets.items():
        if mod is not None and hasattr(mod, "grad_checkpointing"):
            mod.grad_checkpointing = name in encoders


def launcher_setup(local_rank: int | None) -> None:
    """What every training CLI does first: the ``deepspeed`` launcher passes ``--local_rank``
    (the process group reads ``LOCAL_RANK``), and DeepSpeed 0.19.8 calls collectives torch 2.14
    marks deprecated, once per call site."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated")
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


def finish_distributed(code: int) -> int:
    """After a distributed run: barrier, destroy the group and end the process (see
    ``exit_without_teardown``); a single process just returns ``code``."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        exit_without_teardown(code)
    return code


def exit_without_teardown(code: int) -> None:
    """End the process now, skipping the interpreter's teardown.

    torch 2.14's gloo worker threads can still hold the last reference to a finished
    collective's tensors when Python starts finalising (DeepSpeed keeps the process groups alive
    past ``destroy_process_group``); dropping it then takes the GIL from a dying interpreter and
    aborts the process ("terminate called without an active exception", SIGABRT) after a run
    that finished and saved everything - measured here in about 1 of 12 two-rank runs, enough to
    mark a SLURM job failed. Everything this run wrote is closed by now (metrics, checkpoints,
    loader workers); flush what Python still buffers and leave."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
