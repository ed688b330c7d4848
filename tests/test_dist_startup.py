"""Process-group start-up on the CPU accelerator: `xfm.runtime.dist.init_distributed` starts without
DeepSpeed compiling its shared-memory all-reduce op (~40 s of a C++ compiler on 2 cores in every
fresh TORCH_EXTENSIONS_DIR, with every rank waiting on the build's lock), and the process group
still works. The op is made impossible to build in the subprocess, so the test needs no compiler
time either way; the control starts through `deepspeed.init_distributed` alone and hits the build.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from fixtures_pretrain import REPO, free_port

SCRIPT = r'''
import importlib, os, sys
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

def refuse(self, verbose=True):
    raise RuntimeError("DeepSpeed started compiling its CPU shared-memory op")

ShareMemCommBuilder.load = refuse
import torch
if sys.argv[1] == "xfm":
    from xfm.runtime.dist import init_distributed
    init_distributed("gloo", 60)
else:  # the control: DeepSpeed's own start-up, as xfm did before
    import deepspeed
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
from deepspeed import comm
t = torch.arange(3.0)
comm.all_reduce(t)
backend = importlib.import_module("deepspeed.comm.comm").cdb
print("started", backend.shm_comm_op is None, t.tolist(), flush=True)
'''


def _start(how: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", SCRIPT, how, str(free_port())], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
def test_process_group_starts_without_compiling_deepspeeds_cpu_op():
    proc = _start("xfm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started True [0.0, 1.0, 2.0]" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.distributed
def test_control_deepspeeds_own_start_up_compiles_the_op():
    proc = _start("deepspeed")
    assert proc.returncode != 0 and "started compiling its CPU shared-memory op" in proc.stderr, \
        (proc.stdout[-1000:], proc.stderr[-2000:])
