"""Pretraining data streams (xfm.pretrain.data) on small shards written here with webdataset.

What must hold: the batches are exactly INTERFACES.md's; region boxes follow crop and flip (and
"left"/"right" swap with the flip), and so do the captions of flipped pairs; image ids are
namespaced by the sample's source; ranks read disjoint shards and all yield batches however
uneven the split; corrupt shards and bad samples are skipped and counted; a resumed set yields
the same batches, bit for bit, as an uninterrupted one (2 loader workers); the same seed gives
the same stream.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
import time
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import webdataset as wds

from xfm.config import ConfigError, from_dict
from xfm.pretrain.data import DataConfig, StreamSet, measure_loader_throughput
from xfm.pretrain.data.config import RANDAUG_OPS, RANDAUG_OPS_REGIONS
from xfm.pretrain.data.seeding import source_image_id
from xfm.pretrain.data.transforms import box_patch_mask, swap_left_right

STORED = 64  # pixels of the stored pictures
RED, BLUE = (220, 30, 30), (30, 40, 230)
RED_BOX, BLUE_BOX = (6, 20, 16, 16), (40, 24, 14, 14)  # x, y, w, h: red left of blue
WORDS = "the a red blue square circle left right of above below small large picture shows".split()


def jpeg(shapes=((RED, RED_BOX), (BLUE, BLUE_BOX))) -> bytes:
    im = Image.new("RGB", (STORED, STORED), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    for colour, (x, y, w, h) in shapes:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def region_json(key: str) -> dict:
    return {"image_id": key, "width": STORED, "height": STORED,
            "caption": "a red square left of a blue square",
            "regions": [{"phrase": "the red square left of the blue square", "bbox": list(RED_BOX)},
                        {"phrase": "the blue square right of the red square", "bbox": list(BLUE_BOX)}]}


def sample(kind: str, shard: int, i: int, rng: np.random.Generator) -> dict:
    key = f"s{shard}_{i:04d}"
    if kind == "pairs":
        return {"__key__": key, "jpg": jpeg(), "txt": f"a red square left of a blue square {shard} {i}",
                "json": {"image_id": f"img{shard}-{i // 2}", "source": "test", "width": STORED, "height": STORED}}
    if kind == "regions":
        return {"__key__": key, "jpg": jpeg(), "json": region_json(key)}
    if kind == "text":
        return {"__key__": key, "txt": " ".join(rng.choice(WORDS, int(rng.integers(5, 90))))}
    return {"__key__": key, "jpg": jpeg(), "cls": str(i % 3).encode()}


def write_shard(path, samples) -> str:
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer and, per kind, 3 shards of 7 samples (+ odd shards for the error tests)."""
    from xfm.data_prep.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("pretrain_data")
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(200)))
    train_bpe_tokenizer([corpus], root / "tok", vocab_size=300, progress=False)
    for kind in ("pairs", "regions", "text", "images"):
        (root / kind).mkdir()
        for s in range(3):
            write_shard(root / kind / f"{kind}-{s:06d}.tar", [sample(kind, s, i, rng) for i in range(7)])
    # pairs shard with bad samples between good ones
    good = [sample("pairs", 7, i, rng) for i in range(6)]
    bad_image = dict(good[1], jpg=b"definitely not a jpeg")
    bad_json = dict(good[3], json=b"{broken")
    no_txt = {k: v for k, v in good[5].items() if k != "txt"}
    write_shard(root / "pairs" / "bad-samples.tar", [good[0], bad_image, good[2], bad_json, good[4], no_txt])
    # a corrupt shard and a shard cut on a 512-byte boundary inside a sample
    (root / "pairs" / "garbage.tar").write_bytes(b"this is not a tar archive\n" * 200)
    src = root / "pairs" / "pairs-000000.tar"
    with tarfile.open(src) as tf:
        members = tf.getmembers()
    cut = members[4].offset  # header of the 2nd file of the 2nd sample
    assert cut % 512 == 0
    (root / "pairs" / "cut.tar").write_bytes(src.read_bytes()[:cut])
    return root


