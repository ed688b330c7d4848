"""Eager vs compiled (``model.compile``) training step, one process, interleaved A/B.

    python bench/step_speed.py [--configs demo,64px,224px] [--steps 6] [--threads 2] [--profile]

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

Compile time = the compiled model's first step minus the eager model's mean step. Prints one JSON
line per config and a table; ``--profile`` adds the top ops (torch.profiler, self CPU time) of one
eager and one compiled step.

Configs (vocabulary 1000, 30-token captions, heads of width 32-64):
- ``demo``: the demo model (configs/model/demo.yaml: 64 px, width 128, 2+2+2 layers), batch 32;
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


def one_step(model, opt, batch, step):
    import torch
    from xfm.objectives import STREAM_LOSSES, LossContext

    torch.manual_seed(step)
    ctx = LossContext(generator=torch.Generator().manual_seed(step))
    t = time.perf_counter()
    losses = STREAM_LOSSES["pairs"](model, batch, ctx)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t, float(loss)


def run_config(name, cfg, batch_size, steps, profile):
    import torch
    from fixtures_model import make_pairs_batch
    from xfm.model import XFM

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
            dt, loss = one_step(models[m], opts[m], batch, s)
            times[m].append(dt)
            losses[m].append(loss)
        print(f"  {name} step {s}: eager {times['eager'][-1]:.3f}s compiled {times['compiled'][-1]:.3f}s "
              f"loss {losses['eager'][-1]:.6f} / {losses['compiled'][-1]:.6f}", file=sys.stderr, flush=True)
    warm = 2 if steps > 3 else 1  # the compiled model's first steps compile (forward, then backward)
    eager_s = statistics.mean(times["eager"][warm:])
    comp_s = statistics.mean(times["compiled"][warm:])
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["eager"], losses["compiled"]))
    rec = {"config": name, "batch": batch_size, "steps_measured": steps - warm,
           "eager_samples_per_s": round(batch_size / eager_s, 2),
           "compiled_samples_per_s": round(batch_size / comp_s, 2),
           "ratio": round(eager_s / comp_s, 3),
           "compile_time_s": round(sum(times["compiled"][:warm]) - warm * eager_s, 1),
           "losses_eager": [round(x, 6) for x in losses["eager"]],
           "losses_compiled": [round(x, 6) for x in losses["compiled"]],
           "max_rel_loss_diff": rel, "load_avg": os.getloadavg()[0]}
    if profile:
        rec["profile"] = {m: top_ops(models[m], opts[m], batches[-1], steps) for m in ("eager", "compiled")}
    return rec


def top_ops(model, opt, batch, step, n=12):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(model, opt, batch, step)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [(e.key, round(e.self_cpu_time_total / 1e6, 4), round(e.self_cpu_time_total / total, 3)) for e in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="demo,64px,224px")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compiled-rng", choices=["eager", "inductor"], default="eager",
                   help="eager: compiled blocks draw dropout masks exactly as eager (losses comparable)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)

    import torch
    import torch._inductor.config as inductor_config

    torch.set_num_threads(args.threads)
    inductor_config.fallback_random = args.compiled_rng == "eager"
    all_cfgs = configs()
    records = []
    for name in args.configs.split(","):
        cfg, batch = all_cfgs[name]
        rec = run_config(name, cfg, batch, args.steps, args.profile)
        rec.update(threads=args.threads, compiled_rng=args.compiled_rng, torch=torch.__version__)
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
