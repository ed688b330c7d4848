"""The demo's stage runner refuses what it cannot run, by name, before starting anything.

(The demo itself, end to end, is test_demo.py in `make test-long`.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import demo_run  # noqa: E402


def test_every_demo_task_has_its_recipe():
    for task in demo_run.TASKS:
        assert (REPO / "configs" / "demo" / f"finetune_{task}.yaml").is_file(), task


def test_a_task_without_its_demo_recipe_fails_naming_the_file(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(demo_run, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(demo_run.StageFailed, match=r"configs/demo/finetune_no_such_task\.yaml does not exist"):
        demo_run.stage_finetune("no_such_task", tmp_path / "export", tmp_path / "runs", 1, [], {})
    assert not ran and not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_unknown_task_is_refused_before_any_stage(tmp_path):
    with pytest.raises(SystemExit) as e:
        demo_run.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--tasks", "vqa,nope"])
    assert "unknown task 'nope'" in str(e.value.code)
    assert not (tmp_path / "data" / "world").exists()


def test_a_world_from_an_earlier_generator_is_refused_by_name(tmp_path):
    """Its downstream sets (NLVR2 before format 2, the demo's smaller NLVR2 set before 3) differ
    from today's: reusing it would report results of the old sets as the demo's. make_world
    refuses it; the demo says so by name."""
    import json

    world = tmp_path / "data" / "world"
    world.mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"format_version": 1, "seed": 0, "size": "demo", "image_size": 64}))
    with pytest.raises(demo_run.StageFailed, match=rf"{world} was made by an earlier synthetic-world "
                                                   r"generator \(format 1, now 3\)"):
        demo_run.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")])
    assert sorted(p.name for p in world.iterdir()) == ["world.json"]  # nothing made or run
    assert not (tmp_path / "runs" / "pretrain").exists()


def test_finetuning_tasks_run_side_by_side_sharing_the_cores(tmp_path, monkeypatch, capsys):
    """--finetune-jobs 2: two tasks at a time, each with half the cores, the longest first; a
    failing task is reported and the others still finish; the table keeps the task order."""
    import json
    import os
    import threading
    import time

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(demo_run, "stage_world", lambda data, size: data / "world")
    monkeypatch.setattr(demo_run, "stage_pretrain", lambda world, run_dir, *a: run_dir / "export")
    monkeypatch.setattr(demo_run, "stage_zeroshot", lambda *a: ({}, None))
    seen = {}

    def fake_collect(zeroshot, finetuned, *a):
        seen["order"] = list(finetuned)
        return {t: {"value": 0.5, "chance": 0.25} for t in finetuned}

    monkeypatch.setattr(demo_run, "collect", fake_collect)
    lock, live, started = threading.Lock(), [0, 0], []

    def fake_run(cmd, env, logfile=None):
        task, out = cmd[cmd.index("--task") + 1], Path(cmd[cmd.index("--out") + 1])
        with lock:
            started.append((task, env["OMP_NUM_THREADS"]))
            live[0] += 1
            live[1] = max(live)
        time.sleep(0.3)
        with lock:
            live[0] -= 1
        if task == "vqa":
            raise demo_run.StageFailed("vqa broke")
        (out / "eval.json").write_text(json.dumps({"split": "test", "metrics": {"acc": 0.5}}))

    monkeypatch.setattr(demo_run, "run", fake_run)
    tasks = "vqa,glue,image_cls,nlvr2"
    rc = demo_run.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--tasks", tasks,
                        "--finetune-jobs", "2", "--no-plots"])
    assert rc == 1 and "vqa: FAILED: vqa broke" in capsys.readouterr().out
    assert live[1] == 2                                   # two at a time, never more
    # The two longest tasks, given last, are taken first: the two workers pick up the first two of
    # the queue (NLVR2, then classification); which of the two threads reaches `run` first is up
    # to the OS, so only the sets are checked.
    assert {task for task, _ in started[:2]} == {"nlvr2", "image_cls"}
    assert {task for task, _ in started[2:]} == {"vqa", "glue"}
    assert {threads for _, threads in started} == {"2"}    # 4 cores / 2 jobs
    assert seen["order"] == ["glue", "image_cls", "nlvr2"]  # the given order, the failed task left out
    timings = json.loads((tmp_path / "data" / "demo" / "timings.json").read_text())
    assert timings["failed_tasks"] == ["vqa"]


def test_finetune_jobs_below_one_is_refused_before_any_stage(tmp_path):
    with pytest.raises(SystemExit) as e:
        demo_run.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--finetune-jobs", "0"])
    assert "--finetune-jobs must be >= 1" in str(e.value.code)
    assert not (tmp_path / "data" / "world").exists()


@pytest.mark.parametrize("task", ["retrieval", "vqa", "nlvr2", "grounding"])
def test_demo_recipes_keep_what_the_text_says_true(task, monkeypatch):
    """The world's captions, questions and phrases talk about counts, colours and left/right: a
    crop can cut an object off ("three shapes"), RandAugment's colour operations can rename a
    colour, a flip reverses a left-to-right listing. Every demo recipe of a task whose text
    describes the picture turns the three off, as loaded with the task's own config class (so the
    task recipe's defaults, which have them on for real data, cannot leak through)."""
    from xfm.finetune.config import load_finetune_config
    from xfm.finetune.registry import get_task

    monkeypatch.setenv("XFM_DATA", "data")
    _, task_cfg = load_finetune_config(str(REPO / "configs" / "demo" / f"finetune_{task}.yaml"),
                                       get_task(task).Config)
    aug = task_cfg.augment
    aug = aug if isinstance(aug, dict) else vars(aug)
    assert aug.get("randaugment") is False and aug.get("hflip") is False, (task, aug)
    assert aug.get("crop") is False or list(aug.get("crop_scale", [])) == [1.0, 1.0], (task, aug)