def make_cfg(root, workers=0, kinds=("pairs", "regions", "text", "images"), batch=3, buffer=5,
             image_size=32, patch=8, **over):
    streams = {k: {"sources": [{"urls": str(root / k / f"{k}-{{000000..000002}}.tar")}],
                   "batch_size": batch, "shuffle_buffer": buffer} for k in kinds}
    d = {"tokenizer": str(root / "tok"), "image_size": image_size, "patch_size": patch,
         "num_workers": workers, **streams}
    for k, v in over.items():
        d[k] = v
    return from_dict(DataConfig, d, "test")


def take(stream, n):
    return [next(stream) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_paper_and_reject_bad_keys(data):
    cfg = make_cfg(data)
    assert cfg.text_len_for("pairs") == 30 and cfg.text_len_for("regions") == 30
    assert cfg.text_len_for("text") == 128
    assert cfg.augment.crop_scale == (0.2, 1.0)
    assert (cfg.augment.randaugment_n, cfg.augment.randaugment_m) == (2, 7)
    colour_ops = {"Color", "Contrast", "Invert", "Posterize", "Solarize", "SolarizeAdd"}
    assert not colour_ops & set(RANDAUG_OPS)
    # region augmentation may not move pixels (the boxes would no longer fit the shapes)
    assert set(RANDAUG_OPS_REGIONS) <= {"AutoContrast", "Equalize", "Brightness", "Sharpness"}
    m = cfg.masking
    assert (m.fusion_mask_prob, m.fusion_max_masks, m.text_mask_prob, m.text_max_masks) == (0.5, 15, 0.15, 20)
    with pytest.raises(ConfigError, match="batchsize"):
        from_dict(DataConfig, {"tokenizer": "t", "pairs": {"sources": [{"urls": "a.tar"}], "batchsize": 2}}, "x.yaml")
    with pytest.raises(ConfigError, match="weight"):
        from_dict(DataConfig, {"tokenizer": "t", "pairs": {"sources": [{"urls": "a.tar", "weight": 0}],
                                                           "batch_size": 2}}, "x.yaml")


# -------------------------------------------------------------------------------------- batches
def test_batches_have_the_documented_keys_shapes_and_dtypes(data):
    cfg = make_cfg(data)
    N = cfg.num_patches
    with StreamSet(cfg, seed=3) as streams:
        assert streams.names == ["text", "regions", "images", "pairs"]  # STREAMS order
        b = next(streams["pairs"])
        assert set(b) == {"image", "text_ids", "text_mask", "text_ids_masked", "mlm_labels", "image_ids", "mim_mask"}
        B, L = b["text_ids"].shape
        assert B == 3 and L <= 30
        assert b["image"].shape == (3, 3, 32, 32) and b["image"].dtype == torch.float32
        assert b["image_ids"].shape == (3,) and b["image_ids"].dtype == torch.long
        assert b["mim_mask"].shape == (3, N) and b["mim_mask"].dtype == torch.bool
        assert (b["mim_mask"].sum(1) == round(75 / 196 * N)).all()
        for k in ("text_ids", "text_mask", "text_ids_masked", "mlm_labels"):
            assert b[k].shape == (B, L) and b[k].dtype == torch.long, k
        sel = b["mlm_labels"] != -100
        assert torch.equal(b["mlm_labels"][sel], b["text_ids"][sel])  # labels = the original tokens
        assert (b["text_ids_masked"][~sel] == b["text_ids"][~sel]).all()
        assert (sel.sum(1) <= 15).all() and (sel.sum(1) >= 1).all()
        assert not sel[b["text_mask"] == 0].any()
        # image ids come from json (source, image_id): a picture shared by two captions keeps one id
        ids = {source_image_id("test", f"img{s}-{i // 2}") for s in range(3) for i in range(7)}
        assert set(b["image_ids"].tolist()) <= ids

        r = next(streams["regions"])
        assert set(r) == {"image", "text_ids", "text_mask", "text_ids_masked", "mlm_labels",
                          "region_image_index", "region_patch_mask", "region_boxes", "is_whole_image"}
        R = r["region_image_index"].shape[0]
        assert r["image"].shape == (3, 3, 32, 32)
        assert R == 3 * 3  # two phrases + the caption per picture
        assert r["text_ids"].shape[0] == R and r["region_patch_mask"].shape == (R, N)
        assert r["region_boxes"].shape == (R, 4) and r["region_boxes"].dtype == torch.float32
        assert r["is_whole_image"].dtype == torch.bool and int(r["is_whole_image"].sum()) == 3
        assert r["region_image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert ((r["region_boxes"] >= 0) & (r["region_boxes"] <= 1)).all()
        whole = r["is_whole_image"]
        assert r["region_patch_mask"][whole].all()
        assert torch.equal(r["region_boxes"][whole], torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 3))
        assert r["region_patch_mask"][~whole].any(1).all() and not r["region_patch_mask"][~whole].all(1).any()

        t = next(streams["text"])
        assert set(t) == {"text_ids_masked", "text_mask", "mlm_labels"}
        assert t["text_mask"].shape[0] == 3 and t["text_mask"].shape[1] <= 128
        n_masked = (t["mlm_labels"] != -100).sum(1)
        assert (n_masked <= 20).all() and (n_masked >= 1).all()

        im = next(streams["images"])
        assert set(im) == {"image", "mim_mask"}
        assert im["image"].shape == (3, 3, 32, 32) and im["mim_mask"].shape == (3, N)

        c = streams.counters()
        assert c["pairs"]["samples"] == 3 and c["pairs"]["tokens"] == int(b["text_mask"].sum())
        assert c["regions"]["tokens"] == int(r["text_mask"].sum()) and c["images"]["tokens"] == 0
        assert all(v["bad_total"] == 0 and v["wait_s"] > 0 for v in c.values())


def test_text_documents_give_a_window_of_max_text_len(data, tmp_path):
    long_doc = " ".join(["red square"] * 200)
    write_shard(tmp_path / "long.tar", [{"__key__": f"d{i}", "txt": long_doc} for i in range(4)])
    cfg = from_dict(DataConfig, {"tokenizer": str(data / "tok"), "image_size": 32, "patch_size": 8,
                                 "num_workers": 0, "text": {"sources": [{"urls": str(tmp_path / "long.tar")}],
                                                            "batch_size": 2, "max_text_len": 40}})
    with StreamSet(cfg) as streams:
        t = next(streams["text"])
    assert t["text_mask"].shape == (2, 40) and bool(t["text_mask"].all())
    assert (t["text_ids_masked"][:, 0] == 0).all() and (t["text_ids_masked"][:, -1] == 2).all()  # <s> ... </s>


# -------------------------------------------------------------------------------------- regions
def _colour_pixels(image: torch.Tensor, cfg, colour: str) -> np.ndarray:
    mean = torch.tensor(cfg.augment.mean).view(3, 1, 1)
    std = torch.tensor(cfg.augment.std).view(3, 1, 1)
    rgb = ((image * std + mean) * 255).clamp(0, 255).numpy()
    r, g, b = rgb
    sel = (r > 150) & (g < 100) & (b < 100) if colour == "red" else (b > 150) & (r < 100) & (g < 110)
    ys, xs = np.nonzero(sel)
    return np.stack([xs, ys], 1)


def test_region_boxes_follow_crop_and_flip_and_words_swap(data):
    aug = {"randaugment": False}  # photometric ops would change the colours this test looks for
    cfg = make_cfg(data, kinds=("regions",), batch=4, image_size=64, augment=aug)
    S = cfg.image_size
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(data / "tok"))
    flips = set()
    with StreamSet(cfg, seed=11) as streams:
        for batch in take(streams["regions"], 4):
            for row in range(batch["region_image_index"].shape[0]):
                text = tok.decode(batch["text_ids"][row][batch["text_mask"][row] == 1], skip_special_tokens=True)
                img = batch["image"][batch["region_image_index"][row]]
                red_x = _colour_pixels(img, cfg, "red")[:, 0].mean()
                blue_x = _colour_pixels(img, cfg, "blue")[:, 0].mean()
                red_is_left = red_x < blue_x
                flips.add(not red_is_left)
                if batch["is_whole_image"][row]:
                    assert text == ("a red square left of a blue square" if red_is_left
                                    else "a red square right of a blue square")
                    continue
                colour = text.split()[1]
                want = {("red", True): "left", ("red", False): "right",
                        ("blue", True): "right", ("blue", False): "left"}[(colour, bool(red_is_left))]
                assert text == f"the {colour} square {want} of the {'blue' if colour == 'red' else 'red'} square"
                cx, cy, w, h = batch["region_boxes"][row].tolist()
                x0, x1, y0, y1 = (cx - w / 2) * S, (cx + w / 2) * S, (cy - h / 2) * S, (cy + h / 2) * S
                pix = _colour_pixels(img, cfg, colour)
                assert len(pix) > 20
                # the box covers the drawn shape (1 px of resampling slack) ...
                assert pix[:, 0].min() >= x0 - 1 and pix[:, 0].max() + 1 <= x1 + 1, (text, pix[:, 0].min(), x0, x1)
                assert pix[:, 1].min() >= y0 - 1 and pix[:, 1].max() + 1 <= y1 + 1
                # ... and not much more than the shape
                assert pix[:, 0].max() + 1 - pix[:, 0].min() >= 0.75 * (x1 - x0)
                assert pix[:, 1].max() + 1 - pix[:, 1].min() >= 0.75 * (y1 - y0)
                # the patch mask is the set of patches the box overlaps
                mask = batch["region_patch_mask"][row].view(cfg.grid, cfg.grid)
                p = cfg.patch_size
                for gy in range(cfg.grid):
                    for gx in range(cfg.grid):
                        overlap = (min(x1, (gx + 1) * p) - max(x0, gx * p) > 1e-3
                                   and min(y1, (gy + 1) * p) - max(y0, gy * p) > 1e-3)
                        assert bool(mask[gy, gx]) == overlap
    assert flips == {True, False}  # both flipped and unflipped pictures were checked


