"""Regional compilation (``model.compile``): the compiled step equals the eager one.

Losses and every parameter gradient of one step of each pretraining stream, compiled vs eager, on
the tiny model (fp32, no dropout): equal within rtol 1e-4 / atol 1e-5 (the compiled graphs may
order floating-point sums differently; measured differences are ~1e-7). The stream tests compile
with the ``aot_eager`` backend (dynamo capture + AOTAutograd's forward/backward graphs, the part
that decides correctness), so they run in seconds; one slow test uses the default inductor
backend (C++ code generation, minutes of compiling on a loaded 2-core machine). The same
comparison runs under activation checkpointing, after the fine-tuning pruning, and (one process)
under DeepSpeed ZeRO-3 and ZeRO-2 for three steps of the pairs stream (every block kind, blocks
called twice per step).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fixtures_model import make_stream_batch
from xfm.model import XFM
from xfm.model.compile import is_compiled, repeated_blocks
from xfm.model_config import model_config
from xfm.objectives import STREAM_LOSSES, LossContext

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-5


def _step(model, stream, batch):
    model.zero_grad(set_to_none=True)
    losses = STREAM_LOSSES[stream](model, batch, LossContext(generator=torch.Generator().manual_seed(5)))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _pair(**overrides):
    cfg = model_config("tiny", **overrides)
    torch.manual_seed(0)
    eager = XFM(cfg)
    compiled = XFM(cfg)
    compiled.load_state_dict(eager.state_dict())
    return cfg, eager, compiled


def _assert_same_step(eager, compiled, stream, cfg):
    batch = make_stream_batch(stream, cfg)
    losses, grads = _step(eager, stream, batch)
    c_losses, c_grads = _step(compiled, stream, batch)
    assert losses.keys() == c_losses.keys()
    for name in losses:
        torch.testing.assert_close(c_losses[name], losses[name], rtol=RTOL, atol=ATOL, msg=f"{stream}: {name}")
    assert grads.keys() == c_grads.keys(), f"{stream}: different parameters got a gradient"
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], rtol=RTOL, atol=ATOL, msg=f"{stream}: grad {name}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.long
def test_compiled_step_equals_eager_for_every_stream():
    cfg, eager, compiled = _pair()
    assert compiled.compile_blocks(backend="aot_eager") == 6  # 2 text + 2 fusion + 2 vision blocks
    assert all(is_compiled(b) for b in repeated_blocks(compiled))
    for stream in STREAM_LOSSES:
        _assert_same_step(eager, compiled, stream, cfg)
    # the compiled code ran (not an eager fall-back): dynamo captured frames
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0


@pytest.mark.long
def test_compiled_step_with_activation_checkpointing():
    # regions: every block kind, with and without key masks (the box-restricted vision pass)
    cfg, eager, compiled = _pair(grad_checkpointing=True)
    compiled.compile_blocks(backend="aot_eager")
    _assert_same_step(eager, compiled, "regions", cfg)


def test_control_a_changed_block_is_caught():
    """The comparison sees a wrong compiled block (here: one weight nudged by 1e-3)."""
    cfg, eager, compiled = _pair()
    compiled.compile_blocks(backend="aot_eager")
    with torch.no_grad():
        compiled.text.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    with pytest.raises(AssertionError):
        _assert_same_step(eager, compiled, "text", cfg)


def test_config_flag_compiles_blocks_and_survives_pruning():
    model = XFM(model_config("tiny", compile=True))
    assert model.config.compile and all(is_compiled(b) for b in repeated_blocks(model))
    # not DeepSpeed leaf modules: their gradients would be reduced once per call (blocks run twice)
    assert not any(getattr(b, "_z3_leaf", False) for b in repeated_blocks(model))
    # state dict names are unchanged by compiling (checkpoints load either way)
    assert set(model.state_dict()) == set(XFM(model_config("tiny")).state_dict())

    # fine-tuning builds the full model, then drops the parts a task does not use
    cfg, eager, compiled = _pair()
    compiled.compile_blocks(backend="aot_eager")
    for m in (eager, compiled):
        m.vision = None
        m.heads.itm = None
    _assert_same_step(eager, compiled, "text", cfg)
    assert len(repeated_blocks(compiled)) == 4


@pytest.mark.long
def test_inductor_compiled_step_equals_eager():
    cfg, eager, compiled = _pair()
    compiled.compile_blocks()  # the default backend, as model.compile uses it
    _assert_same_step(eager, compiled, "text", cfg)


ZERO_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, "tests")
    from fixtures_model import make_stream_batch
    from xfm.model import XFM
    from xfm.model_config import model_config
    from xfm.objectives import LossContext
    from xfm.runtime.config import EngineConfig, OptimConfig
    from xfm.runtime.engine import build_model, deepspeed_config, initialize

    stage = int(sys.argv[1])
    from xfm.runtime.dist import init_distributed
    init_distributed("gloo", 60)
    ds = deepspeed_config(EngineConfig(zero_stage=stage, precision="fp32"), 1)
    cfg = model_config("tiny")
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(lambda init_weights=True: XFM(cfg, init_weights=init_weights), ds, stage)
        if mode != "eager":
            model.compile_blocks(backend="aot_eager")
        # the engine start pretraining uses (client AdamW; ZeRO 0-2's broadcast of the 0-dim temperature)
        engine, _ = initialize(model, model, OptimConfig(lr=1e-3, warmup_steps=0), ds)
        losses = []
        for step in range(3):
            for stream in ("pairs",):
                batch = make_stream_batch(stream, cfg, seed=step)
                parts = engine(stream, batch, LossContext(generator=torch.Generator().manual_seed(step)))
                loss = sum(parts.values())
                engine.backward(loss)
                engine.step()
                losses.append(float(loss))
        out[mode] = losses
        engine.destroy()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.long
@pytest.mark.parametrize("stage", [3, 2])
def test_compiled_blocks_under_deepspeed_zero(stage, tmp_path):
    from fixtures_pretrain import free_port

    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-c", ZERO_SCRIPT, str(stage)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    eager = torch.tensor(result["eager"])
    assert len(eager) == 3
    # the losses of steps 2 and 3 come after optimizer steps: the gradients were the same too
    torch.testing.assert_close(torch.tensor(result["compiled"]), eager, rtol=RTOL, atol=ATOL)
