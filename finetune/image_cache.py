"""Decoded pictures kept in memory for the length of a fine-tuning run.

A fine-tuning run reads every training picture once per epoch and the evaluation split's at each
evaluation. With small pictures the decode is a large part of a CPU step: reading and decoding a
64 px JPEG takes about as long as the whole timm training transform of it (BENCHMARKS.md). The
cache keeps each picture as ``load_image`` returns it (RGB, EXIF applied or not: part of the
key) and hands out copies, so no transform can change what the next epoch sees. It is bounded:
once ``max_bytes`` of pixels are held, further pictures are decoded every time, as without it.

Per process: with loader workers (``train.num_workers > 0``) each worker fills its own copy and
drops it when its epoch's loader ends, so the cache pays off with ``num_workers: 0``, the setting
for small CPU runs where it matters.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Hashable, Iterator, Optional

from PIL import Image


def _nbytes(img: Image.Image) -> int:
    return img.width * img.height * len(img.getbands())


class DecodedImageCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self.hits = self.misses = self.over_budget = 0
        self._images: dict[Hashable, Image.Image] = {}

    def get(self, key: Hashable, read: Callable[[], Image.Image]) -> Image.Image:
        img = self._images.get(key)
        if img is not None:
            self.hits += 1
            return img.copy()
        self.misses += 1
        img = read()  # a picture that cannot be read raises here and is not remembered
        size = _nbytes(img)
        if self.used + size > self.max_bytes:
            self.over_budget += 1
            return img
        self._images[key] = img
        self.used += size
        return img.copy()

    def stats(self) -> dict:
        return {"pictures": len(self._images), "mb": round(self.used / 2**20, 3), "hits": self.hits,
                "misses": self.misses, "over_budget": self.over_budget}


_active: Optional[DecodedImageCache] = None


def active_cache() -> Optional[DecodedImageCache]:
    """The cache ``load_image`` uses in this process, if a run switched one on."""
    return _active


@contextmanager
def decoded_image_cache(max_mb: float) -> Iterator[Optional[DecodedImageCache]]:
    """Switch the cache on for the ``with`` block (``max_mb`` <= 0: off); the previous state after."""
    global _active
    previous = _active
    _active = DecodedImageCache(int(max_mb * 2**20)) if max_mb > 0 else None
    try:
        yield _active
    finally:
        _active = previous
