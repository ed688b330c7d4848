"""Gradient clipping without ZeRO (stage 0) on a model with a 0-dim parameter (the temperature).

DeepSpeed 0.19.8's stage-0 clipping scales every gradient in place by a 1-element tensor, which
raises for a 0-dim gradient; ``xfm.runtime.engine.initialize`` wraps the engine's clipping. Checked in one process
per run (DeepSpeed's process group): stage 0 and stage 2 with clipping that triggers every step
both follow a plain-torch reference (clip_grad_norm_ + AdamW) step for step; the control runs
stage 0 through ``deepspeed.initialize`` without the clipping wrapper and gets DeepSpeed's error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    import deepspeed
    from xfm.runtime.config import EngineConfig, OptimConfig
    from xfm.runtime.engine import broadcast_scalar_params, deepspeed_config, initialize
    from xfm.runtime.optim import build_optimizer

    class WithTemperature(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.temp = nn.Parameter(torch.tensor(0.07))   # 0-dim, as heads.temp.temp
        def forward(self, x):
            return (self.lin(x) / self.temp).pow(2).mean()

    stage, patched = int(sys.argv[1]), sys.argv[2] == "patched"
    from xfm.runtime.dist import init_distributed
    init_distributed("gloo", 60)
    optim = OptimConfig(lr=1e-2, warmup_steps=0, groups="clean", lr_mult_prefixes=[])
    ds = deepspeed_config(EngineConfig(zero_stage=stage, precision="fp32", gradient_clipping=0.05), 1)
    torch.manual_seed(0)
    model, ref = WithTemperature(), WithTemperature()
    ref.load_state_dict(model.state_dict())
    if patched:
        engine, _ = initialize(model, model, optim, ds)
    else:   # the control: DeepSpeed's own start with only the start-up broadcast fixed, no clipping wrapper
        with broadcast_scalar_params():
            engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, optim), config=ds)
    ref_opt = build_optimizer(ref, optim)
    xs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    norms = []
    for x in xs:
        loss = engine(x)
        engine.backward(loss)
        engine.step()
        ref_opt.zero_grad()
        ref(x).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)))
        ref_opt.step()
    got = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    diff = max(float((got[n] - p.detach()).abs().max()) for n, p in ref.named_parameters())
    print("RESULT " + json.dumps({"diff": diff, "norms": norms, "temp_shape": list(got["temp"].shape)}))
""")


def _run(stage: int, mode: str) -> subprocess.CompletedProcess:
    from fixtures_pretrain import free_port

    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return subprocess.run([sys.executable, "-c", SCRIPT, str(stage), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage", [0, 2])
def test_clipping_with_a_scalar_parameter_follows_torch(stage):
    proc = _run(stage, "patched")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert all(n > 0.05 for n in result["norms"]), result   # the clipping acts at every step
    assert result["diff"] < 1e-6, result
    assert result["temp_shape"] == []   # still 0-dim after the steps


def test_control_deepspeed_alone_fails_on_the_scalar_gradient():
    proc = _run(0, "control")
    assert proc.returncode != 0
    assert "doesn't match the broadcast shape" in proc.stderr, proc.stderr[-3000:]
