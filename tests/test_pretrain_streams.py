"""Which streams run in a step must be the same on every rank (ZeRO-3 hangs otherwise), and a
run stops cleanly on SIGUSR1 (SLURM pre-emption) and SIGTERM.

- the plan is a pure function of (config, seed, step): no rank, no loader state goes in;
- a 2-rank run (bf16) that draws one group per step at random (mode: sample) runs, every
  rank's traced plan is identical, and SIGUSR1 (rank 0) / SIGTERM (rank 1) make both ranks save
  at the same step and exit 0;
- the negative control: the same run with a plan drawn from a per-rank RNG does NOT finish -
  the ranks call different modules, and the collective timeout turns the hang into an error.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections import Counter

import pytest

from fixtures_pretrain import (REPO, descendants, pretrain_args, pretrain_env, popen_pretrain, tail,
                               torchrun_cmd)
from xfm.pretrain.config import StreamsConfig
from xfm.runtime.metrics import read_metrics
from xfm.pretrain.plan import plan_for_step


def test_plan_is_a_function_of_seed_and_step_only():
    paper = StreamsConfig()
    assert plan_for_step(paper, 0, 5) == [["text"], ["regions", "images", "pairs"]]
    joint = StreamsConfig(step_groups=[["text", "regions", "images", "pairs"]])
    assert plan_for_step(joint, 0, 5) == [["text", "regions", "images", "pairs"]]
    sample = StreamsConfig(step_groups=[["text"], ["pairs"], ["images"]], mode="sample",
                           group_probs=[0.5, 0.3, 0.2])
    plans = [plan_for_step(sample, 7, s) for s in range(400)]
    assert plans == [plan_for_step(sample, 7, s) for s in range(400)]  # reproducible (resume)
    counts = Counter(p[0][0] for p in plans)
    assert all(len(p) == 1 for p in plans)
    assert 150 < counts["text"] < 250 and 80 < counts["pairs"] < 160 and 40 < counts["images"] < 120
    assert plans != [plan_for_step(sample, 8, s) for s in range(400)]  # the seed matters


def test_streams_config_rejects_bad_groups():
    with pytest.raises(ValueError, match="unknown stream"):
        StreamsConfig(step_groups=[["txt"]])
    with pytest.raises(ValueError, match="twice"):
        StreamsConfig(step_groups=[["text"], ["text", "pairs"]])
    with pytest.raises(ValueError, match="one probability per step group"):
        StreamsConfig(step_groups=[["text"], ["pairs"]], mode="sample", group_probs=[1.0])


SAMPLE_MODE = ["--set", "streams.mode=sample", "--set", "streams.step_groups=[[text], [pairs, images], [regions]]",
               "--set", "streams.group_probs=[0.4, 0.3, 0.3]", "--set", "logging.trace_plan=true",
               "--set", "engine.dist_timeout_s=30"]


@pytest.mark.distributed
@pytest.mark.slow
def test_sampled_streams_agree_across_ranks_and_sigusr1_saves(pretrain_data, tmp_path):
    run_dir = tmp_path / "sampled"
    log = tmp_path / "sampled.log"
    # also the bf16 path (DeepSpeed's bf16 optimizer; model inputs cast to bf16), gradient
    # accumulation and activation checkpointing of two encoders under ZeRO-3
    extra = SAMPLE_MODE + ["--set", "engine.precision=bf16", "--set", "engine.grad_accum=2",
                           "--set", "engine.activation_checkpointing=[vision, fusion]"]
    proc = popen_pretrain(pretrain_data, pretrain_args(pretrain_data, run_dir, steps=40, extra=extra), log=log)
    deadline = time.time() + 240
    signalled = False
    while proc.poll() is None and time.time() < deadline:
        steps = ([r["step"] for r in read_metrics(run_dir, live=True) if "event" not in r]
                 if (run_dir / "metrics.jsonl").exists() else [])
        if not signalled and steps and max(steps) >= 6:
            # rank 0 gets SIGUSR1 (SLURM pre-emption), rank 1 SIGTERM (scancel, a killed job): an
            # unhandled one would end that rank; the ranks agree on a stop step collectively
            for pid in descendants(proc.pid):
                try:
                    import os

                    if "xfm.pretrain.cli" in open(f"/proc/{pid}/cmdline").read().replace("\0", " "):
                        environ = open(f"/proc/{pid}/environ").read().split("\0")
                        os.kill(pid, signal.SIGUSR1 if "RANK=0" in environ else signal.SIGTERM)
                except OSError:
                    pass
            signalled = True
        time.sleep(0.2)
    if proc.poll() is None:
        from fixtures_pretrain import kill_tree

        kill_tree(proc)
        pytest.fail("the sampled run did not stop after SIGUSR1:\n" + tail(log.read_text()))
    assert proc.returncode == 0, tail(log.read_text())
    events = read_metrics(run_dir)
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert stopped and stopped[0]["signal"] in ("SIGUSR1", "SIGTERM")  # whichever the agreement saw first
    stop_step = stopped[0]["step"]
    assert 6 <= stop_step < 40
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{stop_step:08d}"
    lines = [[json.loads(x) for x in (run_dir / "plans" / f"rank{r:05d}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    traces = [[x for x in ln if "plan" in x] for ln in lines]
    assert traces[0] == traces[1]
    # and inside each step, the same streams in the same order on both ranks
    ran = [[(x["step"], x["micro"], x["stream"]) for x in ln if "stream" in x] for ln in lines]
    assert ran[0] == ran[1] and len(ran[0]) >= stop_step
    # two micro-steps (accumulated) per optimizer step group
    assert {m for _, m, _ in ran[0]} == {0, 1}
    assert len(ran[0]) == 2 * sum(len(t["plan"][0]) for t in traces[0])
    assert len(traces[0]) == stop_step
    assert len({tuple(t["plan"][0]) for t in traces[0]}) >= 2  # really a mix, not one group
    losses = [r["loss"] for r in events if "event" not in r]
    assert len(losses) == stop_step and all(math.isfinite(x) for x in losses)


DIVERGENT = r'''
import sys, numpy as np
import xfm.pretrain.trainer as trainer
import torch.distributed as dist

def rank_local_plan(streams, seed, step):
    # WRONG on purpose: a per-rank draw, as "each rank picks a stream" would do
    rng = np.random.default_rng([seed, step, dist.get_rank()])
    groups = [list(g) for g in streams.step_groups]
    return [groups[int(rng.integers(len(groups)))]]

trainer.plan_for_step = rank_local_plan
from xfm.pretrain.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.distributed
@pytest.mark.slow
def test_rank_dependent_stream_choice_fails_instead_of_finishing(pretrain_data, tmp_path):
    script = tmp_path / "divergent.py"
    script.write_text(DIVERGENT)
    run_dir = tmp_path / "divergent"
    args = pretrain_args(pretrain_data, run_dir, steps=8, extra=SAMPLE_MODE + ["--set", "engine.dist_timeout_s=10"])
    t0 = time.time()
    proc = subprocess.run(torchrun_cmd(2, [str(script), *args]), cwd=REPO, env=pretrain_env(pretrain_data),
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    traces = [[json.loads(x)["plan"] for x in (run_dir / "plans" / f"rank{r:05d}.jsonl").read_text().splitlines()
               if '"plan"' in x] for r in (0, 1)]
    assert traces[0] != traces[1], "the control did not diverge; pick another seed"
    assert proc.returncode != 0, "ranks running different streams finished: the hazard this guards is gone?"
    assert time.time() - t0 < 200
    assert any(s in out for s in ("Timed out", "timed out", "Timeout", "timeout", "doesn't match", "Connection reset",
                                  "Connection closed")), tail(out)
    assert not any(r.get("step") == 8 for r in read_metrics(run_dir) if "event" not in r)


def test_one_list_of_stream_names():
    """The stream names come from one place (xfm.objectives.streams.STREAMS); the objectives,
    the batch-size keys of the logs, the config's check and the loaders agree with it."""
    from xfm.objectives import BATCH_ROWS, STREAM_LOSSES, STREAMS
    from xfm.objectives.streams import REQUIRED
    from xfm.pretrain import config as pretrain_config
    from xfm.pretrain.data import config as data_config

    assert pretrain_config.STREAMS is STREAMS
    assert tuple(STREAM_LOSSES) == STREAMS and tuple(BATCH_ROWS) == STREAMS and set(REQUIRED) == set(STREAMS)
    assert all(BATCH_ROWS[s] in REQUIRED[s] for s in STREAMS)
    assert data_config.STREAM_NAMES is STREAMS
    with pytest.raises(ValueError, match=r"unknown stream 'captions'; known \['text', 'regions', 'images', 'pairs'\]"):
        StreamsConfig(step_groups=[["captions"]])


