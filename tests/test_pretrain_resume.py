"""Resume where it is hard: every source of randomness on, several loader workers, accumulation,
recomputation, bf16 - and a SIGKILL between two checkpoints.

The tiny model with dropout 0.1 (text + fusion, hidden and attention) and drop-path 0.1
(vision), 2 loader workers per rank, gradient accumulation 2, activation checkpointing of all
three encoders, bf16 under ZeRO-3 on 2 CPU ranks. A run killed with SIGKILL two steps after a
checkpoint and resumed logs, for every step after its checkpoint, exactly the values it logged
before the kill, i.e. those of the uninterrupted run (losses, lr, temperature, grad norms). The control resumes the same
checkpoint with RNG restore switched off (``set_rng_state`` patched to do nothing): its losses
differ, so the test above depends on the restored RNG (dropout and drop-path draw from it).
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fixtures_pretrain import (REPO, kill_tree, launch_pretrain, popen_pretrain, pretrain_args, pretrain_env,
                               tail, torchrun_cmd, wait_for_step)
from xfm.runtime.metrics import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS, EVERY = 8, 3  # schedule length; checkpoints at 3 and 6: the kill comes at step 5
HARD = ["--set", "model.overrides={text: {hidden_dropout: 0.1, attention_dropout: 0.1}, "
                 "fusion: {hidden_dropout: 0.1, attention_dropout: 0.1}, vision: {drop_path: 0.1}}",
        "--set", "data.num_workers=2", "--set", "engine.grad_accum=2", "--set", "engine.precision=bf16",
        "--set", "engine.activation_checkpointing=[text, vision, fusion]",
        "--set", f"checkpoint.every={EVERY}", "--set", "logging.trace_plan=false", "--set", "logging.progress=false",
        "--set", "engine.dist_timeout_s=120",
        # half the tiny config's batches: this test is about state, not throughput
        "--set", "data.text.batch_size=4", "--set", "data.pairs.batch_size=4", "--set", "data.images.batch_size=4",
        "--set", "data.regions.batch_size=2",
        # the tiny config's own pairs shards (the common arguments add a corrupt one, tested elsewhere)
        "--set", 'data.pairs.sources=[{urls: "${XFM_DATA}/world/shards/pairs/pairs-{000000..000005}.tar"}]']

NO_RNG_RESTORE = r'''
import sys
import xfm.runtime.checkpointing as checkpointing
checkpointing.set_rng_state = lambda state: None  # the control: resume without restoring any RNG
from xfm.pretrain.cli import main
sys.exit(main(sys.argv[1:]))
'''

COMPARED = ("loss", "lr", "temp", "grad_norm")


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "event" not in r}


def differences(got: dict, ref: dict, steps) -> list:
    return [(s, k, got[s][k], ref[s][k]) for s in steps for k in ref[s]
            if k.startswith(COMPARED) and got[s][k] != ref[s][k]]


def test_kill_between_checkpoints_resumes_exactly_with_dropout_workers_accumulation_bf16(pretrain_data, tmp_path):
    """The run itself is the reference: the steps it logged after its checkpoint and before the
    SIGKILL are what an uninterrupted run computes; the resumed run must log them again exactly."""
    run_dir, control_dir = tmp_path / "killed", tmp_path / "control"
    args = pretrain_args(pretrain_data, run_dir, steps=STEPS, extra=HARD)
    log = tmp_path / "killed.log"
    proc = popen_pretrain(pretrain_data, args, log=log)
    try:
        wait_for_step(proc, run_dir, EVERY + 2, log, timeout=600)
    finally:
        kill_tree(proc)  # launcher, both ranks and their loader workers: SIGKILL, no chance to save
    assert "drop_path: 0.1" in (run_dir / "model_config.yaml").read_text()
    uninterrupted = records(run_dir)
    latest = int((run_dir / "checkpoints" / "latest").read_text().strip()[len("step"):])
    killed_at = max(uninterrupted)
    assert latest == EVERY and latest + 2 <= killed_at < 2 * EVERY, (latest, killed_at)
    after = range(latest + 1, killed_at + 1)

    shutil.copytree(run_dir, control_dir)  # the same checkpoint, for the control
    resumed = launch_pretrain(pretrain_data, args + ["--resume", "--stop-at", str(killed_at)], timeout=600)
    assert resumed.returncode == 0, tail(resumed)
    assert "bf16" in resumed.stdout and sorted(records(run_dir)) == list(range(1, killed_at + 1))
    assert differences(records(run_dir), uninterrupted, after) == []

    script = tmp_path / "no_rng_restore.py"
    script.write_text(NO_RNG_RESTORE)
    control_args = [a.replace(str(run_dir), str(control_dir)) for a in args] + ["--resume", "--stop-at", str(latest + 1)]
    control = subprocess.run(torchrun_cmd(2, [str(script), *control_args]), cwd=REPO, env=pretrain_env(pretrain_data),
                             capture_output=True, text=True, timeout=600)
    assert control.returncode == 0, tail(control)
    diff = differences(records(control_dir), uninterrupted, [latest + 1])
    # without the RNG state the dropout / drop-path masks differ from the first resumed step on
    assert any(k.startswith("loss/") for _, k, *_ in diff), diff
