"""The 2-rank ZeRO-3 tiny run on the synthetic world's shards (CPU, gloo), end to end.

What must hold: losses finite and falling; every partitioned parameter split in halves over the
two ranks; 5 pairs shards over 2 ranks (one corrupt) neither hang nor stop the run, and the bad
shard is reported; a run stopped with --stop-at, resumed, SIGKILLed between checkpoints and
resumed again logs exactly the losses of the uninterrupted run (another schedule length is
refused); the exported model computes what the live ZeRO-3 engine computes.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from fixtures_pretrain import (CKPT_EVERY, REPO, STEPS, kill_tree, launch_pretrain, popen_pretrain,
                               pretrain_args, pretrain_env, tail, torchrun_cmd, wait_for_step)
from xfm.runtime.metrics import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def step_losses(run_dir) -> dict[int, dict]:
    """Last metrics record per step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for rec in read_metrics(run_dir):
        if "event" not in rec:
            out[rec["step"]] = rec
    return out


def test_losses_finite_and_falling(tiny_run):
    recs = step_losses(tiny_run.run_dir)
    assert sorted(recs) == list(range(1, STEPS + 1))
    loss_keys = [k for k in recs[1] if k.startswith("loss")]
    # every stream and objective of the paper's mix is there
    for k in ("loss/text/text_mlm", "loss/pairs/itc", "loss/pairs/itm", "loss/pairs/mlm", "loss/pairs/mim",
              "loss/regions/region_itc", "loss/regions/bbox_giou", "loss/images/mim"):
        assert k in loss_keys, sorted(loss_keys)
    for step, rec in recs.items():
        for k in loss_keys:
            assert math.isfinite(rec[k]), (step, k, rec[k])
    first = sum(recs[s]["loss"] for s in range(1, 5)) / 4
    last = sum(recs[s]["loss"] for s in range(STEPS - 3, STEPS + 1)) / 4
    assert last < 0.93 * first, (first, last)
    assert recs[STEPS]["loss/text"] < recs[1]["loss/text"]
    # the observability contract: lr schedule, temperature, grad norms per optimizer step, throughput
    rec = recs[STEPS]
    per_stream = [f"{what}/{s}" for what in ("samples_per_s", "tokens_per_s")
                  for s in ("text", "regions", "images", "pairs")]
    for k in ("lr", "temp", "grad_norm/text", "grad_norm/regions+images+pairs", "step_time_s", "data_wait_s",
              "mem_mb", "loss/text", "loss/regions", "loss/images", "loss/pairs", *per_stream):
        assert k in rec and math.isfinite(rec[k]) and rec[k] >= 0, k
    assert rec["samples_per_s/pairs"] > 0 and rec["tokens_per_s/text"] > 0 and rec["mem_mb"] > 0
    assert recs[2]["lr"] > recs[1]["lr"]  # warm-up
    assert recs[STEPS]["lr"] < recs[STEPS // 2]["lr"]  # then the linear decay
    start = [r for r in read_metrics(tiny_run.run_dir) if r.get("event") == "start"][0]
    assert start["world_size"] == 2 and start["zero_stage"] == 3
    # the start line: world size, ZeRO stage, parameter count and this rank's shard of it
    line = re.search(r"xfm-pretrain: world size 2 \(torchrun\), ZeRO stage 3, fp32, parameters ([\d,]+) .*"
                     r"per-rank shard ([\d,]+) \((\d+\.\d)%\)", tiny_run.proc.stdout)
    assert line, tiny_run.proc.stdout[-2000:]
    total, shard = (int(line.group(i).replace(",", "")) for i in (1, 2))
    assert total == start["params"] and shard == start["local_params"] and 49.0 < float(line.group(3)) < 51.0
    # rank 0's progress bar ran to the end
    assert "pretrain: 100%" in tiny_run.proc.stderr and f"{STEPS}/{STEPS}" in tiny_run.proc.stderr


def test_each_rank_holds_half_of_every_parameter(tiny_run):
    ranks = [json.loads((tiny_run.run_dir / "partitions" / f"rank{r:05d}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, (full, local0) in ranks[0]["params"].items():
        full1, local1 = ranks[1]["params"][name]
        assert full == full1
        # ZeRO-3: each rank stores ceil(numel / 2) elements (the last slice padded)
        assert local0 == local1 == math.ceil(full / 2), (name, full, local0, local1)
    total = ranks[0]["total"]
    assert total > 400_000  # the whole tiny model, not a stand-in
    for r in ranks:
        assert abs(r["local"] - total / 2) < 0.01 * total


def test_uneven_and_corrupt_shards_neither_hang_nor_stop(tiny_run):
    recs = step_losses(tiny_run.run_dir)
    # the run finished all steps although rank 0 reads 3 pairs shards and rank 1 two, and the
    # images stream has a single shard for two ranks
    assert max(recs) == STEPS
    bad = max(r.get("data/pairs/bad_shard_count", 0) for r in recs.values())
    assert bad >= 1, "the corrupt pairs shard was not reported"
    out = tiny_run.proc.stdout + tiny_run.proc.stderr
    assert "pairs-corrupt.tar" in out  # named in the warning


def test_region_rows_differ_across_ranks_and_none_is_dropped(tiny_run):
    """Region ITC gathers one feature row per region from every rank, and the row count varies
    with the pictures: the run must gather every rank's rows as they are (xfm.distributed pads
    and trims), not cut the batches to a common size."""
    lines = [[json.loads(x) for x in (tiny_run.run_dir / "plans" / f"rank{r:05d}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    rows = [{(x["step"], x["micro"]): x["rows"] for x in ln if x.get("stream") == "regions"} for ln in lines]
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == STEPS
    unequal = [k for k in rows[0] if rows[0][k] != rows[1][k]]
    # the synthetic pictures carry 1-3 boxes + a caption row: ranks do differ in most steps
    assert len(unequal) >= STEPS // 3, (rows[0], rows[1])
    recs = step_losses(tiny_run.run_dir)
    assert not any(k.startswith("data/region_rows") for r in recs.values() for k in r)
    for rec in recs.values():
        assert math.isfinite(rec["loss/regions/region_itc"]) and rec["loss/regions/region_itc"] > 0


def assert_same_losses(got_dir, ref_dir, steps) -> None:
    ref, got = step_losses(ref_dir), step_losses(got_dir)
    for step in steps:
        for k in ref[step]:
            if k.startswith("loss") or k in ("lr", "temp") or k.startswith("grad_norm"):
                assert got[step][k] == ref[step][k], (step, k, got[step][k], ref[step][k])


def test_stop_at_then_sigkill_then_resume_reproduce_the_uninterrupted_losses(tiny_run, pretrain_data, tmp_path,
                                                                            monkeypatch, capsys):
    """``--steps 24 --stop-at 12`` ends at 12 (checkpoint, exit 0) with the schedule of 24; a
    resume asking for 30 steps stops naming both lengths and the override; ``--steps 24
    --resume`` continues, is SIGKILLed between checkpoints, and a second resume (started as
    ``python -m xfm.pretrain``) finishes: steps 13-24 log exactly the uninterrupted run's values."""
    run_dir = tmp_path / "stopped"
    stop_at = CKPT_EVERY + 4  # not a checkpoint step: --stop-at saves on its own
    args = pretrain_args(pretrain_data, run_dir)
    first = launch_pretrain(pretrain_data, args + ["--stop-at", str(stop_at)])
    assert first.returncode == 0, tail(first)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{stop_at:08d}"
    assert max(step_losses(run_dir)) == stop_at
    stopped = [r for r in read_metrics(run_dir) if r.get("event") == "stopped"]
    assert stopped[-1]["reason"] == "stop_at" and stopped[-1]["step"] == stop_at and stopped[-1]["steps"] == STEPS
    assert f"stopped at step {stop_at} of {STEPS}" in first.stdout
    assert_same_losses(run_dir, tiny_run.run_dir, range(1, stop_at + 1))  # the same schedule from step 1

    # another schedule length: refused before anything starts, naming both values and the override
    from xfm.pretrain.cli import main

    monkeypatch.setenv("XFM_DATA", str(pretrain_data.xfm_data))
    longer = [a for a in args]
    longer[longer.index("--steps") + 1] = str(STEPS + 6)
    assert main(longer + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"total_steps={STEPS} in" in err and f"{STEPS + 6} requested" in err, err
    assert "--set optim.reschedule=true" in err and "--stop-at" in err, err

    proc = popen_pretrain(pretrain_data, args + ["--resume"], log=tmp_path / "resumed.log")
    kill_after = 2 * CKPT_EVERY + 1  # the checkpoint of step 16 exists, the next one (24) does not
    try:
        wait_for_step(proc, run_dir, kill_after, tmp_path / "resumed.log")
    finally:
        kill_tree(proc)  # launcher and both ranks, SIGKILL: no chance to save
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{2 * CKPT_EVERY:08d}"
    assert 2 * CKPT_EVERY < max(step_losses(run_dir)) < STEPS

    final = launch_pretrain(pretrain_data, args + ["--resume"], module="xfm.pretrain")
    assert final.returncode == 0, tail(final)
    starts = [r for r in read_metrics(run_dir) if r.get("event") == "start"]
    assert [(s["resumed"], s["start_step"], s["steps"]) for s in starts] == \
        [(False, 0, STEPS), (True, stop_at, STEPS), (True, 2 * CKPT_EVERY, STEPS)]
    assert sorted(step_losses(run_dir)) == list(range(1, STEPS + 1))
    assert_same_losses(run_dir, tiny_run.run_dir, range(stop_at + 1, STEPS + 1))


PROBE = r'''
import sys, torch
from xfm.config import load_config
from xfm.pretrain.config import PretrainConfig
from xfm.pretrain.trainer import setup_run
run_dir, out = sys.argv[1], sys.argv[2]
cfg = load_config(f"{run_dir}/config.yaml", PretrainConfig)
run = setup_run(cfg, resume=True, write_config=False)  # the run's final checkpoint, ZeRO-3 sharded
m = run.model
run.engine.eval()
g = torch.Generator().manual_seed(0)
ids = torch.randint(4, m.config.text.vocab_size, (3, 9), generator=g)
mask = torch.ones(3, 9, dtype=torch.long); mask[1, 6:] = 0
pixels = torch.randn(3, 3, m.config.vision.image_size, m.config.vision.image_size, generator=g)
with torch.no_grad():  # each submodule call gathers its parameters (ZeRO-3 hooks)
    t = m.encode_text(ids, mask)
    v = m.encode_image(pixels)
    fi, ft = m.features(v, t)
    fused = m.fuse(v, torch.ones(v.shape[:2], dtype=torch.long), t, mask)
    outs = {"ids": ids, "mask": mask, "pixels": pixels, "text": t, "image": v, "img_feat": fi,
            "txt_feat": ft, "itm": m.itm_logits(fused), "temp": m.heads.temp()}
if run.info.rank == 0:
    torch.save(outs, out)
run.streams.close()
torch.distributed.barrier()
torch.distributed.destroy_process_group()
from xfm.runtime.process import exit_without_teardown
exit_without_teardown(0)  # as xfm-pretrain: gloo threads can abort the interpreter's teardown
'''


@pytest.fixture(scope="module")
def exported(tiny_run, pretrain_data, tmp_path_factory):
    """``xfm-export RUN --out DIR`` of the tiny run's final checkpoint."""
    export_dir = tmp_path_factory.mktemp("export") / "xfm_tiny"
    proc = subprocess.run([sys.executable, "-m", "xfm.pretrain.export", str(tiny_run.run_dir), "--out",
                           str(export_dir)], cwd=REPO, env=pretrain_env(pretrain_data),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, tail(proc)
    return export_dir


def test_export_matches_the_live_engine(tiny_run, exported, pretrain_data, tmp_path):
    export_dir = exported
    assert (export_dir / "model.safetensors").exists() and (export_dir / "config.yaml").exists()

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    probe_out = tmp_path / "probe.pt"
    live = subprocess.run(torchrun_cmd(2, [str(script), str(tiny_run.run_dir), str(probe_out)]), cwd=REPO,
                          env=pretrain_env(pretrain_data), capture_output=True, text=True, timeout=300)
    assert live.returncode == 0, tail(live)
    ref = torch.load(probe_out)

    from xfm.model import XFM

    model = XFM.from_pretrained(export_dir).eval()
    with torch.no_grad():
        t = model.encode_text(ref["ids"], ref["mask"])
        v = model.encode_image(ref["pixels"])
        fi, ft = model.features(v, t)
        fused = model.fuse(v, torch.ones(v.shape[:2], dtype=torch.long), t, ref["mask"])
        got = {"text": t, "image": v, "img_feat": fi, "txt_feat": ft, "itm": model.itm_logits(fused),
               "temp": model.heads.temp()}
    for k, val in got.items():
        torch.testing.assert_close(val, ref[k], rtol=1e-5, atol=1e-5, msg=k)
    # the exported weights are the trained ones (the temperature moved away from its init)
    assert abs(float(model.heads.temp().detach()) - model.config.temp_init) > 1e-3


def test_init_from_the_export_starts_where_the_run_ended(tiny_run, exported, pretrain_data, tmp_path):
    """model.init_from loads full weights into the ZeRO-3 shards (rank 0 reads, shapes broadcast).
    Started with the `deepspeed` launcher (the other runs use torchrun, the SLURM test srun)."""
    run_dir = tmp_path / "warm"
    args = pretrain_args(pretrain_data, run_dir, steps=1, extra=[
        "--set", f"model.init_from=[{exported}]", "--set", "optim.warmup_steps=1000"])
    proc = launch_pretrain(pretrain_data, args, launcher="deepspeed")
    assert proc.returncode == 0, tail(proc)
    assert "xfm-pretrain: world size 2 (deepspeed), ZeRO stage 3" in proc.stdout, tail(proc)
    first = step_losses(run_dir)[1]
    ref = step_losses(tiny_run.run_dir)
    assert first["loss"] < 0.9 * ref[1]["loss"], (first["loss"], ref[1]["loss"])  # not a fresh model
    from xfm.model import XFM

    temp = float(XFM.from_pretrained(exported).heads.temp().detach())
    assert abs(first["temp"] - temp) < 1e-4  # lr 1e-6 in the first step: practically unchanged


def test_zero_stage_2_on_two_ranks_trains_from_the_same_start(tiny_run, pretrain_data, tmp_path):
    """ZeRO 0-2 broadcast every parameter at engine start through a byte view that a 0-dim
    parameter (the temperature) cannot take; the run must start anyway and see the same first
    loss as the ZeRO-3 run of the same config (same weights, same batches, fp32)."""
    run_dir = tmp_path / "zero2"
    args = pretrain_args(pretrain_data, run_dir, steps=3, extra=["--set", "engine.zero_stage=2"])
    proc = launch_pretrain(pretrain_data, args)
    assert proc.returncode == 0, tail(proc)
    assert "ZeRO stage 2" in proc.stdout, tail(proc)
    got, ref = step_losses(run_dir), step_losses(tiny_run.run_dir)
    assert got[1]["loss"] == pytest.approx(ref[1]["loss"], rel=1e-5), (got[1], ref[1])
    assert all(math.isfinite(got[s]["loss"]) for s in (1, 2, 3))
    assert all(0.001 <= got[s]["temp"] <= 0.5 for s in (1, 2, 3))
