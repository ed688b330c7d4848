"""Shard output behaviour: round trip, limits, determinism across worker counts, resume after a
kill, dedup, the bad-input budget, refusing to mix runs, and `xfm-prep verify`."""
import glob
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import webdataset as wds

from xfm.data_prep import fixtures as fx
from xfm.data_prep.images import prepare_image
from xfm.data_prep.pipeline import TooManyBadInputs
from xfm.data_prep.sharders import shard
from xfm.data_prep.verify import verify
from xfm.data_prep.writer import OutputDirError

OPTS = dict(progress=False, max_bad_fraction=1.0)
PY = sys.executable


def _shards(out):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(out, "*.tar")))}


def _pairs_corpus(root, n=12, kinds=fx.GOOD_KINDS):
    """JSON lines pairs over images of every mode, plus a few bad items."""
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name = f"{i}.{'png' if 'png' in kind else 'jpg'}"
        fx.write_image(os.path.join(root, name), kind, size=(80 + i, 60), seed=i)
        rows.append({"image": name, "caption": [f"caption {i} a", f"caption {i} b"]})
    fx.write_image(os.path.join(root, "trunc.jpg"), "truncated_jpeg")
    fx.write_image(os.path.join(root, "zero.jpg"), "zero_bytes")
    rows[3:3] = [{"image": "trunc.jpg", "caption": "bad"}, {"image": "missing.jpg", "caption": "x"},
                 {"image": "zero.jpg", "caption": "z"}, {"image": "0.jpg", "caption": "   "}]
    path = os.path.join(root, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path, rows


def test_round_trip_every_sample_identical(tmp_path):
    path, rows = _pairs_corpus(str(tmp_path / "raw"))
    out = str(tmp_path / "out")
    stats = shard("pairs", [path], out, shard_samples=5, resize=40, quality=85, **OPTS)
    expected = []
    for r in rows:
        caps = r["caption"] if isinstance(r["caption"], list) else [r["caption"]]
        caps = [c for c in caps if c.strip()]
        if not caps or r["image"] in ("trunc.jpg", "missing.jpg", "zero.jpg"):
            continue
        img = prepare_image(open(tmp_path / "raw" / r["image"], "rb").read(), 40, 85)
        expected += [(c, img) for c in caps]
    samples = list(wds.WebDataset(stats["pattern"], shardshuffle=False))
    assert len(samples) == len(expected) == stats["totals"]["samples"]
    for s, (cap, img) in zip(samples, expected):
        assert s["txt"].decode() == cap and s["jpg"] == img.data
        meta = json.loads(s["json"])
        assert (meta["width"], meta["height"]) == (img.width, img.height)
    # limits and the stats that describe them
    assert [sh["samples"] for sh in stats["shards"]] == [5] * (len(expected) // 5) + (
        [len(expected) % 5] if len(expected) % 5 else [])
    assert stats["skipped"] == {"empty_caption": 1, "empty_file": 1, "missing_file": 1,
                                "undecodable_image": 1}
    rejected = [json.loads(l) for l in open(os.path.join(out, "rejected.jsonl"))]
    assert [r["reason"] for r in rejected] == ["undecodable_image", "missing_file", "empty_file",
                                               "empty_caption"]
    assert rejected[1]["where"] == "line 5" and rejected[1]["image"].endswith("missing.jpg")
    # plain tar can list every shard; members carry fixed metadata
    listing = subprocess.run(["tar", "-tvf", os.path.join(out, stats["shards"][0]["name"])],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(listing) == 15 and all(" 0/0 " in l and "1970-01-01" in l for l in listing)
    assert verify(out, log=lambda m: None)["problems"] == []


def test_shard_bytes_limit(tmp_path):
    path, _ = _pairs_corpus(str(tmp_path / "raw"))
    stats = shard("pairs", [path], str(tmp_path / "out"), shard_bytes="20K", **OPTS)
    assert len(stats["shards"]) > 2
    assert all(s["bytes"] <= 20 * 1024 for s in stats["shards"])
    assert all(os.path.getsize(tmp_path / "out" / s["name"]) == s["bytes"] for s in stats["shards"])
    assert stats["pattern"].endswith(f"pairs-{{000000..{len(stats['shards']) - 1:06d}}}.tar")


def test_workers_2_byte_identical_to_workers_1(tmp_path):
    path, _ = _pairs_corpus(str(tmp_path / "raw"), n=24)
    # a file PIL cannot identify: its error message must not leak a memory address into
    # rejected.jsonl (that made the listing differ from run to run)
    fx.write_image(str(tmp_path / "raw" / "garbage.jpg"), "garbage")
    with open(path, "a") as f:
        f.write(json.dumps({"image": "garbage.jpg", "caption": "g"}) + "\n")
    common = dict(shard_samples=7, resize=50, **OPTS)
    s1 = shard("pairs", [path], str(tmp_path / "w1"), workers=1, **common)
    s2 = shard("pairs", [path], str(tmp_path / "w2"), workers=2, **common)
    assert _shards(tmp_path / "w1") == _shards(tmp_path / "w2")
    assert s1["shards"] == s2["shards"]
    assert (open(tmp_path / "w1/rejected.jsonl").read() == open(tmp_path / "w2/rejected.jsonl").read())
    assert s1["skipped"]["undecodable_image"] == 2          # the truncated file and the garbage
    assert "0x" not in open(tmp_path / "w1/rejected.jsonl").read()


def test_dedup_exact_image_bytes(tmp_path):
    root = tmp_path / "raw"
    fx.write_image(str(root / "a.jpg"), seed=1)
    fx.write_image(str(root / "copy_of_a.jpg"), seed=1)
    fx.write_image(str(root / "b.jpg"), seed=2)
    rows = [{"image": "a.jpg", "caption": ["a1", "a2"]}, {"image": "copy_of_a.jpg", "caption": "c"},
            {"image": "b.jpg", "caption": "b"}]
    (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = shard("pairs", [str(root / "p.jsonl")], str(tmp_path / "o"), dedup=True, **OPTS)
    samples = list(wds.WebDataset(stats["pattern"], shardshuffle=False))
    assert [s["txt"] for s in samples] == [b"a1", b"a2", b"b"]   # same image, two captions: kept
    assert stats["skipped"] == {"duplicate_image": 1}
    rej = json.loads(open(tmp_path / "o/rejected.jsonl").readline())
    assert rej["image_id"] == "copy_of_a.jpg" and "a.jpg" in rej["detail"]


def test_max_bad_fraction_aborts_with_clear_error(tmp_path):
    path, _ = _pairs_corpus(str(tmp_path / "raw"), n=6)
    with pytest.raises(TooManyBadInputs, match=r"4 of 16 samples rejected \(25\.0%\), more than "
                                               r"--max-bad-fraction 10\.0%.*rejected\.jsonl"):
        shard("pairs", [path], str(tmp_path / "o"), progress=False, max_bad_fraction=0.1)
    assert len(open(tmp_path / "o/rejected.jsonl").readlines()) == 4
    assert not os.path.exists(tmp_path / "o/stats.json")
    # CLI: non-zero exit, message on stderr
    r = subprocess.run([PY, "-m", "xfm.data_prep.cli", "pairs", "--input", path, "--out",
                        str(tmp_path / "o2"), "--max-bad-fraction", "0.2", "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error: aborting: 4 of 16 samples rejected" in r.stderr
    # every image missing: the message points at --images
    with pytest.raises(TooManyBadInputs, match=r"Reasons: missing_file 9, empty_caption 1\. "
                                               r"Relative image paths are looked up under --images"):
        shard("pairs", [path], str(tmp_path / "o3"), images=str(tmp_path / "elsewhere"),
              progress=False)


def test_refuses_to_mix_runs_unless_overwrite(tmp_path):
    path, _ = _pairs_corpus(str(tmp_path / "raw"), n=4)
    out = str(tmp_path / "o")
    shard("pairs", [path], out, **OPTS)
    with pytest.raises(OutputDirError, match="different run"):
        shard("pairs", [path], out, resize=30, **OPTS)
    stats = shard("pairs", [path], out, resize=30, overwrite=True, **OPTS)
    assert stats["options"]["resize"] == 30
    # changed input contents are a different run too (the input fingerprint hashes the file)
    with open(path, "a") as f:
        f.write(json.dumps({"image": "0.jpg", "caption": "one more"}) + "\n")
    with pytest.raises(OutputDirError, match="different run"):
        shard("pairs", [path], out, resize=30, **OPTS)
    changed = shard("pairs", [path], str(tmp_path / "o_changed"), resize=30, **OPTS)
    assert changed["input_fingerprint"] != stats["input_fingerprint"]
    assert changed["totals"]["samples"] == stats["totals"]["samples"] + 1
    with open(path) as f:
        lines = f.readlines()[:-1]
    with open(path, "w") as f:
        f.writelines(lines)
    # same run again: everything is already done, nothing changes
    before = _shards(out)
    shard("pairs", [path], out, resize=30, **OPTS)
    assert _shards(out) == before


def _slow_corpus(root, n_images=1500):
    """COCO captions over a few distinct files referenced many times: cheap to build, slow
    enough to shard that the test can kill the run in the middle."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for k in range(8):
        fx.write_image(os.path.join(root, "img", f"{k}.png"), "png", size=(120, 90), seed=k)
    images = [{"id": i, "file_name": f"{i % 8}.png"} for i in range(n_images)]
    anns = [{"id": j, "image_id": j // 3, "caption": f"picture {j // 3} caption {j % 3}"}
            for j in range(3 * n_images)]
    path = os.path.join(root, "captions.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns}, f)
    return path


def _as_a_foreground_run():
    """In the child: Ctrl-C (SIGINT) back to its default. A test suite started as a background
    job of a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: the run would ignore the stop and finish. Niced, so
    that on 2 cores the run's 3 busy processes do not starve the poller."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.nice(10)


def _start_and_stop(cmd, out, sig):
    """Start ``cmd``, send ``sig`` to its process group once it has completed one new shard."""
    done = len(glob.glob(os.path.join(out, ".progress", "pairs-*.tar.json")))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_as_a_foreground_run)
    state = os.path.join(out, ".progress", f"pairs-{done:06d}.tar.json")
    deadline = time.time() + 120
    while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, sig)                 # the run and its worker processes
    stderr = proc.communicate()[1].decode()
    assert os.path.exists(state), stderr
    assert not os.path.exists(os.path.join(out, "stats.json")), "run finished before the stop"
    return proc.returncode, stderr


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    ann = _slow_corpus(str(tmp_path / "raw"))
    args = ["--input", ann, "--images", str(tmp_path / "raw/img"), "--shard-samples", "250",
            "--resize", "40", "--no-progress"]
    ref = str(tmp_path / "ref")
    shard("pairs", [ann], ref, images=str(tmp_path / "raw/img"), shard_samples=250, resize=40,
          progress=False)
    out = str(tmp_path / "out")
    cmd = [PY, "-m", "xfm.data_prep.cli", "pairs", *args, "--out", out, "--workers", "2"]
    # Ctrl-C: a short message (no traceback from the run or its workers), exit status 130
    rc, stderr = _start_and_stop(cmd, out, signal.SIGINT)
    assert rc == 130 and "interrupted" in stderr and "resume" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    # the resumed run is killed outright (no clean-up at all), then resumed again
    rc, stderr = _start_and_stop(cmd, out, signal.SIGKILL)
    assert rc == -signal.SIGKILL and "resuming after" in stderr
    r = subprocess.run(cmd[:-2], capture_output=True, text=True)       # and with 1 worker
    assert r.returncode == 0, r.stderr
    assert "resuming after" in r.stderr
    assert _shards(out) == _shards(ref) and len(_shards(ref)) == 18
    assert not glob.glob(os.path.join(out, "*.tmp"))
    s_out, s_ref = (json.load(open(os.path.join(d, "stats.json"))) for d in (out, ref))
    assert s_out["shards"] == s_ref["shards"] and s_out["totals"] == s_ref["totals"]


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_verify_catches_truncated_and_corrupt_shards(tmp_path, capsys):
    path, _ = _pairs_corpus(str(tmp_path / "raw"), n=10)
    out = str(tmp_path / "o")
    stats = shard("pairs", [path], out, shard_samples=8, **OPTS)
    assert verify(out, log=lambda m: None)["problems"] == []
    shard0 = os.path.join(out, stats["shards"][0]["name"])
    # cut on a 512-byte boundary right after the first member: tar reads fine, fields go missing
    with tarfile.open(shard0) as tf:
        first = tf.getmembers()[0]
    cut = first.offset_data + -(-first.size // 512) * 512
    _truncate(shard0, cut)
    problems = verify(out, log=lambda m: None)["problems"]
    assert any("missing ['json', 'txt']" in p for p in problems), problems
    assert any("truncated" in p for p in problems)
    # the CLI exits non-zero and prints counts
    r = subprocess.run([PY, "-m", "xfm.data_prep.cli", "verify", out], capture_output=True, text=True)
    assert r.returncode == 1 and "PROBLEM" in r.stderr and "samples" in r.stdout
    # a cut between two samples loses whole samples without any missing field: counts catch it
    stats = shard("pairs", [path], out, shard_samples=8, overwrite=True, **OPTS)
    with tarfile.open(shard0) as tf:
        fourth = [m for m in tf.getmembers() if m.name.startswith("000000003.")][0]
    _truncate(shard0, fourth.offset)
    problems = verify(out, log=lambda m: None)["problems"]
    assert any("3 samples, stats.json says 8" in p for p in problems), problems
    # a corrupted image inside an intact tar: the sha256 in stats.json catches any change ...
    stats = shard("pairs", [path], out, shard_samples=8, overwrite=True, **OPTS)
    with tarfile.open(shard0) as tf:
        jpg = [m for m in tf.getmembers() if m.name.endswith(".jpg")][1]
    with open(shard0, "r+b") as f:
        f.seek(jpg.offset_data)
        f.write(b"\0" * jpg.size)
    problems = verify(out, log=lambda m: None)["problems"]
    assert any("sha256 differs" in p for p in problems), problems
    # ... and decoding every image catches it without the checksum (a shard whose stats.json was
    # rewritten, or a copy without its stats.json)
    import hashlib

    stats_path = os.path.join(out, "stats.json")
    st = json.load(open(stats_path))
    st["shards"][0]["sha256"] = hashlib.sha256(open(shard0, "rb").read()).hexdigest()
    with open(stats_path, "w") as f:
        json.dump(st, f)
    problems = verify(out, log=lambda m: None)["problems"]
    assert len(problems) == 1 and f"sample {jpg.name[:9]}: image does not decode" in problems[0], problems
    os.remove(stats_path)
    problems = verify(out, log=lambda m: None)["problems"]
    assert any("image does not decode" in p for p in problems)
    assert any("stats.json is missing" in p for p in problems)
    assert verify(str(tmp_path / "nowhere"), log=lambda m: None)["problems"] == [
        f"{tmp_path / 'nowhere'}: no such folder"]


def test_unexpected_error_on_one_item_is_rejected_not_fatal(tmp_path, monkeypatch):
    from xfm.data_prep import process

    path, _ = _pairs_corpus(str(tmp_path / "raw"), n=4)
    real = process.prepare_image

    def flaky(data, *args):
        if data == open(tmp_path / "raw" / "1.png", "rb").read():
            raise RuntimeError("codec bug")
        return real(data, *args)

    monkeypatch.setattr(process, "prepare_image", flaky)
    stats = shard("pairs", [path], str(tmp_path / "o"), **OPTS)
    assert stats["skipped"]["processing_error"] == 1 and stats["totals"]["samples"] == 6
    rej = [json.loads(l) for l in open(tmp_path / "o/rejected.jsonl")]
    assert any(r["reason"] == "processing_error" and "codec bug" in r["detail"] for r in rej)


def test_verify_checks_each_kind_fields():
    from xfm.data_prep.verify import check_sample

    jpg = fx.image_bytes("jpeg")                                   # 96x64
    meta = {"image_id": "1", "width": 96, "height": 64, "caption": None,
            "regions": [{"phrase": "box", "bbox": [20, 10, 30, 24]}]}
    good = {"jpg": jpg, "json": json.dumps(meta).encode()}
    assert check_sample("regions", "k", good, None) == []
    assert check_sample("regions", "k", {"jpg": jpg}, None) == ["sample k: missing ['json'] (has ['jpg'])"]
    bad = dict(meta, regions=[{"phrase": "box", "bbox": [80, 10, 30, 24]}])
    assert "bbox [80, 10, 30, 24] outside the 96x64 image" in check_sample(
        "regions", "k", {"jpg": jpg, "json": json.dumps(bad).encode()}, None)[0]
    no_caption = {k: v for k, v in meta.items() if k != "caption"}
    assert "caption missing" in check_sample(
        "regions", "k", {"jpg": jpg, "json": json.dumps(no_caption).encode()}, None)[0]
    pairs_meta = {"image_id": "1", "source": "x", "width": 64, "height": 96}
    assert "image is 96x64 but json says 64x96" in check_sample(
        "pairs", "k", {"jpg": jpg, "txt": b"c", "json": json.dumps(pairs_meta).encode()}, None)[0]
    assert check_sample("images", "k", {"jpg": jpg, "cls": b"1"}, {0, 1}) == []
    assert "cls 7 is not a class index" in check_sample("images", "k", {"jpg": jpg, "cls": b"7"},
                                                        {0, 1})[0]
    assert "not an ASCII integer" in check_sample("images", "k", {"jpg": jpg, "cls": b"x"}, None)[0]
    assert check_sample("text", "k", {"txt": b"  "}, None) == ["sample k: txt is empty"]
    png = fx.image_bytes("rgba_png")
    assert "image mode RGBA, expected RGB" in check_sample("images", "k", {"jpg": png, "cls": b"0"},
                                                           None)[0]
