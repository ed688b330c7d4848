"""The pretraining streams on the synthetic world's shards, as written by `xfm-prep` (the format
contract of INTERFACES.md "Shards"), with the world's own tokenizer."""
from __future__ import annotations

import json

import torch

from xfm.config import from_dict
from xfm.pretrain.data import DataConfig, StreamSet
from xfm.tokenizer import load_tokenizer


def world_cfg(world, workers: int) -> DataConfig:
    streams = {}
    for kind, batch in (("pairs", 4), ("regions", 2), ("text", 4), ("images", 4)):
        stats = json.loads((world.shards(kind) / "stats.json").read_text())
        streams[kind] = {"sources": [{"urls": stats["pattern"]}], "batch_size": batch, "shuffle_buffer": 16}
    return from_dict(DataConfig, {"tokenizer": str(world.tokenizer), "image_size": 32, "patch_size": 8,
                                  "num_workers": workers, **streams}, "world")


def test_world_shards_stream_into_documented_batches(prepared_world):
    cfg = world_cfg(prepared_world, workers=2)
    tok = load_tokenizer(prepared_world.tokenizer)
    with StreamSet(cfg, rank=1, world_size=2, seed=0) as streams:
        batches = {n: [next(streams[n]) for _ in range(3)] for n in streams.names}
        counters = streams.counters()
    for b in batches["pairs"]:
        assert b["image"].shape == (4, 3, 32, 32) and b["mim_mask"].shape == (4, 16)
        caption = tok.decode(b["text_ids"][0][b["text_mask"][0] == 1], skip_special_tokens=True)
        assert caption.strip() and len(caption.split()) >= 2
    for b in batches["regions"]:
        R = b["region_image_index"].shape[0]
        assert R >= 2 and b["region_patch_mask"].shape == (R, 16) and b["region_boxes"].shape == (R, 4)
        boxed = ~b["is_whole_image"]
        assert boxed.any() and (b["region_boxes"][boxed, 2:] > 0).all() and (b["region_boxes"][boxed, 2:] <= 1).all()
    for b in batches["text"]:
        assert b["text_ids_masked"].shape[1] <= 128 and ((b["mlm_labels"] != -100).sum(1) >= 1).all()
    for b in batches["images"]:
        assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    for name, c in counters.items():
        assert c["batches"] == 3 and c["bad_total"] == 0, (name, c)
