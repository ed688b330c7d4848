"""bench/fusion_matching.py: the variance split of the fusion token 0 and the ITM scores are
right on grids whose answer is known, and the script runs on a checkpoint and a world the tests
made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import fusion_matching as fm  # noqa: E402


def test_additive_states_have_no_interaction_and_the_right_main_shares():
    g = torch.Generator().manual_seed(0)
    picture = torch.randn(12, 1, 8, generator=g)
    text = 3.0 * torch.randn(1, 10, 8, generator=g)
    shares = fm.variance_shares(picture + text)
    assert shares["interaction"] < 1e-12
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    # the text part was drawn with 3x the spread: ~9x the variance
    assert 0.8 < shares["text"] < 0.97 and shares["picture"] == pytest.approx(1 - shares["text"])


def test_states_that_depend_on_the_pair_show_interaction():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 1, 8, generator=g), torch.randn(1, 10, 8, generator=g)
    shares = fm.variance_shares(a * b)  # zero-mean factors: almost all of it is the pair
    assert shares["interaction"] > 0.8
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    # control: the same factors added show none
    assert fm.variance_shares(a + b)["interaction"] < 1e-12


def test_variance_shares_reject_a_grid_it_cannot_split():
    with pytest.raises(ValueError, match="pictures >= 2, texts >= 2"):
        fm.variance_shares(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="do not vary"):
        fm.variance_shares(torch.ones(3, 4, 2))


def test_offset_and_spread():
    states = torch.tensor([[1.0, -3.0], [3.0, -5.0]])   # per dimension: means 2, -4; stds 1.414 each
    out = fm.offset_and_spread(states)
    assert out["mean_abs"] == pytest.approx(3.0) and out["spread"] == pytest.approx(2 ** 0.5)


def test_diagonal_auc_and_r1():
    n = 5
    perfect = torch.eye(n) + 0.01 * torch.arange(n * n, dtype=torch.float).view(n, n)
    assert fm.diagonal_auc(perfect) == 1.0 and fm.text_to_picture_r1(perfect) == 1.0
    assert fm.diagonal_auc(torch.ones(n, n)) == 0.5       # ties count one half
    wrong = 1.0 - torch.eye(n)                            # every matching pair lowest
    assert fm.diagonal_auc(wrong) == 0.0 and fm.text_to_picture_r1(wrong) == 0.0
    # one text's own picture loses: 4 of 5 columns right
    scores = torch.eye(n)
    scores[0, 1] = 2.0
    assert fm.text_to_picture_r1(scores) == pytest.approx(0.8)


@pytest.mark.slow
def test_runs_on_an_export_and_reports_json(finetune_ckpts):
    world = finetune_ckpts.world
    env = dict(os.environ, OMP_NUM_THREADS="1", XFM_DATA=str(finetune_ckpts.xfm_data))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fusion_matching.py"), "--checkpoint",
                           str(finetune_ckpts.export), "--tokenizer", str(world / "tokenizer"), "--n", "6"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pictures"] == 6 and out["chance_r1"] == pytest.approx(1 / 6)
    shares = out["fusion_token0_variance"]
    assert set(shares) == {"picture", "text", "interaction"} and abs(sum(shares.values()) - 1) < 1e-6
    assert out["fusion_token0_offset"]["spread"] > 0
    assert 0.0 <= out["itm_diagonal_auc"] <= 1.0 and 0.0 <= out["itm_prob_mean"] <= 1.0
    # a caption number no picture has is named, not an IndexError
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fusion_matching.py"), "--checkpoint",
                           str(finetune_ckpts.export), "--tokenizer", str(world / "tokenizer"), "--n", "3",
                           "--caption-index", "99"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode != 0 and "has no caption number 99" in proc.stderr
