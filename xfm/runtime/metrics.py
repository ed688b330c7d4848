"""Run reporting shared by pretraining and fine-tuning: JSON lines on rank 0 (flushed per line,
so a killed run keeps its log), optional TensorBoard, peak memory."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

METRICS_FILE = "metrics.jsonl"


def memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


TENSORBOARD_MISSING = ("logging.tensorboard is true, but the tensorboard package is not installed: "
                       "`pip install tensorboard` (the `tensorboard` extra of xfm's setup.py), "
                       "or set logging.tensorboard=false (metrics.jsonl is written either way)")


def require_tensorboard():
    """``SummaryWriter``, or the error that says what to install. The trainer calls it on every
    rank before anything starts, so a missing optional package fails the job at once (not after
    the model is built, with the other ranks left waiting in a collective)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard is an optional extra
        raise RuntimeError(TENSORBOARD_MISSING) from e
    return SummaryWriter


class MetricsWriter:
    """Rank 0 only: appends JSON lines (flushed per line, so a killed run keeps its log)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = _drop_torn_tail(self.path)
        self._f = open(self.path, "a", buffering=1)
        if torn:
            # a run killed in the middle of a write leaves half a line; appending to it would
            # glue the resumed run's first record onto it and make both unreadable
            self.event(event="torn_line_dropped", bytes=torn)
        self._tb = None
        if tensorboard:
            self._tb = require_tensorboard()(str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def event(self, **record) -> None:
        """A non-metric line (start, checkpoint, signal, end), marked with ``event``."""
        record.setdefault("time", time.time())
        self._f.write(json.dumps(record, sort_keys=True, default=str) + "\n")

    def close(self):
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _drop_torn_tail(path: Path, block: int = 1 << 16) -> int:
    """Cut an unterminated last line off ``path``; returns how many bytes were cut. Reads from the
    end only: a month's metrics file is not read whole to resume."""
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return 0
        pos = end
        while pos > 0:  # back to the last newline (or the start of the file)
            start = max(0, pos - block)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                pos = start + newline + 1
                break
            pos = start
        f.truncate(pos)
        return end - pos


def read_metrics(run_dir: str | os.PathLike, live: bool = False) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``. Only newline-terminated lines are records: a
    reader polling a running job can see the line being written half copied, so with
    ``live=True`` an unterminated last line is left for the next read. Otherwise it, or any
    line that is not JSON, is an error naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    text = path.read_text()
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    if tail.strip() and not live:
        raise ValueError(f"{path}: line {len(lines) + 1} is cut off (no newline at the end of the "
                         f"file): {tail[:80]!r}")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not a JSON record ({e.msg} at column "
                             f"{e.colno}): {line[:80]!r}") from None
    return records
