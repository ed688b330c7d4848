"""``xfm-prep verify DIR``: read every shard back and check it.

Per shard: tar integrity (every member readable, proper end-of-archive blocks: a tar cut on a
512-byte boundary reads without any tar error, so the end marker and the sample count from
stats.json are what reveal it), sha256/size/sample count against stats.json, the required keys of
every sample for its kind, every image decoded fully (RGB, size matching the metadata), JSON
metadata types, boxes inside the image, class indices known. Prints counts; exit status 1 on any
problem."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import sys
import tarfile

from PIL import Image

from .options import KINDS
from .parallel import ordered_map

REQUIRED = {"pairs": {"jpg", "txt", "json"}, "regions": {"jpg", "json"}, "text": {"txt"},
            "images": {"jpg", "cls"}}
SHARD_RE = re.compile(r"^(?P<kind>[a-z]+)-(?P<index>\d{6})\.tar$")
MAX_PROBLEMS_PER_SHARD = 20


def _decode_image(data: bytes):
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode != "RGB":
        raise ValueError(f"image mode {img.mode}, expected RGB")
    return img.size


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_json(kind: str, meta, size) -> list[str]:
    errs = []
    if not isinstance(meta, dict):
        return [f"json is {type(meta).__name__}, expected an object"]
    for field in ("image_id", "width", "height"):
        if field not in meta:
            errs.append(f"json misses '{field}'")
    if errs:
        return errs
    if not isinstance(meta["image_id"], str):
        errs.append("json image_id is not a string")
    if not (_is_int(meta["width"]) and _is_int(meta["height"])):
        errs.append("json width/height are not integers")
    elif size is not None and tuple(size) != (meta["width"], meta["height"]):
        errs.append(f"image is {size[0]}x{size[1]} but json says {meta['width']}x{meta['height']}")
    if kind == "pairs" and not isinstance(meta.get("source"), str):
        errs.append("json source missing or not a string")
    if kind == "regions":
        if "caption" not in meta or not (meta["caption"] is None or isinstance(meta["caption"], str)):
            errs.append("json caption missing or not str/null")
        regions = meta.get("regions")
        if not isinstance(regions, list) or not regions:
            errs.append("json regions missing or empty")
            return errs
        W, H = meta["width"], meta["height"]
        for j, r in enumerate(regions):
            box = r.get("bbox") if isinstance(r, dict) else None
            if not isinstance(r, dict) or not isinstance(r.get("phrase"), str) or not r["phrase"]:
                errs.append(f"region {j}: phrase missing or empty")
            if (not isinstance(box, list) or len(box) != 4
                    or not all(isinstance(v, (int, float)) for v in box)):
                errs.append(f"region {j}: bbox is not [x, y, w, h]")
                continue
            x, y, w, h = box
            eps = 0.011   # boxes are stored rounded to 2 decimals
            if w <= 0 or h <= 0 or x < -eps or y < -eps or x + w > W + eps or y + h > H + eps:
                errs.append(f"region {j}: bbox {box} outside the {W}x{H} image")
    return errs


def check_sample(kind: str, key: str, members: dict, classes: set | None) -> list[str]:
    missing = REQUIRED[kind] - set(members)
    if missing:
        return [f"sample {key}: missing {sorted(missing)} (has {sorted(members)})"]
    errs = []
    size = None
    if "jpg" in members:
        try:
            size = _decode_image(members["jpg"])
        except Exception as e:
            errs.append(f"image does not decode: {type(e).__name__}: {e}")
    if "txt" in members:
        try:
            if not members["txt"].decode("utf-8").strip():
                errs.append("txt is empty")
        except UnicodeDecodeError:
            errs.append("txt is not UTF-8")
    if kind in ("pairs", "regions"):
        try:
            errs += _check_json(kind, json.loads(members["json"]), size)
        except ValueError as e:
            errs.append(f"json does not parse: {e}")
    if kind == "images":
        try:
            label = int(members["cls"].decode("ascii"))
            if classes is not None and label not in classes:
                errs.append(f"cls {label} is not a class index in classes.json")
        except (UnicodeDecodeError, ValueError):
            errs.append(f"cls {members['cls'][:20]!r} is not an ASCII integer")
    return [f"sample {key}: {e}" for e in errs]


def verify_shard(args) -> dict:
    path, kind, expected, classes = args
    name = os.path.basename(path)
    problems, samples = [], 0
    sha = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    try:
        with tarfile.open(path, "r:") as tf:
            key, members = None, {}
            seen_keys = set()

            def flush():
                nonlocal samples
                if key is None:
                    return
                samples += 1
                if len(problems) < MAX_PROBLEMS_PER_SHARD:
                    problems.extend(check_sample(kind, key, members, classes))

            while True:
                m = tf.next()
                if m is None:
                    break
                if not m.isfile():
                    problems.append(f"member {m.name} is not a regular file")
                    continue
                base = os.path.basename(m.name)
                k, _, ext = base.partition(".")
                data = tf.extractfile(m).read()
                if len(data) != m.size:
                    raise tarfile.ReadError(f"member {m.name}: short read")
                if k != key:
                    flush()
                    if k in seen_keys:
                        problems.append(f"key {k} appears twice (not contiguous)")
                    seen_keys.add(k)
                    key, members = k, {}
                members[ext] = data
            flush()
            end = tf.offset
        with open(path, "rb") as f:
            f.seek(end)
            trailer = f.read(2 * tarfile.BLOCKSIZE)
        if len(trailer) < 2 * tarfile.BLOCKSIZE or trailer.strip(b"\0"):
            problems.append("no end-of-archive blocks: the tar is truncated")
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(f"tar error: {type(e).__name__}: {e}")
    if expected:
        if expected.get("samples") is not None and expected["samples"] != samples:
            problems.append(f"{samples} samples, stats.json says {expected['samples']}")
        if expected.get("bytes") is not None and expected["bytes"] != size:
            problems.append(f"{size} bytes, stats.json says {expected['bytes']}")
        if expected.get("sha256") and expected["sha256"] != sha.hexdigest():
            problems.append("sha256 differs from stats.json")
    return {"name": name, "samples": samples, "bytes": size,
            "problems": [f"{name}: {p}" for p in problems]}


def verify(out_dir: str, workers: int = 1, log=print) -> dict:
    """-> {"kind", "shards", "samples", "problems": [...]} (problems empty when all is well)."""
    problems = []
    if not os.path.isdir(out_dir):
        return {"kind": None, "shards": 0, "samples": 0,
                "problems": [f"{out_dir}: no such folder"]}
    stats_path = os.path.join(out_dir, "stats.json")
    stats = None
    if os.path.exists(stats_path):
        try:
            with open(stats_path, encoding="utf-8") as f:
                stats = json.load(f)
        except ValueError as e:
            problems.append(f"stats.json does not parse: {e}")
    found = sorted(p for p in glob.glob(os.path.join(out_dir, "*.tar"))
                   if SHARD_RE.match(os.path.basename(p)))
    kinds = {SHARD_RE.match(os.path.basename(p))["kind"] for p in found}
    kind = stats.get("kind") if stats else (kinds.pop() if len(kinds) == 1 else None)
    if kind not in KINDS:
        problems.append(f"cannot tell the kind of {out_dir} (stats.json kind {kind!r}, shard "
                        f"names {sorted(kinds)})")
        return {"kind": kind, "shards": 0, "samples": 0, "problems": problems}
    if stats is None:
        problems.append("stats.json is missing (the run did not finish)")
    expected = {s["name"]: s for s in stats.get("shards", [])} if stats else {}
    names = {os.path.basename(p) for p in found}
    for name in sorted(set(expected) - names):
        problems.append(f"{name}: listed in stats.json but missing")
    for name in sorted(names - set(expected)):
        if stats is not None:
            problems.append(f"{name}: not listed in stats.json")
    classes = None
    if kind == "images":
        try:
            with open(os.path.join(out_dir, "classes.json"), encoding="utf-8") as f:
                classes = set(json.load(f).values())
        except (OSError, ValueError) as e:
            problems.append(f"classes.json unreadable: {e}")
    if not found:
        problems.append("no shards found")
    jobs = [(p, kind, expected.get(os.path.basename(p)), classes) for p in found]
    total = 0
    for _, result in ordered_map(_verify_chunk, None, jobs, workers, chunk_size=1):
        total += result["samples"]
        problems.extend(result["problems"])
        status = "ok" if not result["problems"] else f"{len(result['problems'])} problem(s)"
        log(f"{result['name']}: {result['samples']} samples, {result['bytes']} bytes, {status}")
    if stats and stats.get("totals", {}).get("samples") not in (None, total):
        problems.append(f"{total} samples in shards, stats.json totals say "
                        f"{stats['totals']['samples']}")
    return {"kind": kind, "shards": len(found), "samples": total, "problems": problems}


def _verify_chunk(_, jobs):
    return [verify_shard(j) for j in jobs]


def add_parser(subparsers):
    p = subparsers.add_parser("verify", help="read back and check every shard of a folder",
                              description=__doc__)
    p.add_argument("dir", help="folder written by xfm-prep pairs/regions/text/images")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_main)


def _main(args) -> int:
    report = verify(args.dir, args.workers)
    print(f"{args.dir}: kind {report['kind']}, {report['shards']} shard(s), "
          f"{report['samples']} samples, {len(report['problems'])} problem(s)")
    for p in report["problems"]:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if report["problems"] else 0
