"""Every file of the synthetic world parses in its public format with the fields its readers
expect, world.json names exactly the files on disk, and the text-only GLUE-style labels follow
from their sentences."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from xfm.data_prep.synth import SIZES, make_world, write_class_images
from xfm.data_prep.synth.world import PLURALS, SHAPES

SINGULAR = {v: k for k, v in PLURALS.items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tsv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_manifest_lists_exactly_the_files_written(synth_world):
    m = synth_world.manifest
    assert json.loads(synth_world.path("world.json").read_text()) == m
    on_disk = {p.relative_to(synth_world.root).as_posix(): p.stat().st_size
               for p in synth_world.root.rglob("*") if p.is_file() and p.name != "world.json"}
    assert {f["path"]: f["bytes"] for f in m["all_files"]} == on_disk
    named = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        else:
            named.append(v)
    walk(m["files"])
    for rel in named:
        assert synth_world.path(rel).exists(), rel
    assert (m["seed"], m["size"], m["image_size"]) == (0, "test", 64)
    assert m["counts"]["scenes"] == {"train": 64, "val": 16, "test": 16}
    # the shard commands read files of this world and write where `shards` says
    for cmd in m["commands"]:
        argv = cmd["argv"]
        assert argv[0] == "xfm-prep" and cmd["command_line"].startswith("xfm-prep " + argv[1])
        for flag in ("--input", "--images"):
            if flag in argv:
                assert synth_world.path(argv[argv.index(flag) + 1]).exists(), (cmd["name"], flag)
        out = argv[argv.index("--out") + 1]
        assert out == (m["shards"].get(cmd["name"]) or m["tokenizer"])
    assert {c["name"] for c in m["commands"]} == {"pairs", "regions", "text", "images", "tokenizer"}


def test_make_world_is_idempotent_and_refuses_foreign_directories(synth_world, tmp_path):
    assert make_world(synth_world.root, seed=0, size="test") == synth_world.manifest
    with pytest.raises(ValueError, match="already holds a world"):
        make_world(synth_world.root, seed=1, size="test")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_world(tmp_path, seed=0)
    with pytest.raises(ValueError, match="unknown world size"):
        make_world(tmp_path / "new", size="huge")
    with pytest.raises(ValueError, match="too small"):
        make_world(tmp_path / "tiny", image_size=8)


def test_coco_and_visual_genome_files(synth_world):
    coco = json.loads(synth_world.path("annotations/captions_train.json").read_text())
    assert set(coco) >= {"info", "images", "annotations", "licenses"}
    ids = {im["id"] for im in coco["images"]}
    for im in coco["images"]:
        path = synth_world.path("images") / im["file_name"]
        with Image.open(path) as pic:
            assert pic.format == "JPEG" and pic.size == (im["width"], im["height"]) == (64, 64)
    assert all(a["image_id"] in ids and a["caption"].strip() for a in coco["annotations"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    objects = json.loads(synth_world.path("vg/objects.json").read_text())
    regions = json.loads(synth_world.path("vg/region_descriptions.json").read_text())
    image_data = json.loads(synth_world.path("vg/image_data.json").read_text())
    assert [e["image_id"] for e in objects] == [e["id"] for e in regions] == [e["image_id"] for e in image_data]
    for e in objects:
        for o in e["objects"]:
            assert set(o) >= {"object_id", "x", "y", "w", "h", "names"} and o["names"][0] in SHAPES
            assert 0 <= o["x"] and o["x"] + o["w"] <= 64 and 0 <= o["y"] and o["y"] + o["h"] <= 64
    for e in regions:
        assert e["regions"]
        for r in e["regions"]:
            assert set(r) >= {"region_id", "image_id", "phrase", "x", "y", "width", "height"}
            assert r["image_id"] == e["id"] and r["width"] > 0 and r["height"] > 0
            assert r["x"] + r["width"] <= 64 and r["y"] + r["height"] <= 64
            # VG readers find pictures by id: <images>/<image_id>.jpg
            assert synth_world.path(f"images/{r['image_id']}.jpg").exists()


def test_text_corpus_one_document_per_line(synth_world):
    lines = synth_world.path("text/corpus.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 200
    assert all(len(x.split(". ")) >= 2 for x in lines[:-1])
    words = set(" ".join(lines).replace(".", " ").replace("?", " ").replace(":", " ").replace(",", " ").split())
    # the corpus holds the words of every task, so the tokenizer trained on it covers them
    assert set(SHAPES) <= words and {"left", "above", "below", "many", "colour", "yes", "no", "image"} <= words


def test_karpathy_retrieval_json(synth_world):
    train = json.loads(synth_world.path("retrieval/train.json").read_text())
    assert all(set(r) == {"image", "caption", "image_id"} and isinstance(r["caption"], str) for r in train)
    per_image = Counter(r["image_id"] for r in train)
    assert set(per_image.values()) == {3}
    for split in ("val", "test"):
        rows = json.loads(synth_world.path(f"retrieval/{split}.json").read_text())
        assert len(rows) == 16
        for r in rows:
            assert set(r) == {"image", "caption"} and len(r["caption"]) == 3
            assert synth_world.path(r["image"]).exists()


def test_vqa_rows_and_answer_list(synth_world):
    answers = json.loads(synth_world.path("vqa/answer_list.json").read_text())
    assert len(answers) == len(set(answers)) and {"yes", "no", "0", "red", "circle"} <= set(answers)
    qids = set()
    for split in ("train", "val", "test"):
        rows = json.loads(synth_world.path(f"vqa/{split}.json").read_text())
        assert rows
        for r in rows:
            assert {"image", "question", "answer", "question_id"} <= set(r)
            assert r["question"].endswith("?") and len(r["answer"]) == 10
            assert synth_world.path(r["image"]).exists()
            qids.add(r["question_id"])
    assert len(qids) == sum(synth_world.manifest["counts"]["vqa"].values())


def test_nlvr2_json_lines(synth_world):
    idents = set()
    for split in ("train", "dev", "test"):
        for r in _jsonl(synth_world.path(f"nlvr2/{split}.jsonl")):
            assert set(r) >= {"images", "sentence", "label", "identifier"}
            assert len(r["images"]) == 2 and r["images"][0] != r["images"][1]
            assert all(synth_world.path(p).exists() for p in r["images"])
            assert r["label"] in ("True", "False")
            idents.add(r["identifier"])
    assert len(idents) == 96


def test_refcoco_grounding_json_lines(synth_world):
    ref_ids = set()
    for split in ("train", "val", "test"):
        for r in _jsonl(synth_world.path(f"grounding/refcoco_{split}.jsonl")):
            assert set(r) >= {"image", "text", "bbox", "ref_id", "split"} and r["split"] == split
            x, y, w, h = r["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= r["width"] and y + h <= r["height"]
            assert r["text"].startswith("the ")
            ref_ids.add(r["ref_id"])
    assert len(ref_ids) == sum(synth_world.manifest["counts"]["grounding"].values())


def test_class_folders(synth_world):
    for split in ("train", "val"):
        root = synth_world.path(f"classes/{split}")
        assert sorted(p.name for p in root.iterdir()) == sorted(SHAPES)
        for p in root.rglob("*.jpg"):
            with Image.open(p) as im:
                im.load()
                assert im.mode == "RGB" and im.size == (64, 64)



def test_write_class_images_reproduces_the_class_folders_and_writes_new_held_out_sets(synth_world, tmp_path):
    """The world's own class folders come out of write_class_images byte for byte; another split
    name is a new set of the same classes and rendering, deterministic, sharing no picture with
    the world's folders (nor with a set of another name), and the world is left untouched."""
    def files(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}

    world_before = {f["path"]: f["bytes"] for f in synth_world.manifest["all_files"]}
    per_class = dict(zip(("train", "val"), SIZES["test"].class_images))
    for split, n in per_class.items():
        out = write_class_images(tmp_path / "again", split, n, seed=0)
        assert out == tmp_path / "again" / split
        assert files(out) == files(synth_world.path(f"classes/{split}"))

    held = files(write_class_images(tmp_path / "a", "heldout", 7, seed=0))
    assert len(held) == 7 * len(SHAPES)
    assert sorted({name.split("/")[0] for name in held}) == sorted(SHAPES)
    assert all(name.split("/")[1].startswith("heldout_") for name in held)
    assert held == files(write_class_images(tmp_path / "b", "heldout", 7, seed=0))   # deterministic
    world_pictures = {b for split in per_class for b in files(synth_world.path(f"classes/{split}")).values()}
    assert not world_pictures & set(held.values())
    other = files(write_class_images(tmp_path / "a", "heldout2", 7, seed=0))
    assert not set(other.values()) & set(held.values())
    with Image.open(tmp_path / "a" / "heldout" / SHAPES[0] / "heldout_000000.jpg") as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    # nothing was written into the world
    for rel, size in world_before.items():
        assert synth_world.path(rel).stat().st_size == size


