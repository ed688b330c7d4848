"""`pretrain/slurm/pretrain.sbatch` really runs: a single-node SLURM (Debian slurm-wlm + munge)
is started here, the sbatch script is submitted for the 2-task tiny run, and the job must finish
with rank/world taken from SLURM's variables and a checkpoint written.

Set-up installs the packages with apt-get when they are missing; the test is skipped (with the
reason printed) only where they cannot be installed or the daemons cannot be started (not root).
The daemons started here are stopped by pid at the end.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_pretrain import REPO, free_port, pretrain_env, tail
from xfm.runtime.metrics import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SBATCH = REPO / "pretrain" / "slurm" / "pretrain.sbatch"


def _skip(reason: str):
    print(f"SKIP test_pretrain_slurm: {reason}")
    pytest.skip(reason)


def _ensure_packages() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _skip("slurm-wlm/munge are not installed and cannot be installed here (needs root + apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
                          env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        upd = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
                              env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            _skip(f"apt-get install slurm-wlm munge failed: {(upd.stderr + proc.stderr)[-500:]}")


def _munge_works() -> bool:
    p = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    return p.returncode == 0


def _ensure_munged() -> int | None:
    """Start munged when no working one is there; returns the pid we started (to stop later)."""
    if _munge_works():
        return None
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], capture_output=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], capture_output=True, timeout=30)
    for _ in range(50):
        if _munge_works():
            pid_file = Path("/run/munge/munged.pid")
            return int(pid_file.read_text()) if pid_file.exists() else None
        time.sleep(0.1)
    _skip("munged did not start")


def _node_line() -> str:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    # keep the hardware description, leave memory headroom
    fields = [f for f in out.split() if not f.startswith(("RealMemory", "UpTime"))]
    return " ".join(fields) + " RealMemory=1000 State=UNKNOWN"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        _skip("the SLURM daemons need root here")
    _ensure_packages()
    munged_pid = _ensure_munged()
    root = tmp_path_factory.mktemp("slurm")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    host = socket.gethostname().split(".")[0]
    node = _node_line()
    if not node.startswith(f"NodeName={host} "):
        node = f"NodeName={host} " + node.split(" ", 1)[1]
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=xfmtest
SlurmctldHost={host}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{node}
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen([d, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for d in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd")]
    try:
        for _ in range(100):
            p = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if p.returncode == 0 and p.stdout.strip() in ("idle", "mix"):
                break
            time.sleep(0.3)
        else:
            logs = "".join(f.read_text()[-800:] for f in root.glob("*.log"))
            _skip(f"the single-node SLURM did not come up: {logs}")
        yield conf
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()
        if munged_pid:
            try:
                os.kill(munged_pid, 15)
            except ProcessLookupError:
                pass


def _wait_for_job(job_id: str, env: dict, timeout: float = 540) -> tuple[str, str]:
    """Poll the controller until the job ends (sbatch --wait sleeps up to 32 s between polls)."""
    state, exit_code, deadline = "", "", time.time() + timeout
    while time.time() < deadline:
        show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
        fields = dict(f.split("=", 1) for f in show.split() if "=" in f)
        state, exit_code = fields.get("JobState", ""), fields.get("ExitCode", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(0.5)
    return state, exit_code


def _clean_env(env: dict) -> dict:
    """No launcher variables of the calling process may leak into the job."""
    return {k: v for k, v in env.items()
            if k == "SLURM_CONF" or not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}


def test_sbatch_runs_the_two_task_tiny_job(slurm_cluster, pretrain_data, tmp_path):
    import sys

    run_dir = tmp_path / "slurm_run"
    job_out = tmp_path / "job.out"
    env = _clean_env(pretrain_env(pretrain_data, SLURM_CONF=slurm_cluster, XFM_PYTHON=sys.executable))
    # CPU-only node: override the script's GPU request and its 10 CPUs per task on the command line
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
           "--time=10", f"--output={job_out}", str(SBATCH), str(REPO / "configs" / "pretrain" / "tiny.yaml"),
           "--out", str(run_dir), "--steps", "4", "--set", "checkpoint.every=2", "--set", "engine.dist_timeout_s=120"]
    sub = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    state, exit_code = _wait_for_job(job_id, env)
    log = job_out.read_text() if job_out.exists() else ""
    assert (state, exit_code) == ("COMPLETED", "0:0"), f"job {job_id}: {state} {exit_code}\n{tail(log)}"
    assert "2 task(s)" in log
    assert "xfm-pretrain: world size 2 (slurm)" in log  # rank/world came from SLURM's variables
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step00000004"
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "step00000004").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    steps = [r["step"] for r in read_metrics(run_dir) if "event" not in r]
    assert steps == [1, 2, 3, 4]


FINETUNE_SBATCH = REPO / "finetune" / "slurm" / "finetune.sbatch"


def test_finetune_sbatch_runs_a_two_task_job(slurm_cluster, finetune_ckpts, tmp_path):
    """`finetune/slurm/finetune.sbatch` runs xfm-finetune under srun: 2 tasks, rank/world from
    SLURM, the run completes with eval.json and best/."""
    import json
    import sys

    from fixtures_finetune import TEST_SETTINGS, finetune_env

    run_dir = tmp_path / "ft_slurm"
    job_out = tmp_path / "ft_job.out"
    env = _clean_env(finetune_env(finetune_ckpts, SLURM_CONF=slurm_cluster, XFM_PYTHON=sys.executable))
    sets = [a for ov in [*TEST_SETTINGS, "train.max_steps=2", "train.batch_size=8"] for a in ("--set", ov)]
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
           "--time=10", f"--output={job_out}", str(FINETUNE_SBATCH), "glue",
           str(REPO / "configs" / "finetune" / "glue.yaml"), "--checkpoint", str(finetune_ckpts.export),
           "--out", str(run_dir), *sets]
    sub = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    state, exit_code = _wait_for_job(sub.stdout.strip().split(";")[0], env)
    log = job_out.read_text() if job_out.exists() else ""
    assert (state, exit_code) == ("COMPLETED", "0:0"), f"{state} {exit_code}\n{tail(log)}"
    assert "xfm-finetune glue job" in log and "2 task(s)" in log
    start = next(r for r in read_metrics(run_dir) if r.get("event") == "start")
    assert start["world_size"] == 2  # rank/world came from SLURM's variables
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["task"] == "glue" and "accuracy" in result["metrics"]
    assert (run_dir / "best" / "task.yaml").is_file()
