"""Ordered multi-process map with bounded memory.

``multiprocessing.Pool.imap`` keeps order but its feeder thread drains the whole input iterator
(records can carry base64 image bytes: unbounded memory). Here at most ``window`` chunks are in
flight and results come back strictly in input order, so the output of N workers is the output
of one."""
from __future__ import annotations

import itertools
import multiprocessing
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator


def chunked(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def _ignore_sigint():
    # Ctrl-C reaches the whole process group: only the parent handles it (it stops the run and
    # keeps the completed shards); workers printing their own tracebacks would only be noise
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ordered_map(fn: Callable, arg, items: Iterable, workers: int, chunk_size: int = 16,
                window_per_worker: int = 4) -> Iterator[tuple]:
    """Yield ``(item, result)`` for ``result in fn(arg, chunk)`` (fn maps a list to a list), in
    input order. ``workers <= 1`` runs in this process (no pickling, easy debugging)."""
    if workers <= 1:
        for chunk in chunked(items, chunk_size):
            yield from zip(chunk, fn(arg, chunk))
        return
    # fork: workers inherit the imported modules (fast start); they touch no shared state
    ctx = multiprocessing.get_context("fork")
    window = max(2, workers * window_per_worker)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_ignore_sigint) as pool:
        pending: deque = deque()
        chunks = chunked(items, chunk_size)
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(fn, arg, chunk)))
                if len(pending) >= window:
                    done_chunk, fut = pending.popleft()
                    yield from zip(done_chunk, fut.result())
            while pending:
                done_chunk, fut = pending.popleft()
                yield from zip(done_chunk, fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()
