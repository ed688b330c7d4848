"""Loader-only throughput: how fast one stream's loader produces batches with no model attached,
so a benchmark can tell whether the loader or the model is the bottleneck."""
from __future__ import annotations

import time
from typing import Any

from .config import DataConfig
from .streams import StreamSet


def measure_loader_throughput(cfg: DataConfig, stream: str, *, seconds: float | None = None,
                              batches: int | None = None, warmup_batches: int | None = None, rank: int = 0,
                              world_size: int = 1, seed: int = 0) -> dict[str, Any]:
    """Pull batches of ``stream`` for ``seconds`` or ``batches`` (after ``warmup_batches``, which
    absorb worker start-up and each worker's first shuffle-block fill; default: one batch per
    worker + 1) and report the rates.

    Returns ``{"stream", "num_workers", "batches", "samples", "tokens", "seconds",
    "batches_per_s", "samples_per_s", "tokens_per_s", "bad"}``.
    """
    if (seconds is None) == (batches is None):
        raise ValueError("give exactly one of seconds= or batches=")
    if seconds is not None and seconds <= 0 or batches is not None and batches < 1:
        raise ValueError("seconds must be > 0 and batches >= 1")
    if warmup_batches is None:
        warmup_batches = max(2, cfg.workers_for(stream) + 1)
    with StreamSet(cfg, rank=rank, world_size=world_size, seed=seed, streams=[stream]) as streams:
        s = streams[stream]
        for _ in range(warmup_batches):
            next(s)
        before = s.counters.as_dict()
        t0 = time.perf_counter()
        n = 0
        while (batches is not None and n < batches) or (seconds is not None and time.perf_counter() - t0 < seconds):
            next(s)
            n += 1
        dt = time.perf_counter() - t0
        after = s.counters.as_dict()
    samples = after["samples"] - before["samples"]
    tokens = after["tokens"] - before["tokens"]
    return {"stream": stream, "num_workers": cfg.workers_for(stream), "batches": n, "samples": samples,
            "tokens": tokens, "seconds": dt, "batches_per_s": n / dt, "samples_per_s": samples / dt,
            "tokens_per_s": tokens / dt, "bad": after["bad"]}


def main(argv: list[str] | None = None) -> None:
    """``python -m xfm.pretrain.data.throughput --config configs/pretrain/tiny.yaml [--stream pairs]
    [--batches N | --seconds S] [--workers K] [--set data.key=value]``: one JSON line per stream."""
    import argparse
    import json

    from xfm.config import apply_overrides, from_dict, read_yaml

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--config", required=True, help="a pretraining YAML; its data: section is used")
    p.add_argument("--stream", action="append", help="stream(s) to measure (default: all configured)")
    p.add_argument("--batches", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--workers", type=int, help="override data.num_workers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    overrides = list(args.set) + ([f"data.num_workers={args.workers}"] if args.workers is not None else [])
    data = apply_overrides(read_yaml(args.config), overrides).get("data")
    if data is None:
        raise SystemExit(f"{args.config}: no data: section")
    cfg = from_dict(DataConfig, data, f"{args.config}: data")
    if args.batches is None and args.seconds is None:
        args.batches = 50
    for stream in args.stream or cfg.enabled:
        r = measure_loader_throughput(cfg, stream, batches=args.batches, seconds=args.seconds)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)


if __name__ == "__main__":
    main()
