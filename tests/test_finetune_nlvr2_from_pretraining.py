"""NLVR2 fine-tuned from the demo's pretraining beats the same fine-tuning from random weights.

On the demo world's NLVR2 set (every sentence with a pair it is true of and a pair it is false
of, so the sentence alone scores 0.5; 8000 training rows, 400 test rows), from the session's
`demo_pretraining` export (configs/pretrain/demo.yaml: 300 steps of the pair stream with the
fusion encoder and the heads at 4x the encoders' lr), with the demo's own NLVR2 recipe
(configs/demo/finetune_nlvr2.yaml: the encoders at lr 1e-4, the new head at 10x, 3000 steps x 16,
6 passes over the 8000 rows).

What the pretraining must give: a fusion encoder whose token 0 depends on the (picture,
sentence) pair. With the fusion encoder at the encoders' lr (the earlier demo recipe) it does not
after 300 steps (`bench/fusion_matching.py`: pair share of its variance 0.0004, ITM AUC 0.52),
and this fine-tuning then ends at 0.49; at 4x, 0.59 / 0.59 (pretraining seeds 0 / 1). BENCHMARKS.md,
"NLVR2: a fusion encoder at 4x lr", has the figures.

Three starts, same data order and seed: the pretraining's export, the same weights as an
official-layout `.th` (must land exactly where the export does), and a randomly initialised demo
model. One standard error on 400 test rows is 2.5 points.
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

pytestmark = [pytest.mark.long, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
INITS = ("export", "official", "random")
MARGIN = 0.05  # 2 standard errors on 400 rows


@pytest.fixture(scope="module")
def starts(demo_pretraining, tmp_path_factory) -> dict:
    import torch

    from xfm.config import load_config
    from xfm.model import XFM
    from xfm.model_config import ModelConfig

    root = tmp_path_factory.mktemp("nlvr2_starts")
    torch.manual_seed(1234)
    XFM(load_config(REPO / "configs" / "model" / "demo.yaml", ModelConfig)).save_pretrained(root / "random")
    return {"root": root, "data": demo_pretraining.data, "tokenizer": demo_pretraining.tokenizer,
            "export": demo_pretraining.export, "random": root / "random",
            "official": official_tiny_th(root / "xfm_demo_official.th", weights=demo_pretraining.export)}


@pytest.fixture(scope="module")
def results(starts) -> dict:
    def one(init):
        out = starts["root"] / "ft" / init
        overrides = [f"tokenizer={starts['tokenizer']}"]
        if init == "official":
            overrides += OFFICIAL_OVERRIDES
        cmd = finetune_cmd("nlvr2", REPO / "configs" / "demo" / "finetune_nlvr2.yaml", starts[init], out, overrides)
        proc = subprocess.run(cmd, cwd=REPO, env=finetune_env(starts["data"]), capture_output=True, text=True,
                              timeout=2400)
        assert proc.returncode == 0, f"nlvr2 from {init}:\n{tail(proc)}"
        return json.loads((out / "eval.json").read_text())

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(INITS, pool.map(one, INITS)))


def test_nlvr2_from_the_demo_pretraining_beats_random_weights(results):
    values = {}
    for init, result in results.items():
        assert result["task"] == "nlvr2" and result["split"] == "test", result
        assert result["step"] in {1000, 2000, 3000}, result
        values[init] = result["metrics"]["acc"]
    assert values["export"] >= values["random"] + MARGIN, values
    # same tensors, same data order, one thread each: the official adapter changes nothing
    assert values["official"] == values["export"], values