def test_left_right_swap_and_patch_mask_units():
    assert swap_left_right("Left of the right box, leftover RIGHT") == "Right of the left box, leftover LEFT"
    assert (swap_left_right("the leftmost cup, Rightmost car, moving leftwards; copyright, bright, left-hand")
            == "the rightmost cup, Leftmost car, moving rightwards; copyright, bright, right-hand")
    assert swap_left_right("LEFTMOST left, right.") == "RIGHTMOST right, left."
    m = box_patch_mask(np.array([[0.0, 0.0, 0.5, 0.25], [0.26, 0.5, 0.3, 1.0]]), 4)
    assert m[0].reshape(4, 4).tolist() == [[True, True, False, False]] + [[False] * 4] * 3
    assert m[1].reshape(4, 4)[:, 1].tolist() == [False, False, True, True] and m[1].sum() == 2


# -------------------------------------------------------------------------------------- pairs
def test_flipped_pairs_get_left_and_right_swapped_in_the_caption(data):
    # the crop could cut a square away; without it the red one is left of the blue one unless flipped
    aug = {"randaugment": False, "random_resized_crop": False}
    cfg = make_cfg(data, kinds=("pairs",), batch=7, image_size=64, augment=aug)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(data / "tok"))
    seen = Counter()
    with StreamSet(cfg, seed=11) as streams:
        for b in take(streams["pairs"], 3):
            for image, ids, mask in zip(b["image"], b["text_ids"], b["text_mask"]):
                text = tok.decode(ids[mask == 1], skip_special_tokens=True)
                red_is_left = _colour_pixels(image, cfg, "red")[:, 0].mean() < _colour_pixels(image, cfg, "blue")[:, 0].mean()
                want = "a red square left of a blue square" if red_is_left else "a red square right of a blue square"
                assert text.startswith(want + " "), (text, red_is_left)
                seen[bool(red_is_left)] += 1
    assert seen[True] and seen[False]  # flipped and unflipped pictures both checked


