"""Fixtures of the pretraining engine tests (owned by the pretraining-engine area).

- `pretrain_data`: the session's prepared synthetic world (`prepared_world`) seen through
  `configs/pretrain/tiny.yaml` (`XFM_DATA` = the world's parent) plus a corrupt pairs shard.
- `tiny_run`: ONE uninterrupted 2-rank ZeRO-3 run of the tiny config (fp32, deterministic,
  checkpoints every 6 steps, a log line per step), shared by the run / resume / export tests,
  because each 2-process DeepSpeed start costs ~10 s of the 2 cores.
- `launch_pretrain(...)`: `torchrun --nproc_per_node N -m xfm.pretrain.cli ...` (or the
  `deepspeed` launcher) with the test environment; `pretrain_args(...)`: the common arguments.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
STEPS = 24  # a few dozen steps
CKPT_EVERY = 8


@dataclass(frozen=True)
class PretrainData:
    xfm_data: Path  # what ${XFM_DATA} is for tiny.yaml
    corrupt_shard: Path

    @property
    def world(self) -> Path:
        return self.xfm_data / "world"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_env(data: PretrainData, **extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               XFM_DATA=str(data.xfm_data), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def torchrun_cmd(nproc: int, module_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *module_args]


def pretrain_args(data: PretrainData, out: Path, steps: int = STEPS, extra: list[str] = ()) -> list[str]:
    """The tiny config, made exact and observable: fp32 + deterministic, a metrics line per step,
    checkpoints every CKPT_EVERY steps (all kept), a 60 s collective timeout (a hang fails), the
    per-rank trace of every batch run (``plans/rank<r>.jsonl``: stream and row count), the progress
    bar, and
    the pairs stream reading 4 good shards + 1 corrupt one (5 shards over 2 ranks: uneven)."""
    pairs = data.world / "shards" / "pairs"
    urls = f'["{pairs}/pairs-{{000000..000003}}.tar", "{data.corrupt_shard}"]'
    return ["--config", str(TINY), "--out", str(out), "--steps", str(steps), "--deterministic",
            "--set", "engine.precision=fp32", "--set", "engine.dist_timeout_s=60",
            "--set", "logging.every=1", "--set", f"checkpoint.every={CKPT_EVERY}",
            "--set", "checkpoint.keep_last=0", "--set", "logging.trace_plan=true", "--set", "logging.progress=true",
            "--set", f"data.pairs.sources=[{{urls: {urls}}}]", *extra]


def deepspeed_cmd(nproc: int, module_args: list[str]) -> list[str]:
    """The `deepspeed` launcher on one node (CPU: --num_accelerators)."""
    return [str(Path(sys.executable).with_name("deepspeed")), "--num_accelerators", str(nproc),
            "--master_port", str(free_port()), *module_args]


def launch_pretrain(data: PretrainData, args: list[str], nproc: int = 2, timeout: float = 300,
                    launcher: str = "torchrun", module: str = "xfm.pretrain.cli", **env) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(nproc, ["-m", module, *args]) if launcher == "torchrun" else \
        deepspeed_cmd(nproc, ["--module", module, *args])
    return subprocess.run(cmd, cwd=REPO, env=pretrain_env(data, **env), capture_output=True, text=True,
                          timeout=timeout)


def popen_pretrain(data: PretrainData, args: list[str], nproc: int = 2, log: Path | None = None,
                   script: str | None = None, **env) -> subprocess.Popen:
    """Start in its own process group (so a test can SIGKILL the launcher and its workers);
    ``script``: a Python file to run instead of ``-m xfm.pretrain.cli`` (same arguments)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    target = [script] if script else ["-m", "xfm.pretrain.cli"]
    return subprocess.Popen(torchrun_cmd(nproc, [*target, *args]), cwd=REPO,
                            env=pretrain_env(data, **env), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts its workers in their own sessions, so
    killing the launcher's process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen, sig=None) -> None:
    """SIGKILL the launcher and every worker it started (by pid)."""
    import signal

    sig = sig or signal.SIGKILL
    for pid in [proc.pid] + descendants(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    proc.wait()


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path, timeout: float = 240) -> int:
    """Poll RUN_DIR/metrics.jsonl until a record of ``step`` (or later) is there; the step seen."""
    import time

    from xfm.runtime.metrics import read_metrics

    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists():
            steps = [r["step"] for r in read_metrics(run_dir, live=True) if "event" not in r]
            if steps and max(steps) >= step:
                return max(steps)
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}:\n"
                                 + tail(log.read_text()))
        time.sleep(0.2)
    raise AssertionError(f"the run never reached step {step}:\n" + tail(log.read_text()))


def tail(proc_or_text, n: int = 4000) -> str:
    text = proc_or_text if isinstance(proc_or_text, str) else (proc_or_text.stdout + proc_or_text.stderr)
    lines = [ln for ln in text.splitlines() if "Warning" not in ln and "warn(" not in ln]
    # the ranks' own errors first (torchrun's summary at the end would push them out)
    errors = [ln for ln in lines if ln.startswith("[rank") and ("Error" in ln or "assert" in ln)
              or "terminate called" in ln]
    return ("\n".join(errors[-20:]) + "\n--- tail ---\n" + "\n".join(lines)[-n:]) if errors else "\n".join(lines)[-n:]


@pytest.fixture(scope="session")
def pretrain_data(prepared_world, tmp_path_factory) -> PretrainData:
    extra = tmp_path_factory.mktemp("pretrain_extra")
    corrupt = extra / "pairs-corrupt.tar"
    # not a tar archive at all: the loader must skip it and count it, never stop the run
    corrupt.write_bytes(b"\x00garbage, not a tar archive\n" * 64)
    return PretrainData(xfm_data=prepared_world.root.parent, corrupt_shard=corrupt)


@dataclass(frozen=True)
class TinyRun:
    run_dir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_run(pretrain_data, tmp_path_factory) -> TinyRun:
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    proc = launch_pretrain(pretrain_data, pretrain_args(pretrain_data, run_dir))
    assert proc.returncode == 0, tail(proc)
    return TinyRun(run_dir, proc)
