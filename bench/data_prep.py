"""Sharder throughput: samples/s and MB/s for pass-through and resize at 1 and 2 workers, next to
plain `tar` writing the same image files (the I/O limit of this disk).

    python bench/data_prep.py [--images 400] [--size 640x480] [--resize 256] [--workdir DIR]

Builds a COCO-captions corpus of camera-like JPEGs (smooth content + sensor noise, quality 90),
warms the page cache, then times `xfm-prep pairs` through the Python API. Prints a table and one
JSON line with every figure. MB/s counts input image bytes (what a corpus of this size reads).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from xfm.data_prep.sharders import shard


def make_corpus(root: str, n: int, size: tuple[int, int], seed: int = 0) -> tuple[str, int]:
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    w, h = size
    images, anns, total = [], [], 0
    for i in range(n):
        low = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
        path = os.path.join(img_dir, f"{i:06d}.jpg")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        total += os.path.getsize(path)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "caption": f"a picture number {i} of coloured blobs"})
    ann = os.path.join(root, "captions.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns}, f)
    return ann, total


def warm(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def time_tar(root: str, out: str) -> float:
    t = time.perf_counter()
    subprocess.run(["tar", "-cf", out, "-C", root, "images"], check=True)
    with open(out, "rb+") as f:
        os.fsync(f.fileno())
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    work = args.workdir or tempfile.mkdtemp(prefix="xfm-bench-prep-")
    os.makedirs(work, exist_ok=True)
    try:
        ann, in_bytes = make_corpus(os.path.join(work, "raw"), args.images, size)
        files = sorted(glob.glob(os.path.join(work, "raw", "images", "*.jpg")))
        warm(files)
        mb = in_bytes / 1e6
        rows = []
        t_tar = time_tar(os.path.join(work, "raw"), os.path.join(work, "plain.tar"))
        rows.append({"mode": "tar -cf (I/O limit)", "workers": 1, "seconds": t_tar,
                     "samples_per_s": args.images / t_tar, "mb_per_s": mb / t_tar})
        outputs = {}
        for mode, resize in (("pass-through", None), (f"resize {args.resize}", args.resize)):
            for workers in (1, 2):
                out = os.path.join(work, f"out-{resize}-{workers}")
                t = time.perf_counter()
                stats = shard("pairs", [ann], out, images=os.path.join(work, "raw", "images"),
                              resize=resize, workers=workers, shard_samples=10000,
                              progress=False, max_bad_fraction=0.0)
                dt = time.perf_counter() - t
                assert stats["totals"]["samples"] == args.images
                outputs[(resize, workers)] = [sh["sha256"] for sh in stats["shards"]]
                rows.append({"mode": mode, "workers": workers, "seconds": dt,
                             "samples_per_s": args.images / dt, "mb_per_s": mb / dt,
                             "out_mb": stats["totals"]["bytes"] / 1e6})
                shutil.rmtree(out)
        for resize in (None, args.resize):
            assert outputs[(resize, 1)] == outputs[(resize, 2)], "workers=2 output differs"
        print(f"{args.images} JPEGs {size[0]}x{size[1]}, {mb:.1f} MB input, {os.cpu_count()} CPUs")
        print(f"{'mode':<22}{'workers':>8}{'seconds':>10}{'samples/s':>12}{'MB/s':>10}")
        for r in rows:
            print(f"{r['mode']:<22}{r['workers']:>8}{r['seconds']:>10.2f}"
                  f"{r['samples_per_s']:>12.1f}{r['mb_per_s']:>10.1f}")
        print(json.dumps({"bench": "data_prep", "images": args.images, "size": list(size),
                          "input_mb": mb, "rows": rows}))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
