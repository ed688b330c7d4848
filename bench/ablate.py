"""Do X-FM's two pretraining techniques matter? Pretrain the same model four ways on the same
data and step budget - stop-gradient of the language states into the fusion encoder on/off x
VL-guided masked image modelling on/off (model config ``stop_text_grad`` and ``mim``) - for
each seed, then measure each run downstream the way the demo does (zero-shot ITC retrieval
scored by caption truth, and the fine-tuning tasks through xfm-finetune), and print one table:
mean, spread (max - min) and every seed's value per variant.

    python bench/ablate.py --data data --runs runs/ablate --seeds 0,1 [--steps 300] [--nproc 2]
        [--pretrain-config configs/pretrain/demo.yaml] [--tasks nlvr2,grounding,...]

Without MIM the images stream has no objective, so those runs use the config's step groups
without it (the paper's [[text], [regions, images, pairs]] becomes [[text], [regions, pairs]];
the demo's [[pairs]] stays; same steps, same data for the other streams). Every run directory is
reused when it exists (re-running resumes). Writes RUNS/ablation.json and RUNS/ablation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import demo_run  # noqa: E402

VARIANTS = {  # name -> (stop_text_grad, mim)
    "xfm (stop-grad + MIM)": (True, True),
    "no stop-grad": (False, True),
    "no MIM": (True, False),
    "neither": (False, False),
}


def variant_overrides(stop_text_grad: bool, mim: bool, step_groups: list[list[str]]) -> list[str]:
    """--set values of one variant; ``step_groups``: the pretraining config's."""
    sets = [f"model.overrides={{stop_text_grad: {str(stop_text_grad).lower()}, mim: {str(mim).lower()}}}"]
    if not mim:
        kept = [[s for s in g if s != "images"] for g in step_groups]
        kept = [g for g in kept if g]
        if kept != step_groups:
            sets.append("streams.step_groups=[" + ", ".join("[" + ", ".join(g) + "]" for g in kept) + "]")
    return sets


def run_variant(name: str, seed: int, args, world: Path, env: dict) -> dict:
    stop, mim = VARIANTS[name]
    slug = f"stopgrad{int(stop)}_mim{int(mim)}_seed{seed}"
    runs = Path(args.runs).resolve() / slug
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    export = demo_run.stage_pretrain(world, runs / "pretrain", args.pretrain_config, args.steps,
                                     args.nproc, variant_overrides(stop, mim, args.step_groups) + [f"seed={seed}"],
                                     env)
    zeroshot, _ = demo_run.stage_zeroshot(export, world, runs / "zeroshot.json")
    finetuned = {}
    for task in [t for t in args.tasks.split(",") if t]:
        ev = demo_run.stage_finetune(task, export, runs, args.finetune_nproc, [f"seed={seed}"], env)
        if ev is not None:
            finetuned[task] = ev
    extra = demo_run.retrieval_eval_json(finetuned["retrieval"], zeroshot) if "retrieval" in finetuned else None
    metrics = demo_run.collect(zeroshot, finetuned, world, extra)
    demo_run.log(f"  {name} seed {seed}: done in {time.time() - t0:.0f} s")
    return metrics


def table(results: dict, seeds: list[int]) -> str:
    """Markdown: one row per metric, per variant 'mean ± half-spread (seed values)'."""
    names = list(results)
    metrics = [m for m in next(iter(results.values()))[seeds[0]] if any(
        m in results[n][s] for n in names for s in seeds)]
    head = "| metric | chance | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for m in metrics:
        chance = next(results[n][s][m]["chance"] for n in names for s in seeds if m in results[n][s])
        cells = []
        for n in names:
            vals = [results[n][s][m]["value"] for s in seeds if m in results[n][s]]
            if not vals:
                cells.append("-")
                continue
            cells.append(f"{np.mean(vals):.3f} ± {(max(vals) - min(vals)) / 2:.3f} "
                         f"({', '.join(f'{v:.3f}' for v in vals)})")
        lines.append(f"| {m} | {chance:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("XFM_DATA", "data"))
    ap.add_argument("--runs", default=os.path.join(os.environ.get("XFM_RUNS", "runs"), "ablate"))
    ap.add_argument("--size", default="demo", help="world size when the world must be made")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the config's)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--finetune-nproc", type=int, default=1)
    ap.add_argument("--pretrain-config", default="configs/pretrain/demo.yaml")
    ap.add_argument("--tasks", default="nlvr2,grounding,vqa",
                    help="fine-tuning tasks run for every variant and seed ('' for zero-shot only)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="subset of: " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for n in names:
        if n not in VARIANTS:
            sys.exit(f"ablate: unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    data = Path(args.data).resolve()
    from xfm.pretrain.config import load_pretrain_config
    args.step_groups = load_pretrain_config(args.pretrain_config).streams.step_groups
    env = dict(os.environ, XFM_DATA=str(data), DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
    world = demo_run.stage_world(data, args.size)
    results = {n: {} for n in names}
    for seed in seeds:          # seed-major: a partial run already covers every variant once
        for n in names:
            results[n][seed] = run_variant(n, seed, args, world, env)
    md = table(results, seeds)
    out = Path(args.runs).resolve()
    (out / "ablation.json").write_text(json.dumps(
        {"seeds": seeds, "steps": args.steps, "config": args.pretrain_config,
         "results": {n: {str(s): r for s, r in v.items()} for n, v in results.items()}}, indent=2))
    (out / "ablation.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
