"""metrics.jsonl: a reader polling a running job, and a run resumed after a kill mid-write."""
import json

import pytest

from xfm.runtime.metrics import METRICS_FILE, MetricsWriter, read_metrics


def _write_lines(path, *chunks):
    path.write_text("".join(chunks))


def test_live_reader_leaves_the_line_being_written(tmp_path):
    # what a poller sees when it reads while rank 0 is half way through copying a record
    whole = json.dumps({"step": 1, "loss": 3.0}) + "\n"
    half = json.dumps({"step": 2, "loss": 2.5, "note": "x" * 50})[:30]
    _write_lines(tmp_path / METRICS_FILE, whole, half)
    assert read_metrics(tmp_path, live=True) == [{"step": 1, "loss": 3.0}]
    # a finished run's file must be whole: the cut line is an error naming the file and line
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}: line 2 is cut off"):
        read_metrics(tmp_path)


def test_a_line_that_is_not_json_names_file_and_line(tmp_path):
    _write_lines(tmp_path / METRICS_FILE, '{"step": 1}\n', '\n', '{"step": 2, "lo\n', '{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}: line 3 is not a JSON record"):
        read_metrics(tmp_path, live=True)  # live excuses only the unterminated tail


def test_resume_after_a_torn_write_keeps_every_whole_record(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"step": 1, "loss": 3.0})
    w.close()
    # kill -9 in the middle of the next record
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"loss": 2.9, "st')
    w = MetricsWriter(tmp_path, tensorboard=False)  # the resumed run appends
    w.write({"step": 2, "loss": 2.8})
    w.close()
    recs = read_metrics(tmp_path)
    assert [r for r in recs if "event" not in r] == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.8}]
    dropped = [r for r in recs if r.get("event") == "torn_line_dropped"]
    assert len(dropped) == 1 and dropped[0]["bytes"] == len('{"loss": 2.9, "st')


def test_a_whole_file_is_left_as_it_is(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"step": 1})
    w.close()
    before = (tmp_path / METRICS_FILE).read_bytes()
    MetricsWriter(tmp_path, tensorboard=False).close()
    assert (tmp_path / METRICS_FILE).read_bytes() == before


def test_a_torn_line_longer_than_a_read_block_is_cut_whole(tmp_path):
    from xfm.runtime.metrics import _drop_torn_tail

    path = tmp_path / METRICS_FILE
    path.write_bytes(b'{"step": 1}\n' + b'{"x": "' + b"y" * 50)
    assert _drop_torn_tail(path, block=8) == 57 and path.read_bytes() == b'{"step": 1}\n'
    path.write_bytes(b"no newline at all")
    assert _drop_torn_tail(path, block=4) == 17 and path.read_bytes() == b""
