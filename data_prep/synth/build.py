"""make_world / prepare_world: write the synthetic world's corpora and downstream sets, and the
world.json manifest naming every file and the exact `xfm-prep` commands that shard it.

Layout of a world directory (paths in every file are relative to the world directory):

    images/<image_id>.jpg            all scene pictures (train, val and test scenes)
    scenes.jsonl                     the ground-truth facts of every scene (for tests and debugging)
    annotations/captions_train.json  COCO captions (train scenes only)
    vg/objects.json, vg/region_descriptions.json, vg/image_data.json   Visual Genome style
    text/corpus.txt                  one document per line
    classes/{train,val}/<shape>/*.jpg  ImageNet-style class folders (class = the large shape)
    retrieval/{train,val,test}.json  Karpathy split JSON
    vqa/{train,val,test}.json + vqa/answer_list.json   VQAv2 rows as used by X-VLM/X-FM
    nlvr2/{train,dev,test}.jsonl     NLVR2 JSON lines {identifier, images, sentence, label}
    grounding/refcoco_{train,val,test}.jsonl  RefCOCO-style {image, text, bbox, ref_id, split}
    glue/SynthRTE/{train,dev,test}.tsv   sentence-pair task, GLUE RTE columns
    glue/SynthCoLA/{train,dev,test}.tsv  single-sentence task, GLUE CoLA columns
    shards/{pairs,regions,text,images}/, tokenizer/   made by the world.json commands

Train, val and test scenes are drawn from separate random streams and hold disjoint image ids;
the pretraining corpora (captions, regions, class train folder) only use train scenes.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import language as lang
from .render import JPEG_OPTIONS, jpeg_bytes, render
from .world import SHAPES, Scene, sample_class_scene, sample_scene, scene_to_dict
from .writers import (atomic_write_bytes, coco_captions, write_json, write_jsonl, write_lines,
                      write_tsv)

MANIFEST = "world.json"
# 2: every NLVR2 sentence comes with a pair it is true of and a pair it is false of (in 1 the
# sentence's wording told its label); 3: the demo world's NLVR2 set has 8000 training rows and 400
# dev / test rows (was 2000 / 200 / 200; the first rows of each split are the same)
FORMAT_VERSION = 3
# 64 px by default: a 5-20 px shape keeps its outline at 64 px, and the loaders resize to the
# model's input (32 px for the tiny model, patch 8); regions' boxes are pixels of this size.
DEFAULT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class WorldSize:
    scenes: tuple[int, int, int]          # train, val, test scenes (each one image)
    class_images: tuple[int, int]         # per class: train, val
    text_docs: int
    questions_per_scene: int
    nlvr2: tuple[int, int, int]           # statements (= image pairs) train, dev, test
    glue: tuple[int, int, int]            # rows train, dev, test per GLUE task
    shard_samples: int                    # samples per shard for the sharding commands
    vocab_size: int = 1000


SIZES = {
    # tiny and fast: 96 scene images + 50 class images, a few seconds to make and shard
    "test": WorldSize(scenes=(64, 16, 16), class_images=(6, 4), text_docs=200,
                      questions_per_scene=3, nlvr2=(64, 16, 16), glue=(64, 32, 32),
                      shard_samples=32),
    # the learning tests: enough pictures that a short pretraining generalises to unseen ones and
    # test splits large enough that "beats random weights" is not decided by one example
    "ci": WorldSize(scenes=(480, 64, 64), class_images=(40, 12), text_docs=800,
                    questions_per_scene=3, nlvr2=(320, 64, 64), glue=(320, 64, 64),
                    shard_samples=128),
    # the end-to-end demo: enough variety that a tiny model learns colours, shapes, counts and
    # boxes in minutes on 2 CPU cores without memorising the pictures
    # NLVR2 rows reuse the scenes' pictures, so they cost next to nothing: 8000 training rows, as
    # a head on the demo model's fusion states generalises from 8000 rows of the five sentence
    # forms (test 0.645) and not from 2000 (0.54 at best from frozen states, BENCHMARKS.md)
    "demo": WorldSize(scenes=(2000, 200, 200), class_images=(200, 40), text_docs=4000,
                      questions_per_scene=4, nlvr2=(8000, 400, 400), glue=(2000, 300, 300),
                      shard_samples=500),
    "small": WorldSize(scenes=(6000, 500, 500), class_images=(600, 100), text_docs=10000,
                       questions_per_scene=4, nlvr2=(6000, 500, 500), glue=(6000, 500, 500),
                       shard_samples=1000),
}

# Independent random streams (SeedSequence spawn keys): changing the size of one set never
# changes another set's content for the same seed prefix, and splits never share a stream.
_STREAMS = {"train": 1, "val": 2, "test": 3, "class_train": 4, "class_val": 5, "text": 6,
            "lang_train": 7, "lang_val": 8, "lang_test": 9, "glue": 10, "class_extra": 11}
_SPLITS = ("train", "val", "test")


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[stream]]))


def image_path(image_id: int) -> str:
    # <image_id>.jpg so Visual-Genome readers (which find images by id) and COCO readers
    # (which use file_name) both resolve the same files
    return f"images/{image_id}.jpg"


def _id_base(split: str, sizes: WorldSize) -> int:
    n_train, n_val, _ = sizes.scenes
    return {"train": 1, "val": 1 + n_train, "test": 1 + n_train + n_val}[split]


def shard_commands(sizes: WorldSize) -> list[dict]:
    """The `xfm-prep` invocations that turn this world's corpora into pretraining shards and a
    tokenizer. argv is relative to the world directory (run them with it as working directory);
    `done` is the file whose presence means the step finished."""
    n = str(sizes.shard_samples)
    return [
        {"name": "pairs", "done": "shards/pairs/stats.json",
         "argv": ["xfm-prep", "pairs", "--input", "annotations/captions_train.json",
                  "--images", "images", "--format", "coco-captions", "--out", "shards/pairs",
                  "--shard-samples", n]},
        {"name": "regions", "done": "shards/regions/stats.json",
         "argv": ["xfm-prep", "regions", "--input", "vg/region_descriptions.json",
                  "--images", "images", "--format", "vg-regions", "--out", "shards/regions",
                  "--shard-samples", n]},
        {"name": "text", "done": "shards/text/stats.json",
         "argv": ["xfm-prep", "text", "--input", "text/corpus.txt", "--format", "txt",
                  "--doc-sep", "line", "--out", "shards/text", "--shard-samples", n]},
        {"name": "images", "done": "shards/images/stats.json",
         "argv": ["xfm-prep", "images", "--input", "classes/train", "--format", "class-folders",
                  "--out", "shards/images", "--shard-samples", n]},
        {"name": "tokenizer", "done": "tokenizer/tokenizer.json",
         "argv": ["xfm-prep", "tokenizer", "--input", "text/corpus.txt", "--out", "tokenizer",
                  "--vocab-size", str(sizes.vocab_size)]},
    ]


def verify_commands(commands: list[dict]) -> list[dict]:
    """`xfm-prep verify` of every shard folder the commands write (reads every sample back)."""
    return [{"name": f"verify-{c['name']}", "argv": ["xfm-prep", "verify", out]}
            for c in commands if c["name"] != "tokenizer"
            for out in [c["argv"][c["argv"].index("--out") + 1]]]


# ----------------------------------------------------------------------------- make_world
def make_world(out_dir, seed: int = 0, size: str = "test", image_size: int | None = None,
               progress: bool = False) -> dict:
    """Write the synthetic world into `out_dir` and return its manifest (also in world.json).

    Re-running with the same arguments on a finished world returns the existing manifest; a
    directory holding anything else, or a world of an earlier FORMAT_VERSION, is refused (stale
    files would end up in the manifest)."""
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {sorted(SIZES)}")
    sizes = SIZES[size]
    image_size = int(image_size or DEFAULT_IMAGE_SIZE)
    out = Path(out_dir)
    params = {"seed": int(seed), "size": size, "image_size": image_size}
    existing = out / MANIFEST
    if existing.exists():
        manifest = json.loads(existing.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            # its downstream sets differ from today's, and so would every result computed on them
            raise ValueError(f"{out} was made by an earlier synthetic-world generator (format "
                             f"{manifest.get('format_version')}, now {FORMAT_VERSION}): delete it, and "
                             f"any results computed on it, to make it again")
        if {k: manifest.get(k) for k in params} == params:
            return manifest
        raise ValueError(f"{out} already holds a world with {({k: manifest.get(k) for k in params})}, "
                         f"not {params}; use another directory")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {MANIFEST}; use an empty directory")
    out.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=sum(sizes.scenes) + len(SHAPES) * sum(sizes.class_images), unit="img",
               desc="synth images", disable=not progress)
    scenes = {}
    for split, n in zip(_SPLITS, sizes.scenes):
        rng, base = _rng(seed, split), _id_base(split, sizes)
        scenes[split] = [sample_scene(rng, base + i, image_size, split=split) for i in range(n)]
        for sc in scenes[split]:
            atomic_write_bytes(out / image_path(sc.image_id), jpeg_bytes(render(sc)))
            bar.update(1)
    write_jsonl(out / "scenes.jsonl", [scene_to_dict(sc) for split in _SPLITS for sc in scenes[split]])

    files = {"images": "images", "scenes": "scenes.jsonl"}
    counts = {"scenes": dict(zip(_SPLITS, sizes.scenes))}
    lrng = {split: _rng(seed, f"lang_{split}") for split in _SPLITS}
    caps = {split: {sc.image_id: lang.captions(sc, lrng[split]) for sc in scenes[split]}
            for split in _SPLITS}

    files["coco_captions"] = _write_coco(out, scenes["train"], caps["train"])
    counts["captions_train"] = sum(len(c) for c in caps["train"].values())
    files["vg"], counts["regions_train"] = _write_vg(out, scenes["train"], lrng["train"])
    files["text"] = "text/corpus.txt"
    trng = _rng(seed, "text")
    docs = []
    for k in range(sizes.text_docs):
        scene = sample_scene(trng, 0, image_size)
        other = sample_scene(trng, 0, image_size) if k % 4 == 3 else None   # a quarter are pairs
        docs.append(lang.document(scene, trng, other))
    write_lines(out / files["text"], docs)
    counts["text_docs"] = len(docs)
    files["classes"], counts["class_images"] = _write_classes(out, seed, sizes, image_size, bar)
    bar.close()

    files["retrieval"], counts["retrieval"] = _write_retrieval(out, scenes, caps)
    files["vqa"], counts["vqa"] = _write_vqa(out, scenes, lrng, sizes.questions_per_scene)
    files["nlvr2"], counts["nlvr2"] = _write_nlvr2(out, scenes, lrng, sizes.nlvr2)
    files["grounding"], counts["grounding"] = _write_grounding(out, scenes, lrng)
    files["glue"], counts["glue"] = _write_glue(out, seed, sizes, image_size)

    commands = shard_commands(sizes)
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "xfm.data_prep.synth",
        **params,
        "image_format": {k: v for k, v in JPEG_OPTIONS.items()},
        "paths_relative_to": "the directory holding world.json",
        "vocabulary": {"shapes": list(SHAPES), "colours": list(lang.COLOURS),
                       "sizes": list(lang.SIZE_NAMES), "relations": list(lang.RELATIONS)},
        "counts": counts,
        "files": files,
        "shards": {c["name"]: c["argv"][c["argv"].index("--out") + 1]
                   for c in commands if c["name"] != "tokenizer"},
        "tokenizer": "tokenizer",
        "commands": [{**c, "cwd": ".", "command_line": shlex.join(c["argv"])} for c in commands],
        "checks": [{**c, "cwd": ".", "command_line": shlex.join(c["argv"])}
                   for c in verify_commands(commands)],
        "all_files": _list_files(out),
    }
    write_json(existing, manifest)   # written last: its presence means the world is complete
    return manifest


def _list_files(out: Path) -> list[dict]:
    rows = []
    for root, dirs, names in os.walk(out):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(out).as_posix()
            if rel != MANIFEST:
                rows.append({"path": rel, "bytes": p.stat().st_size})
    return rows


def _image_record(sc: Scene) -> dict:
    return {"id": sc.image_id, "file_name": f"{sc.image_id}.jpg", "width": sc.image_size,
            "height": sc.image_size}


def _write_coco(out: Path, scenes: list[Scene], caps: dict) -> str:
    path = "annotations/captions_train.json"
    pairs = [(sc.image_id, c) for sc in scenes for c in caps[sc.image_id]]
    write_json(out / path, coco_captions([_image_record(sc) for sc in scenes], pairs,
                                         "xfm synthetic world, train scenes"))
    return path


def _write_vg(out: Path, scenes: list[Scene], rng) -> tuple[dict, int]:
    objects, regions, image_data = [], [], []
    object_id = region_id = 0
    n_regions = 0
    for sc in scenes:
        url = f"https://synthetic.invalid/{image_path(sc.image_id)}"
        image_data.append({"image_id": sc.image_id, "url": url, "width": sc.image_size,
                           "height": sc.image_size, "coco_id": None, "flickr_id": None})
        objs = []
        for o in sc.objects:
            object_id += 1
            x, y, w, h = o.box
            objs.append({"object_id": object_id, "x": x, "y": y, "w": w, "h": h,
                         "names": [o.shape], "attributes": [o.size, o.colour]})
        objects.append({"image_id": sc.image_id, "image_url": url, "objects": objs})
        regs = []
        for item in lang.region_items(sc, rng):
            region_id += 1
            x, y, w, h = item["bbox"]
            regs.append({"region_id": region_id, "image_id": sc.image_id, "phrase": item["phrase"],
                         "x": x, "y": y, "width": w, "height": h})
        n_regions += len(regs)
        regions.append({"id": sc.image_id, "regions": regs})
    paths = {"objects": "vg/objects.json", "region_descriptions": "vg/region_descriptions.json",
             "image_data": "vg/image_data.json"}
    write_json(out / paths["objects"], objects)
    write_json(out / paths["region_descriptions"], regions)
    write_json(out / paths["image_data"], image_data)
    return paths, n_regions


def _write_classes(out: Path, seed: int, sizes: WorldSize, image_size: int, bar) -> tuple[dict, dict]:
    paths, counts = {}, {}
    for split, per_class in (("train", sizes.class_images[0]), ("val", sizes.class_images[1])):
        write_class_images(out / "classes", split, per_class, seed=seed, image_size=image_size,
                           on_image=lambda: bar.update(1))
        paths[split] = f"classes/{split}"
        counts[split] = per_class * len(SHAPES)
    return paths, counts


def _class_rng(seed: int, split: str) -> np.random.Generator:
    if split in ("train", "val"):   # the world's own class folders
        return _rng(seed, f"class_{split}")
    # any other name: a stream of its own, keyed by the name (crc32: stable across runs)
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed), _STREAMS["class_extra"], zlib.crc32(split.encode("utf-8"))]))


def write_class_images(root, split: str, per_class: int, seed: int = 0, image_size: int | None = None,
                       on_image=None) -> Path:
    """Write ``per_class`` class pictures of every shape into ``root/<split>/<shape>/<split>_<k>.jpg``
    (ImageNet-style class folders: the class is the shape of the one large object), rendered as the
    world's ``classes/`` pictures are; returns ``root/<split>``.

    ``split`` "train" / "val" with the world's seed, size and image size reproduce its
    ``classes/train`` / ``classes/val`` byte for byte (the first ``per_class`` pictures of each
    class: what ``make_world`` writes). Any other name draws from a random stream of its own
    (seed, name), independent of every set of the world, so a larger held-out set of the same
    classes can be written beside a world without touching it:

        write_class_images("extra", "heldout", 400, seed=0)   # 2000 pictures, extra/heldout/<shape>/

    ``on_image``: called after each picture (progress)."""
    image_size = int(image_size or DEFAULT_IMAGE_SIZE)
    rng = _class_rng(seed, split)
    folder = Path(root) / split
    for k in range(int(per_class)):
        for label in SHAPES:
            sc = sample_class_scene(rng, k, image_size, label, split=split)
            atomic_write_bytes(folder / label / f"{split}_{k:06d}.jpg", jpeg_bytes(render(sc)))
            if on_image is not None:
                on_image()
    return folder


def _write_retrieval(out: Path, scenes: dict, caps: dict) -> tuple[dict, dict]:
    """Karpathy split JSON as ALBEF/X-VLM read it: train = one row per caption
    {image, caption, image_id}; val/test = one row per image {image, caption: [...]}."""
    paths = {s: f"retrieval/{s}.json" for s in _SPLITS}
    train = [{"image": image_path(sc.image_id), "caption": c, "image_id": f"synth_{sc.image_id}"}
             for sc in scenes["train"] for c in caps["train"][sc.image_id]]
    write_json(out / paths["train"], train)
    counts = {"train": len(train)}
    for split in ("val", "test"):
        rows = [{"image": image_path(sc.image_id), "caption": caps[split][sc.image_id]}
                for sc in scenes[split]]
        write_json(out / paths[split], rows)
        counts[split] = len(rows)
    return paths, counts


def _write_vqa(out: Path, scenes: dict, lrng: dict, per_scene: int) -> tuple[dict, dict]:
    """VQAv2 rows {question_id, image, question, answer: [10 human answers], answer_type,
    dataset} (the answers agree: the picture decides) + answer_list.json."""
    paths = {s: f"vqa/{s}.json" for s in _SPLITS}
    paths["answer_list"] = "vqa/answer_list.json"
    counts = {}
    qid = 0
    for split in _SPLITS:
        rows = []
        for sc in scenes[split]:
            for q, a, kind in lang.questions(sc, lrng[split], per_scene):
                qid += 1
                rows.append({"question_id": qid, "image": image_path(sc.image_id), "question": q,
                             "answer": [a] * 10, "answer_type": kind, "dataset": "vqa"})
        write_json(out / paths[split], rows)
        counts[split] = len(rows)
    write_json(out / paths["answer_list"], lang.answer_vocabulary())
    return paths, counts


def _write_nlvr2(out: Path, scenes: dict, lrng: dict, n_rows: tuple) -> tuple[dict, dict]:
    """NLVR2 JSON lines {identifier, images: [left, right], sentence, label "True"/"False"};
    both images of a row come from the same split. As in NLVR2 itself, every sentence comes
    twice, with a pair of pictures it is true of and with one it is false of, so that the sentence
    alone predicts nothing: a model has to look at the pictures (without this, the majority label
    of each sentence read 0.655 of the demo world's test rows)."""
    names = {"train": "train", "val": "dev", "test": "test"}
    paths, counts = {}, {}
    for split, n in zip(_SPLITS, n_rows):
        rng, pool, rows = lrng[split], scenes[split], []

        def draw_pair():
            i, j = (int(v) for v in rng.choice(len(pool), size=2, replace=False))
            return pool[i], pool[j]

        while len(rows) < n:
            left, right = draw_pair()
            sentence, holds = lang.pair_statement_with_test(left, right, rng, want=(len(rows) // 2) % 2 == 0)
            truth = bool(holds(left, right))
            for _ in range(200):  # a pair of pictures the same sentence is not true of
                other = draw_pair()
                if holds(*other) != truth:
                    break
            else:
                continue  # (none found: another sentence)
            for (l_, r_), label in (((left, right), truth), (other, not truth)):
                rows.append({"identifier": f"{names[split]}-{len(rows)}-0",
                             "images": [image_path(l_.image_id), image_path(r_.image_id)],
                             "sentence": sentence, "label": "True" if label else "False"})
        rows = rows[:n]
        paths[names[split]] = f"nlvr2/{names[split]}.jsonl"
        write_jsonl(out / paths[names[split]], rows)
        counts[names[split]] = len(rows)
    return paths, counts


def _write_grounding(out: Path, scenes: dict, lrng: dict) -> tuple[dict, dict]:
    """RefCOCO-style JSON lines {ref_id, image, image_id, width, height, text, bbox [x,y,w,h]
    pixels, split}: one row per object, text = its shortest unambiguous name."""
    paths, counts = {}, {}
    ref_id = 0
    for split in _SPLITS:
        rows = []
        for sc in scenes[split]:
            for o in sc.objects:
                ref_id += 1
                rows.append({"ref_id": ref_id, "image": image_path(sc.image_id),
                             "image_id": sc.image_id, "width": sc.image_size,
                             "height": sc.image_size, "text": lang.refer(sc, o),
                             "bbox": list(o.box), "split": split})
        paths[split] = f"grounding/refcoco_{split}.jsonl"
        write_jsonl(out / paths[split], rows)
        counts[split] = len(rows)
    return paths, counts


def _write_glue(out: Path, seed: int, sizes: WorldSize, image_size: int) -> tuple[dict, dict]:
    """Two GLUE-format tasks about described scenes (text only):
    SynthRTE (RTE columns: index, sentence1, sentence2, label in {entailment, not_entailment};
    test.tsv without label) and SynthCoLA (CoLA columns without header: source, label 0/1,
    original judgement '*' or '', sentence; test.tsv with header index, sentence)."""
    rng = _rng(seed, "glue")
    paths = {"SynthRTE": {}, "SynthCoLA": {}}
    counts = {"SynthRTE": {}, "SynthCoLA": {}}
    for split, n in zip(("train", "dev", "test"), sizes.glue):
        rte, cola = [], []
        for k in range(n):
            entailed = k % 2 == 0
            p, h = lang.entailment_pair(sample_scene(rng, 0, image_size), rng, entailed)
            rte.append([str(k), p, h, "entailment" if entailed else "not_entailment"])
            ok = k % 2 == 1
            s = lang.consistency_sentence(sample_scene(rng, 0, image_size), rng, ok)
            cola.append(["synth", "1" if ok else "0", "" if ok else "*", s])
        # shuffle so labels do not alternate row by row (a model must not learn the row order)
        rte = [rte[i] for i in rng.permutation(n)]
        cola = [cola[i] for i in rng.permutation(n)]
        for task, rows in (("SynthRTE", rte), ("SynthCoLA", cola)):
            path = f"glue/{task}/{split}.tsv"
            if task == "SynthRTE":
                rows = [[str(i)] + r[1:] for i, r in enumerate(rows)]
                if split == "test":
                    write_tsv(out / path, [r[:3] for r in rows], ["index", "sentence1", "sentence2"])
                else:
                    write_tsv(out / path, rows, ["index", "sentence1", "sentence2", "label"])
            elif split == "test":
                write_tsv(out / path, [[str(i), r[3]] for i, r in enumerate(rows)], ["index", "sentence"])
            else:
                write_tsv(out / path, rows, None)
            paths[task][split] = path
            counts[task][split] = len(rows)
    return paths, counts


# ----------------------------------------------------------------------------- prepare_world
def run_manifest_command(out: Path, cmd: dict) -> subprocess.CompletedProcess:
    """Run one world.json command as `python -m xfm.data_prep.cli ...` (the installed
    `xfm-prep`, with this interpreter) in the world directory; a failure raises with its output."""
    argv = [sys.executable, "-m", "xfm.data_prep.cli", *cmd["argv"][1:]]
    proc = subprocess.run(argv, cwd=out / cmd["cwd"], capture_output=True, text=True)
    if proc.returncode != 0 or ("done" in cmd and not (out / cmd["done"]).exists()):
        raise RuntimeError(
            f"world {out}: step {cmd['name']!r} failed (exit {proc.returncode}): "
            f"{cmd['command_line']}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def prepare_world(out_dir, seed: int = 0, size: str = "test", image_size: int | None = None,
                  progress: bool = False, verify: bool = False) -> dict:
    """make_world, then run every command of world.json (as subprocesses, which proves the
    manifest's command lines), skipping steps whose `done` file exists; with `verify`, also run
    the `checks` (xfm-prep verify of every shard folder)."""
    manifest = make_world(out_dir, seed=seed, size=size, image_size=image_size, progress=progress)
    out = Path(out_dir)
    todo = [c for c in manifest["commands"] if not (out / c["done"]).exists()]
    for cmd in tqdm(todo, desc="prepare world", unit="step", disable=not progress):
        run_manifest_command(out, cmd)
    if verify:
        for cmd in manifest["checks"]:
            run_manifest_command(out, cmd)
    return manifest