def pairs_row(key, source, image_id, caption):
    meta = {"image_id": image_id, "width": STORED, "height": STORED}
    if source is not None:
        meta["source"] = source
    return {"__key__": key, "jpg": jpeg(), "txt": caption, "json": meta}


def test_image_ids_are_namespaced_by_source(data, tmp_path):
    rows = [pairs_row("a", "coco", "42", "coco forty two first"), pairs_row("b", "vg", "42", "vg forty two"),
            pairs_row("c", "coco", 42, "coco forty two second"), pairs_row("d", "vg", "7", "vg seven")]
    cfg = make_cfg(data, kinds=("pairs",), batch=4, buffer=4)
    cfg.pairs.sources[0].urls = write_shard(tmp_path / "mix.tar", rows)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(data / "tok"))
    with StreamSet(cfg, seed=0) as streams:
        b = next(streams["pairs"])
    by_caption = {tok.decode(ids[m == 1], skip_special_tokens=True): int(i)
                  for ids, m, i in zip(b["text_ids"], b["text_mask"], b["image_ids"])}
    assert set(by_caption) == {r["txt"] for r in rows}
    # same source, same image_id (string or number): one picture; another source: another picture
    assert by_caption["coco forty two first"] == by_caption["coco forty two second"]
    assert by_caption["vg forty two"] != by_caption["coco forty two first"]
    assert len({by_caption["vg forty two"], by_caption["vg seven"], by_caption["coco forty two first"]}) == 3
    assert by_caption["vg forty two"] == source_image_id("vg", "42")
    # without a source an id could collide with another dataset's: rejected and counted
    cfg = make_cfg(data, kinds=("pairs",), batch=1, buffer=2)
    cfg.pairs.sources[0].urls = write_shard(tmp_path / "nosource.tar", [pairs_row("e", None, "42", "no source"), rows[0]])
    with StreamSet(cfg, seed=0) as streams:
        next(streams["pairs"])
        assert streams.counters()["pairs"]["bad"] == {"bad_json": 1}


