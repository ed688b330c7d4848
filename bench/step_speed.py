"""Eager vs compiled (``model.compile``) training step: one process (interleaved A/B) or 2 ZeRO-3 ranks.

    python bench/step_speed.py [--configs demo,64px,224px] [--steps 6] [--threads 2] [--profile]
    python bench/step_speed.py --nproc 2 [--configs demo] [--steps 8]
    python bench/step_speed.py --precision bf16 [--configs 224px]   (CPU autocast, both models)

One step = the pairs stream (ITC, ITM with hard negatives, fusion MLM, MIM: every encoder, the
largest objective mix) forward + backward + AdamW step, fp32. The eager and the compiled model
start from the same weights and see the same batches; their steps alternate (eager, compiled,
compiled, eager, ...) so a machine whose load changes during the run slows both alike. Before
each step the global seed is reset to the step number, and the compiled blocks draw their
dropout masks as eager PyTorch does (``fallback_random``; ``--compiled-rng inductor`` uses the
compiler's own generator instead), so the losses of the first steps must agree within float
tolerance: they are printed side by side with the largest relative difference. Observed: a
run that compiled from scratch matched to 8e-8, but a second run served from inductor's on-disk
cache drew other dropout masks (losses 5e-5 apart at step 0); compare losses on a cold cache
(``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``).

Step times are medians over the steps after the compiling ones. Compile time = the compiled
model's first steps minus as many median eager steps. Prints one JSON
line per config and a table; ``--profile`` adds the top ops (torch.profiler, self CPU time) of one
eager and one compiled step.

``--nproc 2``: the same step as DeepSpeed ZeRO-3 runs it on 2 ranks (gloo, our generated config,
``xfm.runtime.engine``: the model built partitioned, the client AdamW on the flat partitions, ITC
gathering features over both ranks), each rank with its own batch of the config's size and
``threads / 2`` threads. Two engines cannot alternate in one process, so the eager engine runs
its steps first, then the compiled one (same weights, same batches, same seeds); samples/s count
both ranks.

Configs (vocabulary 1000, 30-token captions, heads of width 32-64):
- ``demo``: the demo model as configs/model/demo.yaml has it (now 32 px / patch 8, width 128, 2+2+2
  layers; the recorded demo rows were measured at 64 px / patch 16), batch 32;
- ``64px``: 64 px / patch 16, width 128, 4+4+4 layers, 4 heads, dropout 0.1, batch 64;
- ``224px``: 224 px / patch 16, width 384, 6+6+6 layers, 6 heads, dropout 0.1, drop path 0.1,
  batch 16.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic batch builders


def configs():
    from xfm.config import load_config
    from xfm.model_config import FusionConfig, ModelConfig, TextConfig, VisionConfig, model_config

    tiny = model_config("tiny")
    demo = load_config(REPO / "configs" / "model" / "demo.yaml", ModelConfig)
    d64 = replace(tiny, size="bench64",
                  text=replace(tiny.text, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                               hidden_dropout=0.1, attention_dropout=0.1),
                  vision=VisionConfig(image_size=64, patch_size=16, hidden_size=128, num_layers=4, num_heads=4,
                                      drop_path=0.1, region_attn_depth=1),
                  fusion=FusionConfig(num_layers=4, num_heads=4, intermediate_size=512),
                  embed_dim=64)
    d224 = replace(tiny, size="bench224",
                   text=TextConfig(vocab_size=1000, hidden_size=384, num_layers=6, num_heads=6,
                                   intermediate_size=1536, max_position_embeddings=64),
                   vision=VisionConfig(image_size=224, patch_size=16, hidden_size=384, num_layers=6,
                                       num_heads=6, drop_path=0.1, region_attn_depth=2),
                   fusion=FusionConfig(num_layers=6, num_heads=6, intermediate_size=1536),
                   embed_dim=128)
    return {"demo": (demo, 32), "64px": (d64, 64), "224px": (d224, 16)}


def one_step(model, opt, batch, step, precision="fp32"):
    import torch
    from xfm.objectives import STREAM_LOSSES, LossContext

    torch.manual_seed(step)
    ctx = LossContext(generator=torch.Generator().manual_seed(step))
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        losses = STREAM_LOSSES["pairs"](model, batch, ctx)
        loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t, float(loss)


def summarise(times: dict, losses: dict, samples_per_step: int) -> dict:
    """Medians of the steps after the compiling ones, their ratio, compile time, loss agreement."""
    steps = len(times["eager"])
    warm = 2 if steps > 3 else 1  # the compiled model's first steps compile (forward, then backward)
    # medians: one slow step of a loaded machine must not decide the ratio
    eager_s = statistics.median(times["eager"][warm:])
    comp_s = statistics.median(times["compiled"][warm:])
    le, lc = losses["eager"], losses["compiled"]
    return {"steps_measured": steps - warm, "statistic": "median",
            "eager_samples_per_s": round(samples_per_step / eager_s, 2),
            "compiled_samples_per_s": round(samples_per_step / comp_s, 2),
            "ratio": round(eager_s / comp_s, 3),
            "compile_time_s": round(sum(times["compiled"][:warm]) - warm * eager_s, 1),
            "losses_eager": [round(x, 6) for x in le], "losses_compiled": [round(x, 6) for x in lc],
            "max_rel_loss_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lc)),
            "load_avg": os.getloadavg()[0]}


def dynamo_counts(model) -> dict:
    """How many graphs dynamo made of the compiled blocks (since the last ``counters.clear()``)."""
    from torch._dynamo.utils import counters
    from xfm.model.compile import repeated_blocks

    return {"unique_graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()), "blocks": len(repeated_blocks(model))}


def run_config(name, cfg, batch_size, steps, profile, precision="fp32"):
    import torch
    from fixtures_model import make_pairs_batch
    from torch._dynamo.utils import counters
    from xfm.model import XFM

    counters.clear()  # the graph counts below are this config's
    torch.manual_seed(0)
    eager = XFM(cfg)
    compiled = XFM(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    models = {"eager": eager, "compiled": compiled}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    batches = [make_pairs_batch(cfg, batch_size=batch_size, length=30, seed=s) for s in range(steps)]
    times = {"eager": [], "compiled": []}
    losses = {"eager": [], "compiled": []}
    for s, batch in enumerate(batches):
        order = ("eager", "compiled") if s % 2 == 0 else ("compiled", "eager")
        for m in order:
            dt, loss = one_step(models[m], opts[m], batch, s, precision)
            times[m].append(dt)
            losses[m].append(loss)
        print(f"  {name} step {s}: eager {times['eager'][-1]:.3f}s compiled {times['compiled'][-1]:.3f}s "
              f"loss {losses['eager'][-1]:.6f} / {losses['compiled'][-1]:.6f}", file=sys.stderr, flush=True)
    rec = {"config": name, "batch": batch_size,
           **summarise(times, losses, batch_size), "dynamo": dynamo_counts(compiled)}
    if profile:
        rec["profile"] = {m: top_ops(models[m], opts[m], batches[-1], steps, precision) for m in ("eager", "compiled")}
    return rec


DIST_WORKER = "--dist-worker"


def dist_worker(name: str, steps: int, compiled_rng: str) -> None:
    """One rank of the ``--nproc`` run (started by torch.distributed.run)."""
    import deepspeed
    import torch
    import torch._inductor.config as inductor_config
    import torch.distributed as dist
    from fixtures_model import make_pairs_batch
    from xfm.model import XFM
    from xfm.objectives import LossContext
    from xfm.runtime.config import EngineConfig, OptimConfig
    from xfm.runtime.dist import init_distributed
    from xfm.runtime.engine import build_model, deepspeed_config, initialize

    inductor_config.fallback_random = compiled_rng == "eager"
    init_distributed("gloo", 600)
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, batch_size = configs()[name]
    ds = deepspeed_config(EngineConfig(zero_stage=3, precision="fp32"), world)
    batches = [make_pairs_batch(cfg, batch_size=batch_size, length=30, seed=s * world + rank) for s in range(steps)]
    rec = {"times": {}, "losses": {}}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(lambda init_weights=True: XFM(cfg, init_weights=init_weights), ds, 3)
        if mode == "compiled":
            model.compile_blocks()
        engine, _ = initialize(model, model, OptimConfig(lr=1e-4, warmup_steps=0), ds)
        times, losses = [], []
        for s, batch in enumerate(batches):
            torch.manual_seed(s * world + rank)
            ctx = LossContext(world_size=world, rank=rank, generator=torch.Generator().manual_seed(s))
            dist.barrier()
            t = time.perf_counter()
            loss = sum(engine("pairs", batch, ctx).values())
            engine.backward(loss)
            engine.step()
            dist.barrier()
            times.append(time.perf_counter() - t)
            losses.append(float(loss.detach()))
            if rank == 0:
                print(f"  {name} {mode} step {s}: {times[-1]:.3f}s loss {losses[-1]:.6f}", file=sys.stderr, flush=True)
        rec["times"][mode], rec["losses"][mode] = times, losses
        if mode == "compiled":  # why compiling pays less under ZeRO-3: the graphs it was cut into
            rec["dynamo"] = dynamo_counts(model)
        engine.destroy()
    if rank == 0:
        print("RESULT " + json.dumps(rec), flush=True)


def run_config_dist(name, batch_size, steps, nproc, threads, compiled_rng):
    import subprocess

    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, threads // nproc)),
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           __file__, DIST_WORKER, name, str(steps), compiled_rng]
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{name}: the {nproc}-rank run exited with {proc.returncode}")
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    return {"config": name, "nproc": nproc, "zero_stage": 3, "batch_per_rank": batch_size,
            "batch": nproc * batch_size, **summarise(res["times"], res["losses"], nproc * batch_size),
            "dynamo": res["dynamo"]}


def top_ops(model, opt, batch, step, precision="fp32", n=12):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(model, opt, batch, step, precision)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [(e.key, round(e.self_cpu_time_total / 1e6, 4), round(e.self_cpu_time_total / total, 3)) for e in rows]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == DIST_WORKER:
        dist_worker(argv[1], int(argv[2]), argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="demo,64px,224px")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compiled-rng", choices=["eager", "inductor"], default="eager",
                   help="eager: compiled blocks draw dropout masks exactly as eager (losses comparable)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--nproc", type=int, default=1, help="2: DeepSpeed ZeRO-3 on that many ranks (gloo)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: torch.autocast on CPU around forward and loss, eager and compiled alike (one process)")
    args = p.parse_args(argv)
    if args.precision != "fp32" and args.nproc > 1:
        p.error("--precision bf16 is for one-process runs (the engine's own bf16 is engine.precision)")

    import torch
    import torch._inductor.config as inductor_config

    torch.set_num_threads(args.threads)
    inductor_config.fallback_random = args.compiled_rng == "eager"
    all_cfgs = configs()
    records = []
    for name in args.configs.split(","):
        cfg, batch = all_cfgs[name]
        if args.nproc > 1:
            rec = run_config_dist(name, batch, args.steps, args.nproc, args.threads, args.compiled_rng)
        else:
            rec = run_config(name, cfg, batch, args.steps, args.profile, args.precision)
        rec.update(threads=args.threads, compiled_rng=args.compiled_rng, precision=args.precision,
                   torch=torch.__version__)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    print(f"\n{'config':8s} {'batch':>5s} {'eager/s':>9s} {'compiled/s':>10s} {'ratio':>6s} {'compile s':>9s} "
          f"{'max rel dloss':>13s} {'load':>5s}")
    for r in records:
        print(f"{r['config']:8s} {r['batch']:5d} {r['eager_samples_per_s']:9.2f} {r['compiled_samples_per_s']:10.2f} "
              f"{r['ratio']:6.3f} {r['compile_time_s']:9.1f} {r['max_rel_loss_diff']:13.2e} {r['load_avg']:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
