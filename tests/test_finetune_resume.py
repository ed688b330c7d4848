"""kill -9 during fine-tuning, then --resume: the following steps equal an uninterrupted run.

The shared loop is what is under test (every task runs it); retrieval exercises the most of it:
image augmentation seeded per example, hard negatives drawn from the per-batch generator,
dropout and drop-path switched on (the tiny model has none by default) so the restored RNG
state matters, gradient accumulation, and an epoch boundary crossed after the resume.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_finetune import REPO, finetune_cmd, finetune_env, run_finetune
from xfm.runtime.metrics import read_metrics

pytestmark = pytest.mark.timeout(900)

STEPS = 9  # 6 optimizer steps per epoch below: the run crosses into a second epoch
SETTINGS = ["train.batch_size=16", "engine.grad_accum=2", f"train.max_steps={STEPS}", "train.eval_batch_size=16",
            "checkpoint.every=2", "optim.lr=1e-4", "optim.warmup_ratio=0.2", "task.rerank_batch_size=64",
            "task.k_test=8", "train.test_split=null",
            "model.overrides.text.hidden_dropout=0.1", "model.overrides.fusion.hidden_dropout=0.1",
            "model.overrides.fusion.attention_dropout=0.1", "model.overrides.vision.drop_path=0.1"]
LOSS_KEYS = ("loss", "loss/itc", "loss/itm", "lr", "epoch")


def _records(out: Path) -> list[dict]:
    if not (out / "metrics.jsonl").is_file():
        return []
    # live: the file is polled while the run writes it (and the resumed run drops a line cut by the kill)
    return read_metrics(out, live=True)


def _steps(records) -> dict[int, dict]:
    return {r["step"]: r for r in records if "loss" in r and "event" not in r}


def _run_until_killed(ckpts, out: Path, after_step: int, timeout: float = 600) -> int:
    """Start the fine-tuning, SIGKILL it once ``after_step`` is logged; -> the steps logged."""
    cmd = finetune_cmd("retrieval", REPO / "configs/finetune/retrieval.yaml", ckpts.export, out, SETTINGS,
                       extra=["--deterministic"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=finetune_env(ckpts), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {proc.returncode}) before it was killed:\n"
                                     + proc.stderr.read()[-3000:])
            if max(_steps(_records(out)), default=0) >= after_step:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"step {after_step} not reached within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group (started above)
        proc.wait()
    return max(_steps(_records(out)))


def test_kill_9_and_resume_continue_exactly(finetune_ckpts, tmp_path):
    full = tmp_path / "uninterrupted"
    proc, _ = run_finetune(finetune_ckpts, "retrieval", full, *SETTINGS, extra=["--deterministic"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _steps(_records(full))
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert {reference[s]["epoch"] for s in reference} == {0, 1}
    import yaml

    model_cfg = yaml.safe_load((full / "model_config.yaml").read_text())
    assert model_cfg["text"]["hidden_dropout"] == 0.1 and model_cfg["vision"]["drop_path"] == 0.1

    killed = tmp_path / "killed"
    logged = _run_until_killed(finetune_ckpts, killed, after_step=3)
    assert logged < STEPS, "the run finished before the kill"
    # before the kill the two runs agree step by step (same seed, deterministic)
    before = _steps(_records(killed))
    for s, rec in before.items():
        assert {k: rec[k] for k in LOSS_KEYS} == {k: reference[s][k] for k in LOSS_KEYS}, s

    proc, _ = run_finetune(finetune_ckpts, "retrieval", killed, *SETTINGS, extra=["--deterministic", "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(killed)
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    assert len(starts) == 2 and records[starts[1]]["resumed"] is True
    resumed = _steps(records[starts[1]:])
    first = min(resumed)
    assert first in (3, 5, 7) and first <= logged + 1, (first, logged)  # from a checkpoint the killed run wrote
    assert sorted(resumed) == list(range(first, STEPS + 1))
    for s in resumed:
        got = {k: resumed[s][k] for k in LOSS_KEYS}
        want = {k: reference[s][k] for k in LOSS_KEYS}
        assert got == want, f"step {s}: resumed {got} != uninterrupted {want}"
    # the same best model: the evaluations after the resume agree too
    evals = lambda recs: [(r["step"], r.get("eval/val/r_mean")) for r in recs if r.get("event") == "eval"]
    assert evals(records[starts[1]:]) == [e for e in evals(_records(full)) if e[0] >= first]
