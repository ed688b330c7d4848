"""One sharding run: plan the inputs, resume, stream records through the (parallel) workers in
order, apply dedup and the bad-input budget, write shards, stats.json and rejected.jsonl."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter

from tqdm import tqdm

from . import formats
from .formats import class_folders, coco
from .options import ShardOptions
from .parallel import ordered_map
from .process import process_chunk
from .records import Rejection
from .tario import atomic_write_bytes
from .writer import ShardWriter

STATS_VERSION = 3      # bump when the progress state changes: old state is then not resumed


class TooManyBadInputs(RuntimeError):
    pass


def _log(msg: str):
    print(f"xfm-prep: {msg}", file=sys.stderr, flush=True)


def _run_fingerprint(kind, input_fp, opts: ShardOptions, files, class_map) -> str:
    extra = {}
    if opts.kind == "regions" and opts.captions:
        with open(opts.captions, "rb") as f:
            extra["captions_sha256"] = hashlib.sha256(f.read()).hexdigest()
    payload = {"version": STATS_VERSION, "kind": kind, "input": input_fp, **extra,
               "formats": [[f.format, f.detail] for f in files],
               "options": opts.output_affecting(), "classes": class_map}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_bad(writer: ShardWriter, opts: ShardOptions, out: str, final: bool):
    """Abort when more than --max-bad-fraction of the samples, or of the region items (a box
    outside the image drops one (phrase, box) item of a kept image), were rejected."""
    checks = (("samples", writer.bad, writer.candidates, "sample"),
              ("region items", writer.regions_bad, writer.regions_seen, "region"))
    for what, bad, seen, level in checks:
        if seen == 0 or (not final and seen < opts.bad_check_after):
            continue
        fraction = bad / seen
        if fraction <= opts.max_bad_fraction:
            continue
        reasons = Counter()
        for r in writer.all_rejections():
            if r["level"] == level:
                reasons[r["reason"]] += 1
        top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(5))
        hint = ""
        if reasons and reasons.most_common(1)[0][0] == "missing_file":
            hint = (" Relative image paths are looked up under --images (default: the folder of "
                    "the annotation file); is it the right folder?")
        raise TooManyBadInputs(
            f"aborting: {bad} of {seen} {what} rejected ({fraction:.1%}), more than "
            f"--max-bad-fraction {opts.max_bad_fraction:.1%}. Reasons: {top}.{hint} Every "
            f"rejected item is listed in {os.path.join(out, 'rejected.jsonl')}")


def run(kind: str, inputs, out: str, opts: ShardOptions, log=_log) -> dict:
    started = time.time()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    inputs = [os.fspath(p) for p in inputs]
    files = formats.plan(kind, inputs, opts)
    for item in files:
        log(item.describe())
    class_map = None
    if kind == "images":
        class_map = class_folders.class_map([f.path for f in files], opts.classes)
    # --captions is read once for all regions inputs (each input, and the count pass, reuse it)
    captions = coco.first_captions(opts.captions) if kind == "regions" and opts.captions else None
    # Streaming readers (JSON lines, CSV, text) are read through once before any work: a
    # malformed line fails the run before anything is written, and the bar gets a total.
    streams, total = [], 0
    for item in files:
        stream = formats.read(item, opts, class_map, captions)
        if hasattr(stream, "__len__"):
            total += len(stream)
        else:
            total += sum(1 for _ in stream)
            stream = formats.read(item, opts, class_map, captions)
        streams.append(stream)
    input_fp = formats.fingerprint(files)
    os.makedirs(out, exist_ok=True)
    writer = ShardWriter(out, kind, opts.shard_samples, opts.shard_bytes,
                         _run_fingerprint(kind, input_fp, opts, files, class_map), opts.overwrite)
    start = writer.resume()
    metrics_path = os.path.join(out, "metrics.jsonl")
    resumed_samples = writer.samples_written

    def shard_metrics(state):
        elapsed = time.time() - started
        done = writer.samples_written - resumed_samples
        line = {"time": round(time.time(), 3), "shard": state["name"], "samples": state["samples"],
                "bytes": state["bytes"], "samples_total": writer.samples_written,
                "rejected_total": writer.bad, "elapsed_s": round(elapsed, 3),
                "samples_per_s": round(done / elapsed, 2) if elapsed > 0 else None}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    writer.on_shard = shard_metrics
    if writer.shards:
        log(f"resuming after {len(writer.shards)} completed shard(s) "
            f"({writer.samples_written} samples)")
    if class_map is not None:
        atomic_write_bytes(os.path.join(out, "classes.json"),
                           (json.dumps(class_map, indent=1, sort_keys=True) + "\n").encode())

    records = itertools.islice(itertools.chain.from_iterable(streams), start[0], None)
    bar = tqdm(total=total, initial=start[0], unit="rec", desc=f"xfm-prep {kind}",
               disable=not opts.progress, mininterval=1.0, file=sys.stderr)
    n_records = start[0]
    try:
        for rec_idx, (rec, outputs) in enumerate(
                ordered_map(process_chunk, opts, records, opts.workers), start=start[0]):
            for sub, item in enumerate(outputs):
                if rec_idx == start[0] and sub < start[1]:
                    continue                    # already in a completed shard
                if isinstance(item, Rejection):
                    writer.reject(item)
                    continue
                if opts.dedup and item.image_hash is not None:
                    first = writer.duplicate_of(item.image_hash, item.image_id)
                    if first is not None:
                        writer.reject(Rejection("duplicate_image", rec.source, rec.where,
                                                f"same bytes as image_id {first}", item.image_id,
                                                rec.image_path))
                        continue
                writer.add(item, (rec_idx, sub))
            n_records = rec_idx + 1
            _check_bad(writer, opts, out, final=False)
            bar.update(1)
        _check_bad(writer, opts, out, final=True)
        writer.finish((n_records, 0))
    except TooManyBadInputs:
        writer.discard_open_shard()
        writer.write_rejected()
        raise
    except BaseException:
        writer.discard_open_shard()
        raise
    finally:
        bar.close()

    stats = _stats(kind, inputs, files, opts, writer, input_fp, n_records, class_map)
    writer.write_rejected()
    atomic_write_bytes(os.path.join(out, "stats.json"),
                       (json.dumps(stats, indent=1, ensure_ascii=False) + "\n").encode())
    t = stats["totals"]
    log(f"wrote {t['samples']} samples in {t['shards']} shard(s) to {out} "
        f"({t['rejected_samples']} samples and {t['rejected_regions']} regions rejected) "
        f"in {time.time() - started:.1f}s; pattern: {stats['pattern']}")
    return stats


def _box_frames(totals) -> dict:
    """Kept EXIF-rotated pictures: in which frame their boxes were (``stored``: rotated with the
    picture, ``displayed``: already upright) and what decided it (``declared_size``: the
    annotation's image size, ``box_fit``: the boxes fit only that frame, ``option``:
    --box-frame)."""
    frames, rules = totals["box_frames"], totals["box_frame_rules"]
    return {"exif_rotated_images": sum(frames.values()), "stored": frames.get("stored", 0),
            "displayed": frames.get("displayed", 0),
            "decided_by": {rule: rules.get(rule, 0)
                           for rule in ("declared_size", "box_fit", "option")}}


def _stats(kind, inputs, files, opts, writer, input_fp, n_records, class_map) -> dict:
    totals = writer.totals()
    shards = [{"name": s["name"], "samples": s["samples"], "bytes": s["bytes"],
               "sha256": s["sha256"]} for s in writer.shards]
    rejected_samples = sum(totals["skipped"].values())
    return {
        "kind": kind,
        "inputs": inputs,
        "formats": [{"path": f.path, "format": f.format, "guessed": f.guessed,
                     **({"detail": f.detail} if f.detail else {})} for f in files],
        "input_fingerprint": input_fp,
        "run_fingerprint": writer.fingerprint,
        "options": opts.output_affecting(),
        "pattern": writer.pattern(),
        "pattern_relative": (os.path.basename(writer.pattern()) if writer.pattern() else None),
        "shards": shards,
        "totals": {
            "samples": sum(s["samples"] for s in shards),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "records": n_records,
            "rejected_samples": rejected_samples,
            "rejected_regions": sum(totals["skipped_regions"].values()),
            **({"regions": totals["regions_kept"],
                "region_bad_fraction": (round(writer.regions_bad / writer.regions_seen, 6)
                                        if writer.regions_seen else 0.0)}
               if kind == "regions" else {}),
            "bad_fraction": round(writer.bad / writer.candidates, 6) if writer.candidates else 0.0,
            "images_passthrough": totals["images_passthrough"],
            "images_reencoded": totals["images_reencoded"],
            "boxes_clipped": totals["boxes_clipped"],
            **({"images_boxes_rotated": totals["box_frames"].get("stored", 0)}
               if kind == "regions" else {}),
        },
        "skipped": totals["skipped"],
        "skipped_regions": totals["skipped_regions"],
        **({"box_frames": _box_frames(totals)} if kind == "regions" else {}),
        **({"classes": "classes.json", "num_classes": len(class_map)} if class_map else {}),
    }