# ---------------------------------------------------------------------------------- ranks/errors
def test_ranks_read_disjoint_shards_and_uneven_splits_yield_equally(data):
    # 5 shards over 2 ranks: rank 0 reads 3, rank 1 reads 2 (and only 14 samples, so it wraps)
    urls = [str(data / "pairs" / f"pairs-{s:06d}.tar") for s in range(3)] + \
           [str(data / "pairs" / "bad-samples.tar"), str(data / "pairs" / "pairs-000001.tar")]
    # the last one repeats a file under another name: same content, distinct shard URL
    urls[4] = f"pipe:cat {urls[4]}"
    cfg = make_cfg(data, kinds=("pairs",), workers=0, batch=4)
    cfg.pairs.sources[0].urls = urls
    sets = [StreamSet(cfg, rank=r, world_size=2, seed=5) for r in (0, 1)]
    try:
        shards = [set(s["pairs"].shards()) for s in sets]
        assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(urls)
        assert sorted(map(len, shards)) == [2, 3]
        image_ids = [set(), set()]
        for r, s in enumerate(sets):
            for b in take(s["pairs"], 9):  # 36 samples: more than either rank holds
                image_ids[r].update(b["image_ids"].tolist())
            assert s.counters()["pairs"]["batches"] == 9
            assert s.counters()["pairs"]["bad_shard_count"] == 0  # the pipe: URL was read too
        # every image seen comes from the rank's own shards
        def ids_of(url):
            shard = int(url.rsplit("-", 1)[1][:6]) if "pairs-" in url else 7
            return {source_image_id("test", f"img{shard}-{i // 2}") for i in range(7)}
        for r in (0, 1):
            own = set().union(*(ids_of(u) for u in shards[r]))
            assert image_ids[r] <= own
    finally:
        for s in sets:
            s.close()


def test_workers_split_a_rank_shards(data):
    cfg = make_cfg(data, kinds=("pairs",), workers=2)
    with StreamSet(cfg, rank=0, world_size=1) as streams:
        w0, w1 = set(streams["pairs"].shards(0)), set(streams["pairs"].shards(1))
    assert w0.isdisjoint(w1) and len(w0 | w1) == 3


