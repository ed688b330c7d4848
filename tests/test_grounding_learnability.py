"""bench/grounding_learnability.py: the diagnostic loop trains the box head it claims to train."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import grounding_learnability as gl  # noqa: E402


def _random_checkpoint(path: Path) -> Path:
    from xfm.model import XFM
    from xfm.model_config import model_config

    torch.manual_seed(0)
    XFM(model_config("tiny")).save_pretrained(path)
    return path


def test_reports_validation_and_trains(prepared_world, tmp_path, capsys):
    ck = _random_checkpoint(tmp_path / "random")
    assert gl.main(["--checkpoint", str(ck), "--world", str(prepared_world.root), "--steps", "6",
                    "--every", "3", "--lr", "1e-3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    header, evals = lines[0], lines[1:]
    n_val = sum(1 for _ in (prepared_world.root / "grounding" / "refcoco_val.jsonl").open())
    assert header["val_phrases"] == n_val and header["train_phrases"] > 0
    # the best constant box is at most as bad as the mean box (its loss is a real optimum)
    assert 0.0 < header["constant_box_train_loss"] < 3.0
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert evals[0]["train_loss"] is None and evals[-1]["train_loss"] > 0
    for e in evals:
        assert 0.0 <= e["acc@0.5"] <= 1.0 and 0.0 <= e["mean_iou"] <= 1.0 and 0.0 <= e["centre_in"] <= 1.0
    assert evals[-1]["spread"] != evals[0]["spread"]  # the box head's outputs moved


def test_switching_the_position_table_keeps_every_weight(tmp_path):
    ck = _random_checkpoint(tmp_path / "random")
    plain, switched = gl.load_model(str(ck), None), gl.load_model(str(ck), "sincos")
    assert plain.config.vision.abs_pos_embed == "none" and switched.config.vision.abs_pos_embed == "sincos"
    a, b = plain.state_dict(), switched.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    pixels = torch.randn(2, 3, plain.config.vision.image_size, plain.config.vision.image_size)
    with torch.no_grad():
        assert not torch.allclose(plain.encode_image(pixels), switched.encode_image(pixels))
        torch.testing.assert_close(gl.load_model(str(ck), "none").encode_image(pixels), plain.encode_image(pixels))
