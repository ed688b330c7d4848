"""NLVR2 fine-tuned from a pretraining beats the same fine-tuning from random weights.

On the demo world's NLVR2 set (every sentence with a pair it is true of and a pair it is false
of, so the sentence alone scores 0.5; 8000 training rows, 400 test rows), from a pretraining whose
image-text matching has started to work: configs/pretrain/demo.yaml run for 800 steps instead of
the demo's 300, with the fusion encoder at the encoders' lr as the demo had it when this was
measured (`scripts/demo_run.py --steps 800 --pretrain-set optim.lr_mult=2 --pretrain-set
"optim.lr_mult_prefixes=[heads.]"` on the world of the session's `demo_pretraining`), from
BEiT's / BERT's init (std 0.02, layer scale 0.1), the demo model's before its init was scaled
for its width (the random start has it too). The demo
now reaches NLVR2 from 300 steps with its fusion encoder at 4x, but by a thin margin (0.535-0.61
in seven runs of 3000-5000 steps), too thin for this test's one run. After 300 steps at 1x
the fusion encoder's token 0 has no part that depends on the (picture, sentence) pair and sits
on a large constant offset, and NLVR2 stays at 0.5 from every start; by step 800 the
pretraining's ITM loss has left its prior (0.637 -> 0.55) and `bench/fusion_matching.py` shows
ITM picking a caption's picture among 32 (R@1 0.66). BENCHMARKS.md, "NLVR2: the fusion token 0
sits on a constant offset ...", has the figures.

Three starts, same data order and seed: the pretraining's export, the same weights as an
official-layout `.th` (must land exactly where the export does), and a randomly initialised demo
model. The fine-tuning: configs/demo/finetune_nlvr2.yaml with the encoders at lr 1e-4 and the new
head at 10x, 3000 steps x 16 (6 passes over the 8000 rows). When the loss leaves ln 2 varies from
run to run: measured, from this test's own 800-step export, 0.517 after 2000 steps (validation
0.51 until step 1000, 0.55 at 1500) and 0.605 after 3000 (validation 0.58 / 0.66 / 0.64 at 2000 /
2500 / 3000); from another run of the same pretraining on a set of the same make, 0.625 / 0.645
after 2000 / 3000. At the demo recipe's lr 5e-4 the loss stays at ln 2 from every start; from the
demo's 300-step export with these settings the test accuracy is 0.500. One standard error on 400
test rows is 2.5 points. 23 minutes on 2 cores (both pretrainings and three 3000-step runs).
"""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures_demo import EARLIER_INIT_SET, OFFICIAL_OVERRIDES, DemoPretraining, demo_run_cmd, earlier_init_demo_model
from fixtures_finetune import finetune_cmd, finetune_env, official_tiny_th
from fixtures_pretrain import tail

pytestmark = [pytest.mark.long, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
INITS = ("export", "official", "random")
PRETRAIN_STEPS = 800
# the pretraining this test was measured on: configs/pretrain/demo.yaml as it was before the demo
# put its fusion encoder at 4x lr (only the heads at 2x); the demo's own pretraining with the
# fusion at 4x gives NLVR2 0.535-0.61 after 3000 steps, too close to this margin for one run
# and before the demo model's init was scaled for its width (the random start too)
EARLIER_LR_MULT = ["optim.lr_mult=2", "optim.lr_mult_prefixes=[heads.]", EARLIER_INIT_SET]
# the fine-tuning it was measured with, kept explicit (the demo recipe has the same lr, head and
# steps since; the passes and the evaluation interval differ)
SETTINGS = ["train.max_steps=3000", "train.epochs=10", "train.eval_every=500",
            "optim.lr=1e-4", "optim.head_lr_mult=10"]
MARGIN = 0.05  # 2 standard errors on 400 rows; measured 0.605 from this test's export


@pytest.fixture(scope="module")
def starts(demo_pretraining, tmp_path_factory) -> dict:
    import torch

    root = tmp_path_factory.mktemp("nlvr2_starts")
    longer = DemoPretraining(data=demo_pretraining.data, runs=root / "runs")
    pins = [a for s in EARLIER_LR_MULT for a in ("--pretrain-set", s)]
    proc = subprocess.run(demo_run_cmd(longer, "--tasks", "", "--no-plots", "--steps", str(PRETRAIN_STEPS), *pins),
                          cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, tail(proc)
    torch.manual_seed(1234)
    earlier_init_demo_model().save_pretrained(root / "random")
    return {"root": root, "data": demo_pretraining.data, "tokenizer": demo_pretraining.tokenizer,
            "export": longer.export, "random": root / "random",
            "official": official_tiny_th(root / "xfm_demo_official.th", weights=longer.export)}


@pytest.fixture(scope="module")
def results(starts) -> dict:
    def one(init):
        out = starts["root"] / "ft" / init
        overrides = [f"tokenizer={starts['tokenizer']}", *SETTINGS]
        if init == "official":
            overrides += OFFICIAL_OVERRIDES
        cmd = finetune_cmd("nlvr2", REPO / "configs" / "demo" / "finetune_nlvr2.yaml", starts[init], out, overrides)
        proc = subprocess.run(cmd, cwd=REPO, env=finetune_env(starts["data"]), capture_output=True, text=True,
                              timeout=2400)
        assert proc.returncode == 0, f"nlvr2 from {init}:\n{tail(proc)}"
        return json.loads((out / "eval.json").read_text())

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(INITS, pool.map(one, INITS)))


def test_nlvr2_from_a_pretraining_whose_itm_learnt_beats_random_weights(results):
    values = {}
    for init, result in results.items():
        assert result["task"] == "nlvr2" and result["split"] == "test", result
        assert result["step"] in {500, 1000, 1500, 2000, 2500, 3000}, result
        values[init] = result["metrics"]["acc"]
    assert values["export"] >= values["random"] + MARGIN, values
    # same tensors, same data order, one thread each: the official adapter changes nothing
    assert values["official"] == values["export"], values
