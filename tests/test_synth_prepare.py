"""prepare_world runs the world.json commands through `xfm-prep`: the shards they write read back
with plain webdataset and hold the world's own samples, and the tokenizer loads with
transformers.AutoTokenizer and covers the world's words."""
from __future__ import annotations

import json
import tarfile

import webdataset as wds
from braceexpand import braceexpand

from xfm.data_prep.synth import prepare_world, run_manifest_command


def _samples(world, kind: str) -> list[dict]:
    stats = json.loads((world.shards(kind) / "stats.json").read_text())
    urls = [str(world.shards(kind) / u) for u in braceexpand(stats.get("pattern_relative", stats["pattern"]))]
    for url in urls:
        with tarfile.open(url) as tf:     # plain tar, as `tar -tf` sees it
            assert tf.getnames()
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_prepared_shards_read_back_with_webdataset(prepared_world):
    m = prepared_world.manifest
    pairs = _samples(prepared_world, "pairs")
    assert len(pairs) == m["counts"]["captions_train"]
    coco = json.loads(prepared_world.path("annotations/captions_train.json").read_text())
    assert sorted(s["txt"].decode() for s in pairs) == sorted(a["caption"] for a in coco["annotations"])
    for s in pairs:
        meta = json.loads(s["json"])
        assert s["jpg"][:2] == b"\xff\xd8" and meta["width"] == meta["height"] == 64

    regions = _samples(prepared_world, "regions")
    assert len(regions) == m["counts"]["scenes"]["train"]
    assert sum(len(json.loads(s["json"])["regions"]) for s in regions) == m["counts"]["regions_train"]
    vg = {e["id"]: e["regions"] for e in json.loads(prepared_world.path("vg/region_descriptions.json").read_text())}
    for s in regions:
        meta = json.loads(s["json"])
        want = {(r["phrase"], (r["x"], r["y"], r["width"], r["height"])) for r in vg[int(meta["image_id"])]}
        got = {(r["phrase"], tuple(round(v) for v in r["bbox"])) for r in meta["regions"]}
        assert got == want

    text = _samples(prepared_world, "text")
    docs = prepared_world.path("text/corpus.txt").read_text().splitlines()
    assert sorted(s["txt"].decode() for s in text) == sorted(docs)

    images = _samples(prepared_world, "images")
    assert len(images) == m["counts"]["class_images"]["train"]
    classes = json.loads((prepared_world.shards("images") / "classes.json").read_text())
    assert sorted(classes) == sorted(m["vocabulary"]["shapes"])
    assert {int(s["cls"]) for s in images} == set(classes.values())


def test_prepared_tokenizer_loads_with_auto_tokenizer(prepared_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(prepared_world.tokenizer))
    assert tok.pad_token_id == 1 and tok.mask_token is not None
    caption = json.loads(prepared_world.path("annotations/captions_train.json").read_text())["annotations"][0]["caption"]
    ids = tok(caption)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == caption
    # the world's vocabulary words are whole tokens (with their leading space)
    vocab = tok.get_vocab()
    for word in prepared_world.manifest["vocabulary"]["shapes"] + prepared_world.manifest["vocabulary"]["colours"]:
        assert "Ġ" + word in vocab, word


def test_prepare_world_skips_finished_steps(prepared_world):
    before = {p: p.stat().st_mtime_ns for p in prepared_world.root.rglob("*") if p.is_file()}
    again = prepare_world(prepared_world.root, seed=0, size="test")
    assert again == prepared_world.manifest
    after = {p: p.stat().st_mtime_ns for p in prepared_world.root.rglob("*") if p.is_file()}
    assert after == before


def test_manifest_checks_verify_every_shard_folder(prepared_world):
    checks = prepared_world.manifest["checks"]
    assert sorted(c["argv"][2] for c in checks) == sorted(prepared_world.manifest["shards"].values())
    for cmd in checks:
        proc = run_manifest_command(prepared_world.root, cmd)   # raises on a non-zero exit
        assert proc.returncode == 0


def test_other_region_files_read_by_the_regions_sharder(synth_world, tmp_path):
    """The RefCOCO-style grounding and VG objects files are in the formats the sharder reads
    (guessed without --format), every record kept, boxes unchanged."""
    from xfm.data_prep.sharders import shard

    counts = synth_world.manifest["counts"]
    for name, rel, images, n_items in (
            ("grounding", "grounding/refcoco_train.jsonl", str(synth_world.root), counts["grounding"]["train"]),
            ("objects", "vg/objects.json", str(synth_world.path("images")), counts["grounding"]["train"])):
        stats = shard("regions", [str(synth_world.path(rel))], str(tmp_path / name), images=images,
                      progress=False)
        assert stats["formats"][0]["guessed"] is True
        samples = _samples_in(tmp_path / name, stats)
        assert len(samples) == counts["scenes"]["train"]
        assert sum(len(json.loads(s["json"])["regions"]) for s in samples) == n_items


def _samples_in(folder, stats) -> list[dict]:
    urls = [str(folder / u) for u in braceexpand(stats.get("pattern_relative", stats["pattern"]))]
    return list(wds.WebDataset(urls, shardshuffle=False))