# ------------------------------------------------------------------ GLUE-style tasks
_OBJ = r"(small|large) (\w+) (\w+)"


def _premise_facts(premise: str):
    """Read the closed-world description: the objects and the stated relations."""
    head, *rel_sents = [s for s in premise.split(". ") if s]
    listed = head.split(": ", 1)[1].rstrip(".")
    objs = [re.fullmatch("a " + _OBJ, x).groups() for x in re.split(r", | and ", listed)]
    rels = {}
    for s in rel_sents:
        m = re.fullmatch(r"(the .+?) is (left of|right of|above|below) (the .+?)\.?", s)
        rels[(m.group(1), m.group(3))] = m.group(2)
    return objs, rels


def _hypothesis_follows(premise: str, hyp: str) -> bool:
    objs, rels = _premise_facts(premise)
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    numbers = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four"))}
    hyp = hyp.rstrip(".")
    if m := re.fullmatch(r"(the .+?) is (left of|right of|above|below) (the .+)", hyp):
        a, r, b = m.groups()
        if (a, b) in rels:
            return rels[(a, b)] == r
        return inverse[rels[(b, a)]] == r
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+)", hyp):
        if m.group(1) in numbers:
            shape = SINGULAR.get(m.group(2), m.group(2))
            return numbers[m.group(1)] == sum(o[2] == shape for o in objs)
    if m := re.fullmatch(r"there is a (\w+) (\w+)", hyp):
        return any((o[1], o[2]) == m.groups() for o in objs)
    if m := re.fullmatch(r"there is a (small|large) (\w+) (\w+)", hyp):
        return tuple(m.groups()) in objs
    if m := re.fullmatch(r"there is no (\w+) (\w+)", hyp):
        return not any((o[1], o[2]) == m.groups() for o in objs)
    if m := re.fullmatch(r"the (\w+) (\w+) is (small|large)", hyp):
        return any(o == (m.group(3), m.group(1), m.group(2)) for o in objs)
    raise AssertionError(f"unexpected hypothesis form: {hyp}")


