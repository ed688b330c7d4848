"""Pretraining step time under DeepSpeed settings: 1 process vs 2 ZeRO-3 ranks on one machine.

    python bench/zero3_tuning.py --data DATA [--config configs/pretrain/demo.yaml] [--steps 30]
        [--variants default,persist,...] [--repo PATH] [--out runs/zero3_tuning]

Each variant is one real ``xfm.pretrain.cli`` run (the synthetic world under DATA/world, every
stream's shards from its stats.json) with ``--set`` overrides; the figure is the median
``step_time_s`` of the logged steps after the first log line (warm-up, allocation), turned into
pairs samples/s per process count. ``--repo`` runs another checkout of xfm (e.g. the commit
before a change, for an A/B) with this machine's environment.

Variants (DeepSpeed ZeRO-3 settings for a model of under a million parameters, where each
gather and reduce-scatter costs far more than the arithmetic it serves):
- ``1rank``: one process, OMP 2 threads (the reference);
- ``default``: 2 ranks, OMP 1 thread each, our generated DeepSpeed config;
- ``persist``: ``stage3_param_persistence_threshold`` 1e9: every parameter stays whole on every
  rank (no all-gather per module; gradients are still reduce-scattered, optimizer states stay
  partitioned);
- ``persist_buckets``: persist + reduce bucket 5e8 and prefetch bucket 5e8 (one reduce per step);
- ``overlap``: persist_buckets + ``overlap_comm`` (communication in a side stream);
- ``zero2``: ZeRO stage 2 for comparison;
- ``1rank_compiled``, ``compiled``, ``zero2_compiled``: ``1rank``, ``default`` and ``zero2`` with
  the encoder blocks compiled (``model.compile``); the first logged window holds the compilation
  and is left out like every variant's, so give these enough steps (``--steps 40``) for the
  recompiles of new caption lengths to end early;
- ``1rank_bf16``, ``zero2_bf16``: DeepSpeed bf16 (bf16 weights and activations, fp32 master
  weights): on a CPU with AMX the matrix multiplies run in bf16 hardware.
Writes OUT/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STREAMS = ("pairs", "regions", "text", "images")

_PERSIST = "engine.deepspeed={zero_optimization: {stage3_param_persistence_threshold: 1000000000}}"
_BUCKETS = ("engine.deepspeed={zero_optimization: {stage3_param_persistence_threshold: 1000000000, "
            "reduce_bucket_size: 500000000, stage3_prefetch_bucket_size: 500000000}}")
_OVERLAP = ("engine.deepspeed={zero_optimization: {stage3_param_persistence_threshold: 1000000000, "
            "reduce_bucket_size: 500000000, stage3_prefetch_bucket_size: 500000000, overlap_comm: true}}")
_COMPILE = "model.overrides={compile: true}"
VARIANTS = {  # name -> (processes, overrides)
    "1rank": (1, []),
    "default": (2, []),
    "persist": (2, [_PERSIST]),
    "persist_buckets": (2, [_BUCKETS]),
    "overlap": (2, [_OVERLAP]),
    "zero2": (2, ["engine.zero_stage=2"]),
    "1rank_compiled": (1, [_COMPILE]),
    "compiled": (2, [_COMPILE]),
    "zero2_compiled": (2, ["engine.zero_stage=2", _COMPILE]),
    "1rank_bf16": (1, ["engine.precision=bf16"]),
    "zero2_bf16": (2, ["engine.zero_stage=2", "engine.precision=bf16"]),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(name: str, args, repo: Path, world: Path, out: Path) -> dict:
    nproc, overrides = VARIANTS[name]
    run_dir = out / name
    sets = [f"data.tokenizer={world / 'tokenizer'}", "logging.every=5", "logging.progress=false",
            "checkpoint.every=0", f"steps={args.steps}"]
    for kind in STREAMS:
        pattern = json.loads((world / "shards" / kind / "stats.json").read_text())["pattern"]
        sets.append(f'data.{kind}.sources=[{{urls: "{pattern}"}}]')
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_port()), "-m", "xfm.pretrain.cli",
           "--config", str(REPO / args.config), "--out", str(run_dir)]
    for s in sets + overrides:
        cmd += ["--set", s]
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(max(1, args.threads // nproc)), XFM_DATA=str(world.parent),
               PYTHONPATH=str(repo))
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time_s" in r]
    times = [r["step_time_s"] for r in steps[1:]] or [r["step_time_s"] for r in steps]
    per_step = statistics.median(times)
    pairs = steps[-1]["data/pairs/samples"] / steps[-1]["step"]  # the counters sum over ranks
    return {"variant": name, "processes": nproc, "overrides": overrides, "step_time_s": per_step,
            "pairs_per_step": pairs, "pairs_samples_per_s": pairs / per_step,
            "wall_s": wall, "loss_last": steps[-1]["loss"], "repo": str(repo)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="holds world/ (a prepared synthetic world)")
    ap.add_argument("--config", default="configs/pretrain/demo.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split over the ranks)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repo", default=str(REPO), help="the xfm checkout to run (A/B of a change)")
    ap.add_argument("--out", default="runs/zero3_tuning")
    args = ap.parse_args(argv)
    world = Path(args.data).resolve() / "world"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        results.append(run_variant(name, args, Path(args.repo).resolve(), world, out))
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    base = next((r for r in results if r["variant"] == "default"), None)
    print("| variant | processes | s/step | pairs/s | vs default |\n|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['pairs_samples_per_s'] / base['pairs_samples_per_s']:.2f}" if base else "-"
        print(f"| {r['variant']} | {r['processes']} | {r['step_time_s']:.3f} | {r['pairs_samples_per_s']:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
