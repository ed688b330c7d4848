"""A source with fewer shards than (rank, loader worker) readers is split by sample.

What must hold: over all ranks x workers, every sample of a pass is served exactly once (counted
by key, on the readers and through real 2-worker loaders of 2 ranks), every reader gets the same
share when the shards hold equal counts, many shards are still split by whole shard, resume stays
exact inside a sample-split shard, the split is logged once as a warning, and a position saved
under another split is refused.
"""
from __future__ import annotations

import io
import json
import logging
from collections import Counter

import pytest
import torch
from PIL import Image

import webdataset as wds

from xfm.config import from_dict
from xfm.pretrain.data import DataConfig, StreamSet
from xfm.pretrain.data.seeding import source_image_id
from xfm.pretrain.data.shards import SourceReader, assign_shards, splits_by_sample


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def write_shards(root, kind: str, counts: list[int]) -> list[str]:
    """``len(counts)`` shards; sample keys ``s<shard>_<index>``."""
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for s, n in enumerate(counts):
        url = str(root / f"{kind}-{s:06d}.tar")
        with wds.TarWriter(url) as w:
            for i in range(n):
                key = f"s{s}_{i:03d}"
                if kind == "pairs":
                    w.write({"__key__": key, "jpg": _jpeg((10 * s, 10 * i, 90)), "txt": f"a square {s} {i}",
                             "json": {"image_id": key, "source": "split", "width": 16, "height": 16}})
                else:
                    w.write({"__key__": key, "txt": f"document {s} number {i} of the test"})
        urls.append(url)
    return urls


def one_pass(shares) -> list[str]:
    """The keys one reader serves in its first pass (epoch 0) over its shares."""
    reader = SourceReader(shares, (0, 0, 0, 0, 0), on_error=lambda url, exn: pytest.fail(f"{url}: {exn}"))
    keys = []
    while True:
        raw = reader.next_raw()
        if reader.epoch > 0:
            return keys
        keys.append(raw["__key__"])


@pytest.mark.parametrize("shards,world,workers", [
    (1, 1, 3), (2, 2, 2), (3, 2, 2), (5, 2, 4), (6, 4, 2), (4, 2, 2), (7, 2, 2), (3, 1, 0)])