def test_sampled_stream_losses_average_over_the_steps_they_ran():
    """mode: sample - a stream that ran in 1 of 4 logged steps is averaged over that step, not
    divided by 4; ``loss`` is the mean of each step's total."""
    from xfm.pretrain.metrics import IntervalStats
    from xfm.pretrain.trainer import _log

    class Writer:
        recs = []

        def write(self, rec):
            self.recs.append(rec)

    stats = IntervalStats()
    ran = [("text", 2.0), ("pairs", 6.0), ("text", 4.0), ("text", 0.0)]
    for stream, value in ran:
        for _ in range(2):  # two accumulated micro-steps of half the value each
            stats.add_losses({f"loss/{stream}": value / 2, f"loss/{stream}/x": value / 4})
        stats.end_step()
    w = Writer()
    _log(stats, w, step=4, lr=1e-3, temp=None, world=1, streams=object(), rank=0, bar=None)
    rec = w.recs[0]
    assert rec["loss/text"] == 2.0 and rec["loss/text/x"] == 1.0  # (2 + 4 + 0) / 3 steps
    assert rec["loss/pairs"] == 6.0 and rec["loss/pairs/x"] == 3.0  # ran once
    assert rec["loss"] == 3.0  # (2 + 6 + 4 + 0) / 4 steps
    assert stats.steps == 0 and not stats.losses  # reset for the next interval
