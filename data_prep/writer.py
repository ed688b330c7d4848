"""Sharded output with limits, per-shard progress records, resume, stats.json and rejected.jsonl.

Layout of ``DIR``:
  <kind>-000000.tar ...        the shards (each complete: written as .tmp then renamed)
  .progress/run.json           kind + run fingerprint (inputs + output-affecting options)
  .progress/<kind>-000000.json one per completed shard: where in the input it ends, its counts,
                               its rejections and dedup hashes. Written right after the rename,
                               so a state file means its shard is complete.
  stats.json, rejected.jsonl   written at the end (atomically)
  metrics.jsonl                one line per completed shard (throughput so far; informational)

Resume: the completed shards whose state file exists are kept; the run restarts from the input
position the last one recorded (record index, output index within the record: a shard can end in
the middle of an image's captions), with counters and dedup hashes restored, so the final shards
equal an uninterrupted run's.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from collections import Counter

from .records import Rejection, Sample
from .tario import DeterministicTar, archive_bytes, atomic_write_bytes, sample_tar_bytes

PROGRESS = ".progress"


class OutputDirError(RuntimeError):
    pass


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:06d}.tar"


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


class _Range:
    """Counters for the outputs between two shard boundaries."""

    def __init__(self):
        self.rejected: list[dict] = []
        self.skipped: Counter = Counter()          # sample-level reasons
        self.skipped_regions: Counter = Counter()  # region items dropped from kept samples
        self.hashes: list[list[str]] = []          # [sha256, image_id] first seen here
        self.passthrough = 0
        self.reencoded = 0
        self.clipped_boxes = 0
        self.regions_kept = 0
        self.box_frames: Counter = Counter()       # EXIF-rotated pictures by box frame
        self.box_frame_rules: Counter = Counter()  # ... and by what decided the frame

    def to_state(self) -> dict:
        return {"rejected": self.rejected, "skipped": dict(self.skipped),
                "skipped_regions": dict(self.skipped_regions), "hashes": self.hashes,
                "passthrough": self.passthrough, "reencoded": self.reencoded,
                "clipped_boxes": self.clipped_boxes, "regions_kept": self.regions_kept,
                "box_frames": dict(self.box_frames),
                "box_frame_rules": dict(self.box_frame_rules)}


class ShardWriter:
    def __init__(self, out_dir: str, kind: str, shard_samples: int, shard_bytes: int,
                 fingerprint: str, overwrite: bool = False):
        self.out = out_dir
        self.kind = kind
        self.max_samples = shard_samples
        self.max_bytes = shard_bytes
        self.fingerprint = fingerprint
        self.progress_dir = os.path.join(out_dir, PROGRESS)
        os.makedirs(self.progress_dir, exist_ok=True)
        self._prepare(overwrite)
        self.shards: list[dict] = []       # completed shards' states
        self.seen_hashes: dict[str, str] = {}
        self.samples_written = 0
        self._tar: DeterministicTar | None = None
        self._tar_data = 0
        self._range = _Range()
        self.candidates = 0                # samples written + sample-level rejections
        self.bad = 0
        self.regions_seen = 0              # regions: items kept + items rejected one by one
        self.regions_bad = 0
        self.on_shard = None               # callback(state) after each completed shard

    # -- set-up / resume -------------------------------------------------------------------
    def _existing_outputs(self) -> list[str]:
        names = glob.glob(os.path.join(self.out, f"{self.kind}-*.tar"))
        names += [os.path.join(self.out, n) for n in ("stats.json", "rejected.jsonl")
                  if os.path.exists(os.path.join(self.out, n))]
        return names

    def _prepare(self, overwrite: bool):
        run_file = os.path.join(self.progress_dir, "run.json")
        previous = None
        if os.path.exists(run_file):
            with open(run_file, encoding="utf-8") as f:
                previous = json.load(f)
        same = previous == {"kind": self.kind, "fingerprint": self.fingerprint}
        # a different run's finished shards are never replaced silently; a different run that
        # wrote nothing (e.g. it stopped on a malformed input file, since fixed) is just restarted
        if not same and not overwrite and self._existing_outputs():
            raise OutputDirError(
                f"{self.out} already holds output of a different run (other inputs or options). "
                f"Use a new --out, or --overwrite to replace it.")
        if not same:
            side_files = [os.path.join(self.out, n) for n in ("metrics.jsonl", "classes.json")]
            for path in self._existing_outputs() + [p for p in side_files if os.path.exists(p)]:
                os.remove(path)
            shutil.rmtree(self.progress_dir)
            os.makedirs(self.progress_dir)
            atomic_write_bytes(run_file, _dump({"kind": self.kind, "fingerprint": self.fingerprint}))
        for tmp in glob.glob(os.path.join(self.out, f"{self.kind}-*.tar.tmp")):
            os.remove(tmp)                   # a shard that was being written when killed

    def resume(self) -> tuple[int, int]:
        """Load completed shards; -> input position (record, output) to restart from."""
        index = 0
        position = (0, 0)
        while True:
            state_path = os.path.join(self.progress_dir, shard_name(self.kind, index) + ".json")
            tar_path = os.path.join(self.out, shard_name(self.kind, index))
            if not (os.path.exists(state_path) and os.path.exists(tar_path)):
                break
            with open(state_path, encoding="utf-8") as f:
                state = json.load(f)
            if os.path.getsize(tar_path) != state["bytes"]:
                break
            self._restore(state)
            position = tuple(state["end"])
            index += 1
        # anything after the last good shard is from the interrupted attempt: redo it
        for path in glob.glob(os.path.join(self.out, f"{self.kind}-*.tar")):
            if int(os.path.basename(path)[len(self.kind) + 1:-4]) >= index:
                os.remove(path)
        for path in glob.glob(os.path.join(self.progress_dir, f"{self.kind}-*.tar.json")):
            if int(os.path.basename(path)[len(self.kind) + 1:-9]) >= index:
                os.remove(path)
        return position

    def _restore(self, state: dict):
        self.shards.append(state)
        self.samples_written += state["samples"]
        for h, image_id in state["hashes"]:
            self.seen_hashes[h] = image_id
        sample_bad = sum(state["skipped"].values())
        self.bad += sample_bad
        self.candidates += sample_bad + state["samples"]
        regions_bad = sum(state["skipped_regions"].values())
        self.regions_bad += regions_bad
        self.regions_seen += regions_bad + state.get("regions_kept", 0)

    # -- writing ---------------------------------------------------------------------------
    def duplicate_of(self, image_hash: str, image_id: str) -> str | None:
        """Exact dedup: the image id that first had these bytes, when it is another image."""
        first = self.seen_hashes.get(image_hash)
        if first is None:
            self.seen_hashes[image_hash] = image_id
            self._range.hashes.append([image_hash, image_id])
            return None
        return first if first != image_id else None

    def add(self, sample: Sample, position: tuple[int, int]):
        size = sample_tar_bytes(sample.members)
        if self._tar is not None and (
                self._tar.samples >= self.max_samples
                or archive_bytes(self._tar_data + size) > self.max_bytes):
            self._close(position)
        if self._tar is None:
            self._tar = DeterministicTar(os.path.join(self.out, shard_name(self.kind, len(self.shards))))
            self._tar_data = 0
        self._tar.add_sample(f"{self.samples_written:09d}", sample.members)
        self._tar_data += size
        self.samples_written += 1
        self.candidates += 1
        if sample.passthrough is True:
            self._range.passthrough += 1
        elif sample.passthrough is False:
            self._range.reencoded += 1
        self._range.clipped_boxes += sample.clipped_boxes
        if sample.box_frame is not None:
            self._range.box_frames[sample.box_frame] += 1
            self._range.box_frame_rules[sample.box_frame_rule] += 1
        self._range.regions_kept += sample.regions_kept
        self.regions_seen += sample.regions_kept

    def reject(self, rejection: Rejection):
        self._range.rejected.append(rejection.to_dict())
        if rejection.level == "region":
            self._range.skipped_regions[rejection.reason] += 1
            self.regions_seen += 1
            self.regions_bad += 1
        else:
            self._range.skipped[rejection.reason] += 1
            self.candidates += 1
            self.bad += 1

    def _close(self, end: tuple[int, int]):
        size, sha = self._tar.commit()
        state = {"index": len(self.shards), "name": os.path.basename(self._tar.path),
                 "samples": self._tar.samples, "bytes": size, "sha256": sha, "end": list(end)}
        state.update(self._range.to_state())
        atomic_write_bytes(os.path.join(self.progress_dir, state["name"] + ".json"), _dump(state))
        self.shards.append(state)
        self._tar = None
        self._range = _Range()
        if self.on_shard is not None:
            self.on_shard(state)

    def finish(self, end: tuple[int, int]):
        if self._tar is not None:
            self._close(end)

    def discard_open_shard(self):
        if self._tar is not None:
            self._tar.discard()
            self._tar = None

    # -- reports ---------------------------------------------------------------------------
    def all_rejections(self) -> list[dict]:
        out = []
        for state in self.shards:
            out.extend(state["rejected"])
        out.extend(self._range.rejected)
        return out

    def write_rejected(self):
        lines = b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n"
                         for r in self.all_rejections())
        atomic_write_bytes(os.path.join(self.out, "rejected.jsonl"), lines)

    def totals(self) -> dict:
        skipped, skipped_regions = Counter(), Counter()
        frames, rules = Counter(), Counter()
        passthrough = reencoded = clipped = kept = 0
        for part in [*self.shards, self._range.to_state()]:
            skipped.update(part["skipped"])
            skipped_regions.update(part["skipped_regions"])
            frames.update(part["box_frames"])
            rules.update(part["box_frame_rules"])
            passthrough += part["passthrough"]
            reencoded += part["reencoded"]
            clipped += part["clipped_boxes"]
            kept += part.get("regions_kept", 0)
        return {"skipped": dict(sorted(skipped.items())),
                "skipped_regions": dict(sorted(skipped_regions.items())),
                "images_passthrough": passthrough, "images_reencoded": reencoded,
                "boxes_clipped": clipped, "regions_kept": kept,
                "box_frames": dict(sorted(frames.items())),
                "box_frame_rules": dict(sorted(rules.items()))}

    def pattern(self) -> str | None:
        if not self.shards:
            return None
        last = len(self.shards) - 1
        if last == 0:
            return os.path.join(os.path.abspath(self.out), shard_name(self.kind, 0))
        return os.path.join(os.path.abspath(self.out), f"{self.kind}-{{{0:06d}..{last:06d}}}.tar")

