"""The kernel benchmarks run: the CPU memory benchmark on a tiny size (both implementations, one
subprocess each), and the GPU benchmark stops with a clear message where there is no CUDA."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_contrastive_memory_bench_measures_both_losses(tmp_path):
    out = tmp_path / "mem.jsonl"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "contrastive_memory.py"), "--sizes", "200,300", "--d", "16",
         "--fused-max-n", "200", "--mem-limit-gb", "2", "--repeated-ids", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by = {(r["impl"], r["n"]): r for r in records}
    assert set(by) == {("plain", 200), ("fused", 200), ("plain", 300), ("fused", 300)}
    for key in [("plain", 200), ("fused", 200), ("plain", 300)]:
        assert by[key]["status"] == "ok" and by[key]["seconds"] > 0 and by[key]["peak_rss_gb"] > 0, by[key]
    # same data (seeded), same loss from both implementations
    assert abs(by[("plain", 200)]["loss"] - by[("fused", 200)]["loss"]) < 1e-4
    assert by[("fused", 300)]["status"] == "extrapolated" and by[("fused", 300)]["op_peak_gb"] > 0
    assert "bytes per N^2" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_bench_exits_clearly_without_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "kernels_gpu.py")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr


def test_gpu_bench_code_path_runs_in_the_interpreter():
    # Every line the GPU run takes (correctness checks, timing loop, table) on tiny shapes on CPU,
    # so a lent GPU's minutes are not lost to a Python error; the times printed mean nothing.
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "kernels_gpu.py"), "--smoke-cpu", "--batch", "1",
         "--heads", "1", "--itc-sizes", "40", "--dtype", "fp32"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # the kernels' self-check comes first: one verdict per kernel configuration (5 attention cases,
    # each its own compiled configuration, and the contrastive size), all passing, summed up at the end
    out = res.stdout
    assert out.index("self-check (first use") < out.index("attention fwd+bwd")
    verdicts = [line.split()[0] for line in out.split("attention fwd+bwd")[0].splitlines()
                if line.strip().startswith(("PASS", "FAIL"))]
    assert verdicts == ["PASS"] * 6, out[:3000]
    assert "self-check: 6 of 6 kernel configurations agree with the reference" in out
    checks = [line for line in res.stdout.splitlines() if "|triton - sdpa|" in line or "|triton - keep-mask ref|" in line]
    assert len(checks) == 5 and "dbias" in checks[1]
    # the printed errors are small: the script's own checks compare like with like
    for line in checks:
        errors = [float(x) for x in re.findall(r"\d+\.\d+e[+-]\d+", line)]
        assert errors and max(errors) < 1e-4, line
    assert "40 check:" in res.stdout and "fused speed-up" in res.stdout
    # the closing summary table: one row per case and implementation, errors filled for triton
    summary = res.stdout.split("SUMMARY", 1)[1].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in summary if line.startswith("| ")][1:]
    assert {(r[0], r[2]) for r in rows} == {("attention", "triton"), ("attention", "sdpa"),
                                           ("contrastive", "triton"), ("contrastive", "plain")}
    assert len(rows) == 5 * 2 + 2
    assert all(float(r[7]) < 1e-4 for r in rows if r[2] == "triton")


def test_gpu_step_bench_code_path_runs_on_cpu(tmp_path):
    # the lent GPU's minutes must not be lost to a Python error: the whole path on the tiny model
    out = tmp_path / "step.jsonl"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "gpu_step.py"), "--smoke-cpu", "--variants", "torch,auto,bogus",
         "--steps", "2", "--warmup", "1", "--dtype", "fp32", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in recs] == ["torch", "auto", "bogus"]
    for r in recs[:2]:
        assert r["steps_measured"] == 1 and r["step_ms"] > 0 and len(r["losses"]) == 2
    # same weights, batches and seeds: on CPU auto is the reference, so the losses are equal
    assert recs[0]["losses"] == recs[1]["losses"]
    assert "must be torch, triton or auto" in recs[2]["error"]  # one bad variant does not stop the rest
    assert "| torch |" in res.stdout and "| bogus | failed" in res.stdout


def test_attention_overhead_bench_exits_clearly_without_cuda():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "attention_overhead.py")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr


def test_pipeline_speed_bench_runs_every_measurement_on_cpu(tmp_path):
    out = tmp_path / "pipe.jsonl"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "pipeline_speed.py"), "--size", "tiny",
                          "--repeats", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["what"] for r in recs] == ["embed_images", "embed_texts", "match", "retrieve_rerank16"]
    assert all(r["items_per_s"] > 0 and r["device"] == "cpu" for r in recs)
    assert recs[0]["items"] == 96 and recs[1]["items"] == 192 and recs[3]["gallery"] == 96
