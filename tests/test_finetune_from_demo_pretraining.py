"""Grounding and image classification fine-tuned from the demo's pretraining beat the same
fine-tuning from random weights: the two tasks the `ci` world's tiny model cannot show
(test_finetune_from_pretraining.py says why).

The demo world (1000 training pictures, 465 test phrases, 200 validation pictures in 5 shape
classes), the demo's pretraining as `make demo` runs it (`scripts/demo_run.py`:
configs/pretrain/demo.yaml, the demo model with its position table, one ZeRO-3 rank, the pair
stream, lr 5e-4 with the fusion encoder and the heads at 4x, 300 steps; the session's
`demo_pretraining`, which the shortened demo in test_demo.py shares), then each task from three
starts with the same data order and seed:

- ``export``: the pretraining's `xfm-export` directory;
- ``official``: the same weights written as an official-layout `.th`, loaded through the
  official adapter (the demo model's head count as ``model.num_heads`` and its position table
  as ``model.overrides``: an official file carries neither), which must land exactly where the
  export does;
- ``random``: a randomly initialised demo model.

Grounding: `configs/demo/finetune_grounding.yaml` as the demo runs it (1500 steps x 32), test
acc@0.5. Measured: 0.404 from this pretraining against 0.219 from these random weights.
BENCHMARKS.md, "Grounding needs a gentle pretraining", has the spread: random weights 0.232 /
0.292 with other seeds, a second pretraining seed 0.378. Control: from the demo's earlier
pretraining (lr 2e-3, 600 steps) the same fine-tuning reaches 0.028, so a pretraining that wipes
out where things are fails this test.

Classification: `configs/demo/finetune_image_cls.yaml` cut to 500 steps, validation top-1 (the
world has no test split; the best of the evaluations at 250 and 500 steps). The pretraining is a
head start, not a higher ceiling: 38.5 from the export (and from the official file) against
29.5 from these random weights; with another random init 38.5 / 39.5 against 25.0 / 24.5
(fine-tuning seeds 0 / 1); after the demo's 1500 steps both reach 46-48 (BENCHMARKS.md, "Classification from a pretraining").

12 min 16 s on 2 cores (`make test-long`, with the pretraining); grounding 0.404 from the export and the official
file alike, 0.219 from random weights. With the fusion encoder at 4x in the pretraining (the demo
now): grounding 0.312 from the export and the official file against 0.219 (margin 0.093, inside
the earlier pretraining's 0.18-0.41 spread), classification 39.0 against 29.5.
"""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures_demo import OFFICIAL_OVERRIDES
from fixtures_finetune import finetune_cmd, finetune_env, official_tiny_th
from fixtures_pretrain import tail

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]
INITS = ("export", "official", "random")
# task -> (settings on top of the demo config, metric, split, steps the best model may come
# from, margin by which each pretrained start must win). Grounding: measured margin 0.185, the
# smallest gap between two pretraining seeds and two random-weight runs 0.086. Classification:
# measured margins 9.0 here, 13.5 / 15.0 against another random init (two fine-tuning seeds),
# on 200 pictures (one standard error ~3.5 points). The head's lr stays at 1x as it was measured
# (the demo recipe has the head at 10x since).
TASKS = {
    "grounding": ([], "acc", "test", {500, 1000, 1500}, 0.08),
    "image_cls": (["train.max_steps=500", "train.eval_every=250", "optim.head_lr_mult=1"],
                  "top1", "val", {250, 500}, 6.0),
}


@pytest.fixture(scope="module")
def starts(demo_pretraining, tmp_path_factory) -> dict:
    """The three starts: the demo pretraining's export, the same weights as an official `.th`,
    and a randomly initialised demo model."""
    import torch

    from xfm.config import load_config
    from xfm.model import XFM
    from xfm.model_config import ModelConfig

    root = tmp_path_factory.mktemp("demo_starts")
    torch.manual_seed(1234)
    XFM(load_config(REPO / "configs" / "model" / "demo.yaml", ModelConfig)).save_pretrained(root / "random")
    export = demo_pretraining.export
    return {"root": root, "export": export, "random": root / "random",
            "official": official_tiny_th(root / "xfm_demo_official.th", weights=export)}


@pytest.fixture(scope="module")
def results(demo_pretraining, starts) -> dict:
    root = starts["root"]

    def one(job):
        task, init = job
        out = root / "ft" / f"{task}_{init}"
        overrides = [f"tokenizer={demo_pretraining.tokenizer}", *TASKS[task][0]]
        if init == "official":
            overrides += OFFICIAL_OVERRIDES
        cmd = finetune_cmd(task, REPO / "configs" / "demo" / f"finetune_{task}.yaml",
                           starts[init], out, overrides)
        proc = subprocess.run(cmd, cwd=REPO, env=finetune_env(demo_pretraining.data), capture_output=True, text=True,
                              timeout=1500)
        assert proc.returncode == 0, f"{task} from {init}:\n{tail(proc)}"
        return json.loads((out / "eval.json").read_text())

    jobs = [(task, init) for task in TASKS for init in INITS]  # the long grounding runs first
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(one, jobs)))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_finetuning_from_the_demo_pretraining_beats_random_weights(task, results):
    _, metric, split, steps, margin = TASKS[task]
    values = {}
    for init in INITS:
        result = results[(task, init)]
        assert result["task"] == task and result["split"] == split, result
        assert result["step"] in steps, result  # the recipe's steps, from every start
        values[init] = result["metrics"][metric]
    assert values["export"] >= values["random"] + margin, values
    # the official file holds the export's tensors and both runs see the same data in the same
    # order on one thread each: the adapter must not change a single number
    assert values["official"] == values["export"], values