def test_glue_pair_task_rte_format_and_labels_follow(synth_world):
    d = synth_world.path("glue/SynthRTE")
    for split in ("train", "dev"):
        rows = _tsv(d / f"{split}.tsv")
        assert rows[0] == ["index", "sentence1", "sentence2", "label"]
        labels = Counter(r[3] for r in rows[1:])
        assert set(labels) == {"entailment", "not_entailment"} and labels["entailment"] == labels["not_entailment"]
        assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]
        for idx, p, h, label in rows[1:]:
            assert _hypothesis_follows(p, h) == (label == "entailment"), (p, h, label)
    test = _tsv(d / "test.tsv")
    assert test[0] == ["index", "sentence1", "sentence2"] and all(len(r) == 3 for r in test)


def _consistent(sentence: str) -> bool:
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    if m := re.fullmatch(r"(the .+?) is (left of|right of|above|below) (the .+?), so (the .+?) is "
                         r"(left of|right of|above|below) (the .+?)\.", sentence):
        a, r, b, b2, r2, a2 = m.groups()
        assert (a, b) == (a2, b2)
        return inverse[r] == r2
    m = re.fullmatch(r"there (?:is|are) (\w+) shapes?: (.+)\.", sentence)
    numbers = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five"))}
    return numbers[m.group(1)] == len(re.split(r", | and ", m.group(2)))


def test_glue_single_sentence_task_cola_format_and_labels_follow(synth_world):
    d = synth_world.path("glue/SynthCoLA")
    for split in ("train", "dev"):
        rows = _tsv(d / f"{split}.tsv")       # CoLA train/dev have no header
        assert all(len(r) == 4 for r in rows) and len(rows) == synth_world.manifest["counts"]["glue"]["SynthCoLA"][split]
        labels = Counter(r[1] for r in rows)
        assert labels["0"] == labels["1"] > 0
        for source, label, judgement, sentence in rows:
            assert judgement == ("" if label == "1" else "*")
            assert _consistent(sentence) == (label == "1"), sentence
    test = _tsv(d / "test.tsv")
    assert test[0] == ["index", "sentence"] and all(len(r) == 2 for r in test)


def test_cli_writes_the_same_world_as_the_api(tmp_path):
    out = tmp_path / "cli_world"
    proc = subprocess.run([sys.executable, "-m", "xfm.data_prep.cli", "synth", "--out", str(out),
                           "--seed", "3", "--size", "test", "--image-size", "48"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "xfm-prep pairs" in proc.stdout
    api = make_world(tmp_path / "api_world", seed=3, size="test", image_size=48)
    assert json.loads((out / "world.json").read_text()) == api
    for f in api["all_files"]:
        assert (out / f["path"]).read_bytes() == (tmp_path / "api_world" / f["path"]).read_bytes()
    with Image.open(out / "images" / "1.jpg") as im:
        assert im.size == (48, 48)


def test_sizes_grow():
    test, demo, small = SIZES["test"], SIZES["demo"], SIZES["small"]
    assert sum(test.scenes) <= 128 and sum(test.scenes) < sum(demo.scenes) < sum(small.scenes)
