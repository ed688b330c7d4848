"""bench/ablate.py: the no-MIM variants drop the images stream from the config's own step groups."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import ablate  # noqa: E402


def test_no_mim_drops_only_the_images_stream_of_the_configured_groups():
    paper = [["text"], ["regions", "images", "pairs"]]
    assert ablate.variant_overrides(True, False, paper) == [
        "model.overrides={stop_text_grad: true, mim: false}", "streams.step_groups=[[text], [regions, pairs]]"]
    # a group that held only images disappears; the demo's pair stream stays as it is
    assert ablate.variant_overrides(False, False, [["images"], ["pairs"]])[1] == "streams.step_groups=[[pairs]]"
    assert ablate.variant_overrides(False, False, [["pairs"]]) == ["model.overrides={stop_text_grad: false, mim: false}"]
    # with MIM the configured groups are used unchanged
    assert ablate.variant_overrides(True, True, paper) == ["model.overrides={stop_text_grad: true, mim: true}"]


def test_the_overrides_parse_as_a_pretraining_config(tmp_path, monkeypatch):
    from xfm.pretrain.config import load_pretrain_config

    monkeypatch.setenv("XFM_DATA", str(tmp_path))
    cfg = load_pretrain_config(str(REPO / "configs/pretrain/tiny.yaml"))
    sets = ablate.variant_overrides(True, False, cfg.streams.step_groups)
    out = load_pretrain_config(str(REPO / "configs/pretrain/tiny.yaml"), sets)
    assert out.streams.step_groups == [["text"], ["regions", "pairs"]] and out.model.build().mim is False
