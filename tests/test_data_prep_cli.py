"""The `xfm-prep` sharder subcommands as a user runs them: flags parsed (sizes, formats), the
format guess printed, clear errors and exit codes."""
import json
import os
import subprocess
import sys

import pytest

from xfm.data_prep import fixtures as fx
from xfm.data_prep.options import ShardOptions, parse_size
from xfm.data_prep.textsplit import split_document

PY = sys.executable


def _cli(*args):
    return subprocess.run([PY, "-m", "xfm.data_prep.cli", *args], capture_output=True, text=True)


def test_parse_size():
    assert parse_size("1G") == 1 << 30 and parse_size("500M") == 500 << 20
    assert parse_size("64k") == 65536 and parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_size("12345") == 12345
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_options_reject_unknown_and_bad_values():
    with pytest.raises(TypeError, match="unknown shard option.*resise"):
        ShardOptions.build("pairs", resise=3)
    with pytest.raises(ValueError, match="--quality"):
        ShardOptions.build("pairs", quality=0)


def test_split_never_exceeds_limit_and_keeps_all_words():
    text = ("Short one. " * 5) + "A" * 95 + " tail words here. Last!"
    pieces = split_document(text, 40)
    assert all(0 < len(p) <= 40 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_cli_pairs_guess_printed_and_sizes_parsed(tmp_path):
    ann = fx.coco_captions(str(tmp_path / "raw"), 3)
    r = _cli("pairs", "--input", ann, "--images", str(tmp_path / "raw/images"), "--out",
             str(tmp_path / "o"), "--shard-bytes", "10K", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "format coco-captions (guessed)" in r.stderr and "pattern:" in r.stderr
    # the progress bar (records of the input) ends complete; --no-progress turns it off
    assert "xfm-prep pairs: 100%" in r.stderr and "3/3" in r.stderr
    stats = json.load(open(tmp_path / "o/stats.json"))
    assert stats["options"]["shard_bytes"] == 10240 and stats["totals"]["samples"] == 6
    assert all(s["bytes"] <= 10240 for s in stats["shards"]) and len(stats["shards"]) > 2
    # one JSON metrics line per completed shard, the last one with the run's totals
    metrics = [json.loads(l) for l in open(tmp_path / "o/metrics.jsonl")]
    assert [m["shard"] for m in metrics] == [s["name"] for s in stats["shards"]]
    assert metrics[-1]["samples_total"] == 6 and metrics[-1]["samples_per_s"] > 0
    r = _cli("verify", str(tmp_path / "o"))
    assert r.returncode == 0 and "6 samples, 0 problem(s)" in r.stdout


def test_cli_malformed_input_exit_code_and_message(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [}')
    r = _cli("pairs", "--input", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "bad.json: line 1, column 13: invalid JSON" in r.stderr
    assert not os.path.exists(tmp_path / "o" / "stats.json")
    r = _cli("regions", "--input", str(tmp_path / "bad.json"), "--format", "karpathy",
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "invalid choice: 'karpathy'" in r.stderr


def test_cli_text_and_images(tmp_path):
    (tmp_path / "c.txt").write_text("one doc\nanother doc\n")
    r = _cli("text", "--input", str(tmp_path / "c.txt"), "--out", str(tmp_path / "t"),
             "--max-chars", "0", "--no-progress")
    assert r.returncode == 0 and "one document per line" in r.stderr
    assert "%|" not in r.stderr                                 # no progress bar
    for c in ("a", "b"):
        fx.write_image(str(tmp_path / "cls" / c / "x.jpg"))
    r = _cli("images", "--input", str(tmp_path / "cls"), "--out", str(tmp_path / "i"),
             "--resize", "32", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "i/classes.json")) == {"a": 0, "b": 1}