def test_corrupt_shards_and_bad_samples_are_skipped_and_counted(data, caplog):
    urls = [str(data / "pairs" / n) for n in ("garbage.tar", "bad-samples.tar", "cut.tar", "pairs-000002.tar")]
    urls.append(str(data / "pairs" / "missing.tar"))
    cfg = make_cfg(data, kinds=("pairs",), workers=0, batch=4, buffer=4)
    cfg.pairs.sources[0].urls = urls
    t0 = time.perf_counter()
    with StreamSet(cfg, seed=1) as streams:
        batches = take(streams["pairs"], 6)  # 24 good samples: more than one pass over the shards
        c = streams.counters()["pairs"]
    assert time.perf_counter() - t0 < 30  # no 0.5 s sleep per bad sample
    assert all(b["text_ids"].shape[0] == 4 for b in batches)
    assert c["bad"]["bad_image"] >= 1 and c["bad"]["bad_json"] >= 1
    assert c["bad"]["missing_keys"] >= 2  # the sample without txt, the sample cut by the tar's end
    assert c["bad"]["bad_shard"] >= 2 and c["bad_shard_count"] == c["bad"]["bad_shard"]
    reported = {u for u, _ in c["bad_shards"]}
    assert reported == {urls[0], urls[4]}  # the garbage and the missing file
    assert any("garbage.tar" in r.getMessage() for r in caplog.records)


def test_a_source_without_any_readable_shard_is_an_error(data):
    cfg = make_cfg(data, kinds=("pairs",), workers=0)
    cfg.pairs.sources[0].urls = [str(data / "pairs" / "garbage.tar"), str(data / "pairs" / "missing.tar")]
    with StreamSet(cfg) as streams, pytest.raises(RuntimeError, match="none of its 2 shard"):
        next(streams["pairs"])


def test_a_stream_of_only_bad_samples_is_an_error(data, monkeypatch):
    import xfm.pretrain.data.dataset as dataset

    monkeypatch.setattr(dataset, "MAX_BAD_IN_A_ROW", 50)
    cfg = make_cfg(data, kinds=("images",), workers=0)
    cfg.images.sources[0].urls = str(data / "text" / "text-{000000..000002}.tar")  # no jpg in them
    with StreamSet(cfg) as streams, pytest.raises(RuntimeError, match=r"50 bad samples in a row.*lacks \['jpg'\]"):
        next(streams["images"])


def test_weighted_sources_are_mixed(data):
    a = {"urls": str(data / "pairs" / "pairs-000000.tar"), "weight": 3.0}
    b = {"urls": str(data / "pairs" / "pairs-{000001..000002}.tar"), "weight": 1.0}
    cfg = from_dict(DataConfig, {"tokenizer": str(data / "tok"), "image_size": 32, "patch_size": 8,
                                 "num_workers": 0, "pairs": {"sources": [a, b], "batch_size": 8, "shuffle_buffer": 8}})
    ids0 = {source_image_id("test", f"img0-{i // 2}") for i in range(7)}
    with StreamSet(cfg, seed=2) as streams:
        seen = torch.cat([x["image_ids"] for x in take(streams["pairs"], 10)]).tolist()
    frac = sum(i in ids0 for i in seen) / len(seen)
    assert 0.6 < frac < 0.9  # expected 0.75


# --------------------------------------------------------------------------- resume/determinism
def test_resume_equals_uninterrupted_with_two_workers(data):
    cfg = make_cfg(data, workers=2, batch=3, buffer=5)
    # bad samples inside the pairs stream: positions and counters must account for them too
    cfg.pairs.sources[0].urls = [str(data / "pairs" / "pairs-{000000..000002}.tar"),
                                 str(data / "pairs" / "bad-samples.tar")]
    k, n = 3, 4  # k odd: the resumed set must start with worker 1, not 0
    with StreamSet(cfg, seed=1) as live:  # a seed whose shard order reaches the bad samples (asserted below)
        for name in live.names:
            take(live[name], k)
        state = json.loads(json.dumps(live.state_dict()))  # must survive a JSON checkpoint
        expected = {name: take(live[name], n) for name in live.names}
        live_counters = live.counters()
    assert all(state["streams"][s]["next_worker"] == 1 for s in state["streams"])
    with StreamSet(cfg, seed=1) as resumed:
        resumed.load_state_dict(state)
        got = {name: take(resumed[name], n) for name in resumed.names}
        resumed_counters = resumed.counters()
    for name in expected:
        for a, b in zip(expected[name], got[name]):
            assert_batches_equal(a, b)
        for key in ("batches", "samples", "tokens", "bad"):
            assert resumed_counters[name][key] == live_counters[name][key], (name, key)
    assert live_counters["pairs"]["bad_total"] > 0


