"""The end-to-end demo, stage by stage; every stage reuses its finished output when re-run.

  1 world      synthetic world + xfm-prep shards + tokenizer            DATA/world
  2 pretrain   ZeRO-3 pretraining (NPROC ranks; torchrun when > 1)      RUNS/pretrain
  3 export     consolidated model directory                             RUNS/pretrain/export
  4 zero-shot  ITC retrieval of the export on the test pictures         RUNS/zeroshot.json
  5 finetune   each task through xfm-finetune with its configs/demo/finetune_TASK.yaml
  6 results    DATA/demo/results.json {metric: {"value", "chance"}}, loss_curves.png,
               retrieval_examples.png

    python scripts/demo_run.py [--data data] [--runs runs/demo] [--size demo] [--steps N]
        [--nproc 1] [--pretrain-config configs/pretrain/demo.yaml] [--tasks retrieval,vqa,...]
        [--finetune-jobs 2] [--finetune-set TASK:key=value ...]

The fine-tuning tasks run `--finetune-jobs` at a time, the cores shared among them: the demo
model is too small for one process to keep two cores busy (NLVR2: 85 ms a step at 2 threads,
143 ms at 1), so two one-thread jobs side by side finish the tasks sooner than one after another.
The longest tasks (NLVR2, classification, grounding) start first.

Every metric is a fraction in [0, 1], next to the score of a predictor that ignores the input
(demo_chance.py) or, for retrieval, of a random ranking. A stage counts as finished when its
output exists (export/, zeroshot.json, finetune/TASK/eval.json): delete it to redo the stage.
A fine-tuning task that fails is reported and the others still run; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import demo_chance  # noqa: E402

STREAMS = ("pairs", "regions", "text", "images")
# task -> (metric key in eval.json, divisor to a fraction, result name, chance function)
TASKS = {
    "retrieval": ("img_r1", 100.0, "finetuned_retrieval_t2i_plain_r1", None),
    "vqa": ("acc", 100.0, "vqa_acc", demo_chance.vqa_chance),
    "nlvr2": ("acc", 1.0, "nlvr2_acc", demo_chance.nlvr2_chance),
    "grounding": ("acc", 1.0, "grounding_acc@0.5", demo_chance.grounding_chance),
    "image_cls": ("top1", 100.0, "classification_top1", demo_chance.classification_chance),
    "glue": ("accuracy", 1.0, "glue_synthrte_acc", demo_chance.glue_chance),
}
DEFAULT_TASKS = ",".join(TASKS)
# started first, in this order, when tasks run side by side, so that the job slots finish close
# together (measured on a clean clone: NLVR2 432 s, classification 326, grounding 311, retrieval
# 189, VQA 144, SynthRTE 113; with classification started after retrieval the last slot ended ~80 s
# later than longest-first)
LONGEST_FIRST = ("nlvr2", "image_cls", "grounding")


def log(msg: str) -> None:
    print(msg, flush=True)


class StageFailed(RuntimeError):
    pass


def threads_env(env: dict, nproc: int) -> dict:
    """Each of `nproc` processes gets an equal share of the cores (OMP_NUM_THREADS), unless the
    caller set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return dict(env, OMP_NUM_THREADS=str(max(1, cores // nproc)))


def run(cmd: list[str], env: dict, logfile: Path | None = None) -> None:
    log("  $ " + " ".join(cmd))
    if logfile is None:
        subprocess.run(cmd, env=env, check=True, cwd=REPO)
        return
    with open(logfile, "a") as f:
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = logfile.read_text()[-3000:]
        raise StageFailed(f"command failed (exit {proc.returncode}), log {logfile}:\n{tail}")


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m"]


# ---------------------------------------------------------------------------- stages
def stage_world(data: Path, size: str) -> Path:
    from xfm.data_prep.synth import prepare_world

    world = data / "world"
    try:
        prepare_world(world, seed=0, size=size)   # makes the world, then only the steps not done yet
    except ValueError as e:  # a world this generator did not make (other size, earlier format)
        raise StageFailed(str(e)) from None
    return world


def stage_pretrain(world: Path, run_dir: Path, cfg: str, steps: int | None, nproc: int,
                   overrides: list[str], env: dict) -> Path:
    export = run_dir / "export"
    if (export / "config.json").exists() or any(export.glob("*.safetensors")):
        log(f"  reusing {export}")
        return export
    sets = [f"data.tokenizer={world / 'tokenizer'}"]
    for kind in STREAMS:
        pattern = json.loads((world / "shards" / kind / "stats.json").read_text())["pattern"]
        sets.append(f'data.{kind}.sources=[{{urls: "{pattern}"}}]')
    cmd = launcher(nproc) + ["xfm.pretrain.cli", "--config", cfg, "--out", str(run_dir)]
    if steps:
        cmd += ["--steps", str(steps)]
    for s in sets + overrides:
        cmd += ["--set", s]
    if (run_dir / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    run(cmd, threads_env(env, nproc))
    tmp = run_dir / "export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    run([sys.executable, "-m", "xfm.pretrain.export", str(run_dir), "--out", str(tmp)], env)
    tmp.rename(export)
    return export


def stage_zeroshot(export: Path, world: Path, out: Path):
    sys.path.insert(0, str(REPO / "scripts"))
    import demo_eval

    cached = out.with_suffix(".examples.npz")
    if out.exists() and cached.exists():
        log(f"  reusing {out}")
        import numpy as np
        z = np.load(cached, allow_pickle=False)
        ex = {"sim": z["sim"], "correct": z["correct"], "owner": z["owner"],
              "captions": list(z["captions"]), "images": list(z["images"])}
        return json.loads(out.read_text()), ex
    result, examples = demo_eval.evaluate(export, world, "test", random_init=True)
    import numpy as np
    np.savez(cached, sim=examples["sim"], correct=examples["correct"], owner=examples["owner"],
             captions=np.array(examples["captions"]), images=np.array(examples["images"]))
    out.write_text(json.dumps(result, indent=2))
    return result, examples


def stage_finetune(name: str, export: Path, runs: Path, nproc: int, extra: list[str], env: dict,
                   jobs: int = 1):
    out = runs / "finetune" / name
    result = out / "eval.json"
    if result.exists():
        log(f"  reusing {result}")
        return json.loads(result.read_text())
    cfg = REPO / "configs" / "demo" / f"finetune_{name}.yaml"
    if not cfg.exists():
        raise StageFailed(f"{cfg} does not exist: every demo task needs its demo recipe")
    out.mkdir(parents=True, exist_ok=True)
    cmd = launcher(nproc) + ["xfm.finetune.cli", "--task", name, "--config", str(cfg),
                             "--checkpoint", str(export), "--out", str(out)]
    for s in extra:
        cmd += ["--set", s]
    if (out / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    run(cmd, threads_env(env, nproc * jobs), logfile=out / "demo.log")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------- results
def collect(zeroshot: dict, finetuned: dict, world: Path, extra_retrieval: dict | None,
            missing: list | None = None) -> dict:
    """results.json's table; a task whose eval.json lacks its metric is appended to `missing`."""
    res = {}
    z, c = zeroshot["trained"], zeroshot["chance"]
    for kind, tag in (("consistent", "consistent"), ("plain", "plain")):
        for direction, key in (("t2i", "img"), ("i2t", "txt")):
            for k in (1, 5):
                res[f"zeroshot_{direction}_{tag}_r{k}"] = {
                    "value": z[kind][f"{key}_r{k}"], "chance": c[kind][f"{key}_r{k}"]}
    if extra_retrieval:
        for name, v in extra_retrieval.items():
            res[name] = v
    for name, ev in finetuned.items():
        key, scale, label, chance_fn = TASKS[name]
        metrics = ev["metrics"]
        if key not in metrics:
            log(f"  {name}: eval.json has no {key!r} (has {sorted(metrics)}); not reported")
            if missing is not None:
                missing.append(name)
            continue
        if name == "retrieval":
            continue   # scored by finetuned_retrieval() below, chance from the same matrix
        res[label] = {"value": float(metrics[key]) / scale,
                      "chance": float(chance_fn(world, ev.get("split", "test")))}
    return res


def finetuned_retrieval(runs: Path, world: Path):
    """Consistent and plain text->image R@1 (ITC) of the fine-tuned retrieval model's best/."""
    best = runs / "finetune" / "retrieval" / "best"
    if not best.exists():
        return None
    import demo_eval
    try:
        r, _ = demo_eval.evaluate(best, world, "test")
    except Exception as e:  # a best/ layout XFM.from_pretrained cannot read: say so, keep going
        log(f"  fine-tuned retrieval: cannot score {best} with ITC ({e}); plain R@1 from eval.json only")
        return None
    return {"finetuned_retrieval_t2i_consistent_r1_itc": {
                "value": r["trained"]["consistent"]["img_r1"], "chance": r["chance"]["consistent"]["img_r1"]},
            "finetuned_retrieval_t2i_plain_r1_itc": {
                "value": r["trained"]["plain"]["img_r1"], "chance": r["chance"]["plain"]["img_r1"]}}


def retrieval_eval_json(ev: dict, zeroshot: dict) -> dict:
    m = ev["metrics"]
    return {"finetuned_retrieval_t2i_plain_r1": {"value": float(m["img_r1"]) / 100,
                                                 "chance": zeroshot["chance"]["plain"]["img_r1"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("XFM_DATA", "data"))
    ap.add_argument("--runs", default=os.path.join(os.environ.get("XFM_RUNS", "runs"), "demo"))
    ap.add_argument("--size", default="demo", help="world size: test | demo | small")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the config's)")
    ap.add_argument("--nproc", type=int, default=1, help="pretraining ranks (ZeRO-3 either way)")
    ap.add_argument("--finetune-nproc", type=int, default=1)
    ap.add_argument("--finetune-jobs", type=int, default=2,
                    help="fine-tuning tasks run side by side, the cores shared among them")
    ap.add_argument("--pretrain-config", default="configs/pretrain/demo.yaml")
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated fine-tuning tasks")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="TASK:KEY=VALUE",
                    help="override for one task (TASK:key=value) or every task (*:key=value)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    data, runs = Path(args.data).resolve(), Path(args.runs).resolve()
    out = data / "demo"
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XFM_DATA=str(data), DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"demo: unknown task {t!r}; known: {', '.join(TASKS)}")
    if args.finetune_jobs < 1:
        sys.exit(f"demo: --finetune-jobs must be >= 1, got {args.finetune_jobs}")
    timings, t0 = {}, time.time()

    def timed(name, fn, *a, **kw):
        start = time.time()
        value = fn(*a, **kw)
        timings[name] = round(time.time() - start, 1)
        return value

    log(f"== 1/6 synthetic world ({args.size}) + shards + tokenizer -> {data / 'world'}")
    world = timed("world", stage_world, data, args.size)
    log(f"== 2-3/6 pretraining ({args.nproc} ranks, ZeRO-3) + export -> {runs / 'pretrain'}")
    export = timed("pretrain", stage_pretrain, world, runs / "pretrain", args.pretrain_config,
                   args.steps, args.nproc, args.pretrain_set, env)
    log("== 4/6 zero-shot retrieval on the test pictures (ITC)")
    zeroshot, examples = timed("zeroshot", stage_zeroshot, export, world, runs / "zeroshot.json")
    log(f"== 5/6 fine-tuning ({args.finetune_jobs} at a time)")
    finetuned, failed = {}, []

    def finetune(name):
        extra = [s.split(":", 1)[1] for s in args.finetune_set
                 if s.split(":", 1)[0] in (name, "*")]
        try:
            ev = timed(f"finetune/{name}", stage_finetune, name, export, runs, args.finetune_nproc, extra, env,
                       jobs=args.finetune_jobs)
        except StageFailed as e:   # report it, run the other tasks, exit non-zero at the end
            log(f"  {name}: FAILED: {e}")
            failed.append(name)
            return
        finetuned[name] = ev
        log(f"  {name}: {ev['split']} {json.dumps(ev['metrics'])[:300]}")

    order = sorted(tasks, key=lambda t: LONGEST_FIRST.index(t) if t in LONGEST_FIRST else len(LONGEST_FIRST))
    with ThreadPoolExecutor(max_workers=args.finetune_jobs) as pool:
        list(pool.map(finetune, order))
    finetuned = {t: finetuned[t] for t in tasks if t in finetuned}   # the table keeps the task order
    failed = [t for t in tasks if t in failed]
    log("== 6/6 results")
    extra_ret = None
    if "retrieval" in finetuned:
        extra_ret = retrieval_eval_json(finetuned["retrieval"], zeroshot)
        extra_ret.update(timed("finetune/retrieval_itc", finetuned_retrieval, runs, world) or {})
    results = collect(zeroshot, finetuned, world, extra_ret, failed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    timings["total"] = round(time.time() - t0, 1)
    (out / "timings.json").write_text(json.dumps(
        {"seconds": timings, "failed_tasks": failed}, indent=2) + "\n")
    if not args.no_plots:
        import demo_plots
        demo_plots.loss_curves(runs, out / "loss_curves.png")
        demo_plots.retrieval_examples(examples, out / "retrieval_examples.png")
    width = max(len(k) for k in results)
    log(f"{'metric':{width}s}   value  chance")
    for k, v in results.items():
        log(f"{k:{width}s}  {v['value']:6.3f}  {v['chance']:6.3f}")
    if failed:
        log(f"FAILED: {', '.join(failed)} (logs under {runs / 'finetune'})")
    log(f"wrote {out / 'results.json'}" + ("" if args.no_plots else
        f", {out / 'loss_curves.png'}, {out / 'retrieval_examples.png'}") + f" ({timings['total']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StageFailed as e:  # a stage before fine-tuning: nothing after it can run
        sys.exit(f"demo: {e}")
