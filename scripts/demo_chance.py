"""Chance levels of the demo's fine-tuning metrics, computed from the synthetic world's files:
the score of the best predictor that ignores the picture (and for grounding the phrase too).

- VQA: always answer the most frequent answer of the training questions (VQA score);
- NLVR2, GLUE-style, classification: always predict the training set's majority label;
- grounding: always predict the mean training box (normalised by the picture size).
Values are fractions in [0, 1]."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from xfm.finetune.metrics.grounding import grounding_accuracy

# the split names of the world's files, per evaluation split name of the tasks
_NLVR2_FILES = {"train": "train", "val": "dev", "dev": "dev", "test": "test"}


def _json_rows(path: Path):
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]


def vqa_chance(world: Path, split: str) -> float:
    train = _json_rows(world / "vqa" / "train.json")
    best = Counter(a for r in train for a in r["answer"]).most_common(1)[0][0]
    rows = _json_rows(world / "vqa" / f"{split}.json")
    # VQA accuracy of one answer: min(#annotators who gave it / 3, 1)
    return float(np.mean([min(r["answer"].count(best) / 3.0, 1.0) for r in rows]))


def nlvr2_chance(world: Path, split: str) -> float:
    train = _json_rows(world / "nlvr2" / "train.jsonl")
    major = Counter(r["label"] for r in train).most_common(1)[0][0]
    rows = _json_rows(world / "nlvr2" / f"{_NLVR2_FILES[split]}.jsonl")
    return float(np.mean([r["label"] == major for r in rows]))


def grounding_chance(world: Path, split: str) -> float:
    def boxes(rows):
        b = np.array([r["bbox"] for r in rows], dtype=np.float64)
        wh = np.array([[r["width"], r["height"], r["width"], r["height"]] for r in rows], dtype=np.float64)
        return b, wh
    train_b, train_wh = boxes(_json_rows(world / "grounding" / "refcoco_train.jsonl"))
    mean_norm = (train_b / train_wh).mean(axis=0)
    gt, wh = boxes(_json_rows(world / "grounding" / f"refcoco_{split}.jsonl"))
    return grounding_accuracy(mean_norm[None, :] * wh, gt)


def classification_chance(world: Path, split: str) -> float:
    root = world / "classes"
    train = {d.name: len(list(d.iterdir())) for d in (root / "train").iterdir() if d.is_dir()}
    major = max(train, key=train.get)
    folder = root / ("val" if split in ("val", "test") else split)
    counts = {d.name: len(list(d.iterdir())) for d in folder.iterdir() if d.is_dir()}
    return counts.get(major, 0) / sum(counts.values())


def glue_chance(world: Path, split: str, name: str = "SynthRTE") -> float:
    def labels(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r["label"] for r in rows]
    major = Counter(labels(world / "glue" / name / "train.tsv")).most_common(1)[0][0]
    evaluated = labels(world / "glue" / name / f"{'dev' if split in ('val', 'dev', 'test') else split}.tsv")
    return float(np.mean([y == major for y in evaluated]))