def test_resume_at_every_position_equals_uninterrupted(data):
    # batch 4, block 6: positions land inside blocks, exactly on block ends (k=3, 6), on shard
    # ends and in the second epoch (21 samples per pass)
    cfg = make_cfg(data, kinds=("pairs", "text"), workers=0, batch=4, buffer=6)
    total = 9
    with StreamSet(cfg, seed=1) as live:  # a seed whose shard order reaches the bad samples (asserted below)
        states, expected = [], {n: [] for n in live.names}
        for _ in range(total):
            states.append(live.state_dict())
            for n in live.names:
                expected[n].append(next(live[n]))
    for k in range(1, total):
        with StreamSet(cfg, seed=1) as resumed:
            resumed.load_state_dict(states[k])
            for n in resumed.names:
                for i in range(k, min(k + 2, total)):
                    assert_batches_equal(next(resumed[n]), expected[n][i])


def test_resume_skips_consumed_samples_without_decoding_them(data, monkeypatch):
    from xfm.pretrain.data.samples import PairsDecoder

    cfg = make_cfg(data, kinds=("pairs",), workers=0, batch=3, buffer=5)
    with StreamSet(cfg, seed=1) as live:  # a seed whose shard order reaches the bad samples (asserted below)
        take(live["pairs"], 6)  # 18 samples: 3 blocks and a bit, into the third shard
        state = live.state_dict()
        expected = next(live["pairs"])
    calls = []
    real = PairsDecoder.decode
    monkeypatch.setattr(PairsDecoder, "decode", lambda self, raw, rng: calls.append(raw["__key__"]) or real(self, raw, rng))
    with StreamSet(cfg, seed=1) as resumed:
        resumed.load_state_dict(state)
        assert_batches_equal(next(resumed["pairs"]), expected)
    assert len(calls) == 3  # only the 3 samples of the new batch were decoded


def test_resume_refuses_a_changed_setup(data):
    cfg = make_cfg(data, kinds=("text",), workers=0)
    with StreamSet(cfg, seed=1) as a:
        next(a["text"])
        state = a.state_dict()
    with StreamSet(cfg, seed=2) as b, pytest.raises(ValueError, match="seed: saved 1, now 2"):
        b.load_state_dict(state)
    with StreamSet(cfg, seed=1, rank=1, world_size=2) as b, pytest.raises(ValueError, match="world_size"):
        b.load_state_dict(state)


def test_same_seed_same_batches_other_seed_other_batches(data):
    cfg = make_cfg(data, kinds=("pairs", "text"), workers=0)
    runs = []
    for seed in (4, 4, 5):
        with StreamSet(cfg, seed=seed) as s:
            runs.append({n: take(s[n], 3) for n in s.names})
    for n in ("pairs", "text"):
        for a, b in zip(runs[0][n], runs[1][n]):
            assert_batches_equal(a, b)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(runs[0]["pairs"], runs[2]["pairs"]))


def test_loading_in_the_main_process_leaves_global_rngs_alone(data):
    cfg = make_cfg(data, kinds=("pairs",), workers=0)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    with StreamSet(cfg) as s:
        next(s["pairs"])
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())


# ---------------------------------------------------------------------------------- throughput
def test_measure_loader_throughput(data):
    cfg = make_cfg(data, kinds=("pairs",), workers=0)
    r = measure_loader_throughput(cfg, "pairs", batches=3, warmup_batches=1)
    assert r["batches"] == 3 and r["samples"] == 9 and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="exactly one"):
        measure_loader_throughput(cfg, "pairs")


def test_throughput_command_reads_the_data_section_of_a_config(data, tmp_path, capsys):
    import yaml

    from xfm.pretrain.data.throughput import main

    cfg = {"model": {"size": "tiny"}, "data": {
        "tokenizer": str(data / "tok"), "image_size": 32, "patch_size": 8, "num_workers": 0,
        "text": {"sources": [{"urls": str(data / "text" / "text-{000000..000002}.tar")}], "batch_size": 2}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["--config", str(path), "--batches", "2", "--set", "data.text.batch_size=3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["stream"], r["batches"], r["samples"]) for r in rows] == [("text", 2, 6)]
