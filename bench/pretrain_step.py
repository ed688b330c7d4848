"""Pretraining throughput of the tiny config: the whole step at 1 and 2 processes, and the data
loaders alone (so we know whether the loader or the model is the bottleneck).

    python bench/pretrain_step.py [--data XFM_DATA_DIR] [--steps 12] [--config configs/pretrain/tiny.yaml]

Without ``--data`` a synthetic world (size "test") is prepared in a temporary directory. Each
engine run is a real ``xfm-pretrain`` under ``torchrun`` (ZeRO-3, fp32, CPU ``gloo`` here; on a
GPU machine set ``--precision bf16``); the figure is the mean over the steps after the first
``--skip`` (start-up, first shuffle-buffer fills) of the samples/s the run logs, summed over the
four streams and both ranks. The loader figure is ``measure_loader_throughput`` per stream in
one process, with no model attached. Prints one JSON line per measurement and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_run(config: str, nproc: int, steps: int, skip: int, env: dict, precision: str, work: Path) -> dict:
    out = work / f"run_{nproc}proc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_port()), "-m", "xfm.pretrain.cli", "--config", config, "--out", str(out), "--steps", str(steps),
           "--set", f"engine.precision={precision}", "--set", "logging.every=1", "--set", "checkpoint.every=0",
           "--set", "logging.progress=false"]
    # the run's own output goes straight to our stderr: a run cut short (a time limit on a lent
    # GPU) still shows how far it got
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); its output is above")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "event" not in r and r["step"] > skip]
    per_stream = {}
    for r in recs:
        for k, v in r.items():
            if k.startswith("samples_per_s/"):
                per_stream.setdefault(k.split("/", 1)[1], []).append(v)
    streams = {s: sum(v) / len(v) for s, v in per_stream.items()}
    return {"what": "engine", "processes": nproc, "steps_measured": len(recs),
            "step_time_s": sum(r["step_time_s"] for r in recs) / len(recs),
            "data_wait_s": sum(r["data_wait_s"] for r in recs) / len(recs),
            "samples_per_s": sum(streams.values()), "samples_per_s_by_stream": streams}


def loader_run(config: str, batches: int, env: dict) -> list[dict]:
    code = (
        "import json,sys\n"
        "from xfm.pretrain.config import load_pretrain_config\n"
        "from xfm.pretrain.data import measure_loader_throughput\n"
        f"cfg = load_pretrain_config({config!r})\n"
        "for s in cfg.data.enabled:\n"
        f"    r = measure_loader_throughput(cfg.data, s, batches={batches}, seed=cfg.seed)\n"
        "    print(json.dumps({'what': 'loader', **{k: r[k] for k in ('stream','num_workers','batches','samples_per_s','tokens_per_s')}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "pretrain" / "tiny.yaml"))
    p.add_argument("--data", help="XFM_DATA directory holding world/ (default: prepare one in a temp dir)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the means")
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--procs", default="1,2")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="xfm_bench_") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else work / "data"
        if not args.data:
            from xfm.data_prep.synth import prepare_world

            prepare_world(data / "world", seed=0, size="test")
        env = dict(os.environ, XFM_DATA=str(data), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
        rows = loader_run(args.config, args.loader_batches, env)
        for r in rows:
            print(json.dumps(r), flush=True)
        for n in [int(x) for x in args.procs.split(",")]:
            rows.append(engine_run(args.config, n, args.steps, args.skip, env, args.precision, work))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'measurement':<34}{'samples/s':>12}")
    for r in rows:
        if r["what"] == "loader":
            print(f"{'loader alone: ' + r['stream'] + ' (' + str(r['num_workers']) + ' workers)':<34}"
                  f"{r['samples_per_s']:>12.1f}")
        else:
            print(f"{'engine step, ' + str(r['processes']) + ' process(es), 4 streams':<34}{r['samples_per_s']:>12.1f}"
                  f"   (step {r['step_time_s']:.2f} s, data wait {r['data_wait_s']:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