def test_every_sample_of_a_pass_goes_to_exactly_one_reader(tmp_path, shards, world, workers):
    readers = world * max(1, workers)
    per_shard = 2 * readers  # a multiple of every modulus the split can use
    urls = write_shards(tmp_path, "text", [per_shard] * shards)
    served: Counter = Counter()
    per_reader = []
    for rank in range(world):
        for worker in range(max(1, workers)):
            keys = one_pass(assign_shards(urls, rank, world, worker, workers))
            served.update(keys)
            per_reader.append(len(keys))
    everything = {f"s{s}_{i:03d}" for s in range(shards) for i in range(per_shard)}
    assert set(served) == everything
    assert set(served.values()) == {1}, {k: n for k, n in served.items() if n != 1}
    if shards < readers:  # split by sample: equal shares (by shard: whole shards, as many as fall)
        assert set(per_reader) == {shards * per_shard // readers}, per_reader
        assert splits_by_sample(shards, world, workers)
    else:
        assert not splits_by_sample(shards, world, workers)


def test_enough_shards_are_split_by_whole_shard_as_before():
    urls = [f"/d/x-{i}.tar" for i in range(10)]
    for rank in range(2):
        for worker in range(2):
            shares = assign_shards(urls, rank, 2, worker, 2)
            # ranks first, then workers; each shard whole
            assert [s.url for s in shares] == urls[rank::2][worker::2]
            assert all(s.modulus == 1 and s.takes(17) for s in shares)
    with pytest.raises(ValueError, match="worker 2 out of range"):
        assign_shards(urls, 0, 2, 2, 2)


def pairs_cfg(tok, urls, workers, batch, buffer, **over):
    d = {"tokenizer": str(tok), "image_size": 16, "patch_size": 8, "num_workers": workers,
         "pairs": {"sources": [{"urls": urls}], "batch_size": batch, "shuffle_buffer": buffer}}
    d.update(over)
    return from_dict(DataConfig, d, "test")


def test_two_ranks_of_two_workers_serve_two_shards_once_each(tmp_path, bpe_tokenizer_dir, caplog):
    # 2 shards, 2 ranks x 2 workers: each reader keeps every other sample of one shard (4 a pass);
    # a block of 4 = one pass, batch 2, so a rank's first 4 batches are its readers' first passes
    urls = write_shards(tmp_path, "pairs", [8, 8])
    cfg = pairs_cfg(bpe_tokenizer_dir, urls, workers=2, batch=2, buffer=4)
    id_of = {source_image_id("split", f"s{s}_{i:03d}"): f"s{s}_{i:03d}" for s in range(2) for i in range(8)}
    served: Counter = Counter()
    with caplog.at_level(logging.WARNING, logger="xfm.pretrain.data"):
        for rank in range(2):
            with StreamSet(cfg, rank=rank, world_size=2, seed=3) as streams:
                for _ in range(4):
                    served.update(id_of[i] for i in next(streams["pairs"])["image_ids"].tolist())
    assert set(served) == set(id_of.values()) and set(served.values()) == {1}, served
    warnings = [r.getMessage() for r in caplog.records if "split by sample" in r.getMessage()]
    assert len(warnings) == 2  # once per rank's stream, not once per worker or batch
    assert "2 shard(s) for 4 readers (2 rank(s) x 2 loader worker(s))" in warnings[0]


def test_no_warning_when_every_reader_gets_whole_shards(tmp_path, bpe_tokenizer_dir, caplog):
    urls = [f"{tmp_path}/never-read-{i}.tar" for i in range(4)]
    cfg = pairs_cfg(bpe_tokenizer_dir, urls, workers=2, batch=2, buffer=4)
    with caplog.at_level(logging.WARNING, logger="xfm.pretrain.data"):
        StreamSet(cfg, rank=0, world_size=2).close()
    assert not [r for r in caplog.records if "split by sample" in r.getMessage()]


def text_cfg(tok, urls, workers, batch, buffer):
    return from_dict(DataConfig, {"tokenizer": str(tok), "image_size": 16, "patch_size": 8,
                                  "num_workers": workers,
                                  "text": {"sources": [{"urls": urls}], "batch_size": batch,
                                           "shuffle_buffer": buffer}}, "test")


def _equal(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_inside_a_sample_split_shard_at_every_position(tmp_path, bpe_tokenizer_dir):
    # one shard of 13 for 2 ranks: rank 1 keeps the odd samples (6 a pass); batch 2, block 3:
    # positions fall between kept and skipped samples, on block ends and into the next epoch
    urls = write_shards(tmp_path, "text", [13])
    cfg = text_cfg(bpe_tokenizer_dir, urls, workers=0, batch=2, buffer=3)
    total = 8
    with StreamSet(cfg, rank=1, world_size=2, seed=5) as live:
        states, expected = [], []
        for _ in range(total):
            states.append(json.loads(json.dumps(live.state_dict())))
            expected.append(next(live["text"]))
    assert states[-1]["streams"]["text"]["sample_split"] == [True]
    for k in range(1, total):
        with StreamSet(cfg, rank=1, world_size=2, seed=5) as resumed:
            resumed.load_state_dict(states[k])
            for i in range(k, min(k + 2, total)):
                _equal(next(resumed["text"]), expected[i])


def test_resume_with_two_workers_sharing_one_shard(tmp_path, bpe_tokenizer_dir):
    urls = write_shards(tmp_path, "text", [11])
    cfg = text_cfg(bpe_tokenizer_dir, urls, workers=2, batch=2, buffer=3)
    with StreamSet(cfg, seed=8) as live:
        for _ in range(3):  # odd: the resumed set continues with worker 1
            next(live["text"])
        state = live.state_dict()
        expected = [next(live["text"]) for _ in range(4)]
    with StreamSet(cfg, seed=8) as resumed:
        resumed.load_state_dict(state)
        for want in expected:
            _equal(next(resumed["text"]), want)


def test_a_position_saved_under_the_old_whole_shard_reading_is_refused(tmp_path, bpe_tokenizer_dir):
    urls = write_shards(tmp_path, "text", [6])
    cfg = text_cfg(bpe_tokenizer_dir, urls, workers=2, batch=2, buffer=3)
    with StreamSet(cfg, seed=1) as s:
        state = s.state_dict()
        old = json.loads(json.dumps(state))
        del old["streams"]["text"]["sample_split"]  # what a loader without the split saved
        with pytest.raises(ValueError, match=r"sample_split: saved \[False\], now \[True\]"):
            s.load_state_dict(old)
        s.load_state_dict(state)


def test_a_shard_too_small_for_its_readers_is_a_clear_error(tmp_path, bpe_tokenizer_dir):
    urls = write_shards(tmp_path, "text", [2])  # 3 readers (3 ranks): the third keeps nothing
    cfg = text_cfg(bpe_tokenizer_dir, urls, workers=0, batch=1, buffer=1)
    with StreamSet(cfg, rank=0, world_size=3) as s:
        next(s["text"])
    with StreamSet(cfg, rank=2, world_size=3) as s, \
            pytest.raises(RuntimeError, match="needs at least 3 samples to feed every reader"):
        next(s["text"])


def test_text_of_each_served_sample_is_its_own(tmp_path, bpe_tokenizer_dir):
    # the kept samples are decoded from their own bytes (not a neighbour's): the documents of one
    # pass of rank 0's reader, restored from masked ids + labels, are the even-numbered ones
    from xfm.tokenizer import load_tokenizer

    tok = load_tokenizer(bpe_tokenizer_dir)
    urls = write_shards(tmp_path, "text", [6])
    cfg = text_cfg(bpe_tokenizer_dir, urls, workers=0, batch=3, buffer=3)
    with StreamSet(cfg, rank=0, world_size=2, seed=2) as s:
        b = next(s["text"])
    ids = torch.where(b["mlm_labels"] != -100, b["mlm_labels"], b["text_ids_masked"])
    docs = sorted(tok.decode(row[m == 1], skip_special_tokens=True) for row, m in zip(ids, b["text_mask"]))
    assert docs == [f"document 0 number {i} of the test" for i in (0, 2, 4)]


def test_one_corrupt_shard_met_twice_across_an_epoch_boundary_is_not_a_dead_source(tmp_path):
    """A reader with one good and one corrupt shard: whenever an epoch ends on the corrupt shard
    and the next begins with it, two empty shards come in a row, but they are the same shard.
    The reader must skip it and go on (it once stopped with "none of its 2 shard(s) gave a
    sample"); a source whose every shard is corrupt must still stop with that message."""
    good = write_shards(tmp_path / "good", "text", [3])
    corrupt = tmp_path / "text-corrupt.tar"
    corrupt.write_bytes(b"not a tar archive" * 16)
    errors = []
    reader = SourceReader([good[0], str(corrupt)], (0, 0, 0, 0, 0), on_error=lambda url, exn: errors.append(url))
    orders = []
    while reader.epoch < 40:
        if not orders or orders[-1][0] != reader.epoch:
            orders.append((reader.epoch, list(reader._order)))
        assert reader.next_raw()["__key__"].startswith("s0_")
    # the case did occur: some epoch ended on the corrupt shard (index 1) and the next began with it
    assert any(a[1][-1] == 1 and b[1][0] == 1 for a, b in zip(orders, orders[1:])), orders
    assert errors and set(errors) == {str(corrupt)}
    dead = SourceReader([str(corrupt), str(corrupt)], (0, 0, 0, 0, 0), on_error=lambda url, exn: None)
    with pytest.raises(RuntimeError, match="none of its 2 shard"):
        dead.next_raw()
