"""The demo end to end, shortened (scripts/demo_run.py): the demo world, the demo's own
pretraining (the session's `demo_pretraining`, fixtures_demo.py: 450 steps on one ZeRO-3 rank,
its export and zero-shot retrieval), then every fine-tuning task through `xfm-finetune` with
the demo's recipes cut to fewer steps. results.json must have the documented structure and
every metric in it must beat its chance level; a re-run must reuse every finished stage and
write the same results.

The cuts keep each task where it is clearly off chance (measured from a clean-clone demo
export): VQA 200 steps (0.444: the answer prior per question type, chance 0.189), grounding
1000 (test acc@0.5 0.310, chance 0.009), classification 500 (0.410, chance 0.200), SynthRTE 500
(~0.59, chance 0.500, 300 test pairs). Retrieval keeps the demo's 500 steps (0.062 there): cut
to 100, fine-tuned retrieval's text->image R@1 was 0.013 against a chance of 0.005, 8 of 600
captions, which a test cannot tell from luck. NLVR2 keeps the demo's 3000 steps: its loss
leaves ln 2 only after ~1500 (every sentence of the world's NLVR2 set comes with a pair of
pictures it is true of and one it is false of, so only the pictures decide). Like every metric
it must beat its chance level, and no more: the demo's NLVR2 measured 0.535-0.610 in seven runs
(3000-5000 steps), while two standard errors on its 400 test rows are 0.550, so one run cannot
be held to that. What the check catches is the failure seen before the demo's fusion encoder
learnt at 4x lr: a head that settles on one answer scores exactly 0.500 on this balanced set.
(tests/test_finetune_nlvr2_from_pretraining.py holds NLVR2 to beating random weights by two
standard errors, from a longer pretraining.)

The zero-shot metrics are the ones a broken pretraining fails: from random weights consistent
text->image R@1 is 0.005 against a chance of 0.020.

Measured (`pytest -m long tests/test_demo.py`, 2 passed in 11 min 24 s on 2 cores, the session's
pretraining included; the tasks two at a time, one thread each): zero-shot consistent t2i R@1
0.113 (chance 0.020), fine-tuned retrieval t2i R@1 0.140 (0.005), VQA 0.446 (0.189), NLVR2 0.535
(0.500), grounding 0.189 (0.009), classification 0.390 (0.200), SynthRTE 0.573 (0.500). With
the classification head at 10x (the demo recipe since): 2 passed in 11 min 32 s, classification
0.395, every other figure the same. With the demo model's width-scaled init, its 450 pretraining
steps and classification in all eight orientations (the same cuts): zero-shot consistent t2i R@1
0.257, fine-tuned retrieval 0.222, VQA 0.527, NLVR2 0.618, grounding 0.112 (1000 of the recipe's
2500 steps), classification 0.530, SynthRTE 0.697; 2 passed, ~11 min.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_demo import demo_run_cmd
from fixtures_pretrain import tail

pytestmark = [pytest.mark.long, pytest.mark.timeout(3600)]  # minutes on 2 cores: `make test-long`

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from demo_run import TASKS  # noqa: E402

FINETUNE_CUTS = ["vqa:train.max_steps=200",
                 "grounding:train.max_steps=1000", "grounding:train.eval_every=500",
                 "image_cls:train.max_steps=500", "image_cls:train.eval_every=250",
                 "glue:train.max_steps=500"]
ZEROSHOT = {f"zeroshot_{d}_{kind}_r{k}" for d in ("t2i", "i2t") for kind in ("consistent", "plain") for k in (1, 5)}
RETRIEVAL = {"finetuned_retrieval_t2i_plain_r1", "finetuned_retrieval_t2i_consistent_r1_itc",
             "finetuned_retrieval_t2i_plain_r1_itc"}


def _run_demo(demo_pretraining) -> subprocess.CompletedProcess:
    args = [a for cut in FINETUNE_CUTS for a in ("--finetune-set", cut)]
    return subprocess.run(demo_run_cmd(demo_pretraining, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=3000)


@pytest.fixture(scope="module")
def demo(demo_pretraining):
    proc = _run_demo(demo_pretraining)
    assert proc.returncode == 0, tail(proc)
    return demo_pretraining, proc


def test_results_structure_and_every_metric_above_chance(demo):
    demo_pretraining, proc = demo
    out = demo_pretraining.data / "demo"
    results = json.loads((out / "results.json").read_text())
    expected = ZEROSHOT | RETRIEVAL | {label for task, (_, _, label, _) in TASKS.items() if task != "retrieval"}
    assert set(results) == expected, (sorted(set(results) ^ expected), proc.stdout[-2000:])
    for name, entry in results.items():
        assert set(entry) == {"value", "chance"}, name
        assert all(isinstance(entry[k], float) and math.isfinite(entry[k]) for k in entry), name
        assert 0.0 <= entry["chance"] < 1.0 and 0.0 <= entry["value"] <= 1.0, (name, entry)
    below = {k: v for k, v in results.items() if not v["value"] > v["chance"]}
    assert not below, f"metrics not above chance: {below}"
    for png in ("loss_curves.png", "retrieval_examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each task's eval.json is the fine-tuning's own report, for the steps it was cut to
    for task in TASKS:
        ev = json.loads((demo_pretraining.runs / "finetune" / task / "eval.json").read_text())
        assert ev["task"] == task and ev["metrics"], ev


def test_rerun_reuses_finished_stages(demo):
    demo_pretraining, _ = demo
    before = (demo_pretraining.data / "demo" / "results.json").read_text()
    proc = _run_demo(demo_pretraining)
    assert proc.returncode == 0, tail(proc)
    assert "xfm.pretrain.cli" not in proc.stdout and "xfm.finetune.cli" not in proc.stdout
    assert proc.stdout.count("reusing") == 2 + len(TASKS)  # the export, zero-shot, each task
    assert (demo_pretraining.data / "demo" / "results.json").read_text() == before
