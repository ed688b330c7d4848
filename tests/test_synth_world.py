"""The synthetic world says only what its pictures show.

Facts are recomputed here from the decoded JPEG pixels alone (saturated connected components ->
box, nearest named colour, shape from the silhouette), independently of the generator's masks,
and every caption, region phrase, answer, referring expression and NLVR2 statement is checked
against them.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xfm.data_prep.synth import make_world
from xfm.data_prep.synth.world import COLOURS, PLURALS, SHAPES

NUMBERS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five"))}
SINGULAR = {v: k for k, v in PLURALS.items()}


# ------------------------------------------------------------------ facts from pixels
def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool mask (plain flood fill: no scipy in the deps)."""
    seen = np.zeros_like(mask)
    comps = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pts = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pts.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(np.array(pts))
    return comps


def _shape_of(sil: np.ndarray) -> str:
    """Name a silhouette (h, w bool, tight) by its geometry."""
    h, w = sil.shape
    fill = sil.mean()
    top, bottom, middle = sil[0].sum() / w, sil[-1].sum() / w, sil[h // 2].sum() / w
    if fill > 0.9:
        return "square"
    if bottom > 0.75 and top < 0.35:
        return "triangle"
    if fill > 0.68:
        return "circle"
    if top > 0.2 and bottom > 0.2 and middle > 0.9:
        return "cross"
    return "diamond"


def pixel_objects(path: Path) -> list[dict]:
    """Objects seen in an image: saturated pixels (the background is grey), grouped."""
    px = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    sat = px.max(axis=2) - px.min(axis=2)
    objs = []
    for pts in _components(sat > 70):
        if len(pts) < 12:   # JPEG speckle, never an object (the smallest shape has > 40 px)
            continue
        y0, x0 = pts.min(0)
        y1, x1 = pts.max(0)
        sil = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
        sil[pts[:, 0] - y0, pts[:, 1] - x0] = True
        mean = px[pts[:, 0], pts[:, 1]].mean(0)
        colour = min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))
        box = (int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1))
        objs.append({"box": box, "colour": colour, "shape": _shape_of(sil),
                     "size": "large" if box[2] >= 0.3 * px.shape[1] else "small",
                     "centre": ((x0 + x1) / 2, (y0 + y1) / 2)})
    return objs


def pixel_relation(a: dict, b: dict) -> str:
    dx, dy = a["centre"][0] - b["centre"][0], a["centre"][1] - b["centre"][1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def find(objs, words: list[str]) -> list[dict]:
    """Objects matching a noun phrase's attribute words, e.g. ['large', 'red', 'circle']."""
    out = []
    for o in objs:
        if all(w in (o["size"], o["colour"], o["shape"]) for w in words):
            out.append(o)
    return out


def np_words(phrase: str) -> list[str]:
    words = phrase.split()
    if words and words[0] in ("a", "the"):
        words = words[1:]
    return words


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pixel_facts(synth_world) -> dict:
    return {int(p.stem): pixel_objects(p) for p in sorted(synth_world.path("images").glob("*.jpg"))}


@pytest.fixture(scope="module")
def scenes(synth_world) -> dict:
    rows = [json.loads(line) for line in synth_world.path("scenes.jsonl").read_text().splitlines()]
    return {r["image_id"]: r for r in rows}


def _image_id(rel: str) -> int:
    return int(Path(rel).stem)


# ------------------------------------------------------------------ tests
def test_pixels_show_exactly_the_scene_objects(pixel_facts, scenes):
    """The pixel reading agrees with the scene facts object for object (boxes exact within the
    one-pixel blur of JPEG edges), so checking text against pixels checks it against pictures."""
    assert len(pixel_facts) == len(scenes) == 96
    shapes_seen = Counter()
    for image_id, scene in scenes.items():
        seen = sorted(pixel_facts[image_id], key=lambda o: o["box"])
        truth = sorted(scene["objects"], key=lambda o: tuple(o["bbox"]))
        assert len(seen) == len(truth), image_id
        for s, t in zip(seen, truth):
            assert max(abs(a - b) for a, b in zip(s["box"], t["bbox"])) <= 1, (image_id, s, t)
            assert (s["colour"], s["shape"], s["size"]) == (t["colour"], t["shape"], t["size"]), (image_id, s, t)
            shapes_seen[t["shape"]] += 1
    assert set(shapes_seen) == set(SHAPES)


def test_captions_match_pixels(synth_world, pixel_facts):
    coco = json.loads(synth_world.path("annotations/captions_train.json").read_text())
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert len(by_image) == 64 and all(len(c) == 3 for c in by_image.values())
    for image_id, (listing, rel, counts) in by_image.items():
        objs = pixel_facts[image_id]
        # 1. left-to-right listing of every object with all attributes
        items = re.split(r", | and ", listing)
        ordered = sorted(objs, key=lambda o: o["centre"])
        assert [np_words(x) for x in items] == [[o["size"], o["colour"], o["shape"]] for o in ordered], listing
        # 2. a relation between two uniquely named objects, or the lone object
        m = re.fullmatch(r"(.+) (left of|right of|above|below) (.+)", rel)
        if len(objs) == 1:
            assert m is None and rel.startswith("there is one ")
        else:
            (a,), (b,) = find(objs, np_words(m.group(1))), find(objs, np_words(m.group(3)))
            assert pixel_relation(a, b) == m.group(2), rel
        # 3. counts
        n, rest = counts.split(": ")
        assert NUMBERS[n.split()[0]] == len(objs)
        for part in re.split(r", | and ", rest):
            k, noun = part.split()
            shape = SINGULAR.get(noun, noun)
            assert NUMBERS[k] == sum(o["shape"] == shape for o in objs), counts


def test_region_boxes_cover_their_shape_pixels(synth_world, pixel_facts):
    regions = json.loads(synth_world.path("vg/region_descriptions.json").read_text())
    objects = json.loads(synth_world.path("vg/objects.json").read_text())
    for entry, objs_entry in zip(regions, objects):
        image_id = entry["id"]
        assert objs_entry["image_id"] == image_id
        objs = pixel_facts[image_id]
        assert len(objs_entry["objects"]) == len(objs)
        for r in entry["regions"]:
            box = (r["x"], r["y"], r["width"], r["height"])
            m = re.fullmatch(r"(.+) (left of|right of|above|below) (.+)", r["phrase"])
            if m is None:
                (o,) = find(objs, np_words(r["phrase"]))
                assert max(abs(a - b) for a, b in zip(o["box"], box)) <= 1, (r, o)
            else:   # relation phrase: its box is the union of both objects' boxes
                (a,), (b,) = find(objs, np_words(m.group(1))), find(objs, np_words(m.group(3)))
                assert pixel_relation(a, b) == m.group(2)
                x0 = min(a["box"][0], b["box"][0])
                x1 = max(a["box"][0] + a["box"][2], b["box"][0] + b["box"][2])
                assert abs(box[0] - x0) <= 1 and abs(box[0] + box[2] - x1) <= 1


def _answer(objs, question: str) -> str:
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        noun = m.group(1)
        return str(len(objs) if noun == "shapes" else sum(o["shape"] == SINGULAR[noun] for o in objs))
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        (o,) = find(objs, [m.group(1)])
        return o["colour"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (o,) = find(objs, [m.group(1)])
        return o["shape"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        (o,) = find(objs, [m.group(1), m.group(2)])
        return o["size"]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if find(objs, [m.group(1), m.group(2)]) else "no"
    if m := re.fullmatch(r"is (the .+) (left of|right of|above|below) (the .+)\?", question):
        (a,), (b,) = find(objs, np_words(m.group(1))), find(objs, np_words(m.group(3)))
        return "yes" if pixel_relation(a, b) == m.group(2) else "no"
    raise AssertionError(f"unexpected question form: {question}")


def test_vqa_answers_match_pixels(synth_world, pixel_facts):
    answer_list = json.loads(synth_world.path("vqa/answer_list.json").read_text())
    kinds = Counter()
    for split in ("train", "val", "test"):
        for row in json.loads(synth_world.path(f"vqa/{split}.json").read_text()):
            objs = pixel_facts[_image_id(row["image"])]
            assert len(set(row["answer"])) == 1 and row["answer"][0] in answer_list
            assert _answer(objs, row["question"]) == row["answer"][0], row
            kinds[row["answer_type"]] += 1
    assert set(kinds) == {"count", "colour", "shape", "size", "yes/no"}


def test_referring_expressions_name_one_object_with_its_box(synth_world, pixel_facts):
    for split in ("train", "val", "test"):
        for line in synth_world.path(f"grounding/refcoco_{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            matches = find(pixel_facts[_image_id(row["image"])], np_words(row["text"]))
            assert len(matches) == 1, row          # unambiguous in its picture
            assert max(abs(a - b) for a, b in zip(matches[0]["box"], row["bbox"])) <= 1, row


def _statement_truth(left, right, sentence: str) -> bool:
    side = {"left": left, "right": right}
    if m := re.fullmatch(r"the (left|right) image contains a (\w+) (\w+)", sentence):
        return bool(find(side[m.group(1)], [m.group(2), m.group(3)]))
    if m := re.fullmatch(r"both images contain a (\w+)", sentence):
        return bool(find(left, [m.group(1)])) and bool(find(right, [m.group(1)]))
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+) in total", sentence):
        shape = SINGULAR.get(m.group(2), m.group(2))
        return NUMBERS[m.group(1)] == len(find(left, [shape])) + len(find(right, [shape]))
    if m := re.fullmatch(r"the (left|right) image has more shapes than the (left|right) image", sentence):
        return len(side[m.group(1)]) > len(side[m.group(2)])
    if m := re.fullmatch(r"exactly one image contains a (\w+) object", sentence):
        return bool(find(left, [m.group(1)])) != bool(find(right, [m.group(1)]))
    raise AssertionError(f"unexpected statement form: {sentence}")


def test_nlvr2_labels_match_pixels_and_are_balanced(synth_world, pixel_facts):
    for split in ("train", "dev", "test"):
        rows = [json.loads(x) for x in synth_world.path(f"nlvr2/{split}.jsonl").read_text().splitlines()]
        labels = Counter(r["label"] for r in rows)
        assert labels["True"] == labels["False"] == len(rows) // 2, labels
        # as in NLVR2, each sentence with as many pairs it is true of as pairs it is false of:
        # the sentence alone predicts nothing (before, its majority label read 0.655 of the demo
        # world's test rows)
        per_sentence = Counter((r["sentence"], r["label"]) for r in rows)
        for sentence in {r["sentence"] for r in rows}:
            assert per_sentence[(sentence, "True")] == per_sentence[(sentence, "False")], sentence
        for r in rows:
            left, right = (pixel_facts[_image_id(p)] for p in r["images"])
            assert _statement_truth(left, right, r["sentence"]) == (r["label"] == "True"), r


def test_class_folders_label_the_dominant_shape(synth_world):
    for split, per_class in (("train", 6), ("val", 4)):
        for shape in SHAPES:
            files = sorted(synth_world.path(f"classes/{split}/{shape}").glob("*.jpg"))
            assert len(files) == per_class
            for f in files:
                largest = max(pixel_objects(f), key=lambda o: o["box"][2] * o["box"][3])
                assert largest["shape"] == shape and largest["size"] == "large", f


def _digest_tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_world(synth_world, tmp_path):
    again = tmp_path / "again"
    make_world(again, seed=0, size="test")
    assert _digest_tree(again) == _digest_tree(synth_world.root)
    other = tmp_path / "other"
    make_world(other, seed=1, size="test")
    a, b = _digest_tree(synth_world.root), _digest_tree(other)
    assert set(a) == set(b)                     # same layout, same file names
    differing = [k for k in a if a[k] != b[k]]
    assert "annotations/captions_train.json" in differing
    assert sum(k.startswith("images/") for k in differing) == sum(k.startswith("images/") for k in a)


def test_splits_are_disjoint(synth_world, scenes):
    digest = {int(p.stem): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in synth_world.path("images").glob("*.jpg")}
    by_split = {s: {i for i, sc in scenes.items() if sc["split"] == s} for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [64, 16, 16]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not by_split[a] & by_split[b]
        assert not {digest[i] for i in by_split[a]} & {digest[i] for i in by_split[b]}
        sig = lambda s: {json.dumps(scenes[i]["objects"]) for i in by_split[s]}  # noqa: E731
        assert not sig(a) & sig(b)
    # every set uses only the scenes of its own split; pretraining corpora only train scenes
    coco = json.loads(synth_world.path("annotations/captions_train.json").read_text())
    assert {im["id"] for im in coco["images"]} == by_split["train"]
    vg = json.loads(synth_world.path("vg/region_descriptions.json").read_text())
    assert {e["id"] for e in vg} == by_split["train"]
    split_of = {"train": "train", "val": "val", "test": "test", "dev": "val"}
    for name in ("train", "val", "test"):
        rows = json.loads(synth_world.path(f"retrieval/{name}.json").read_text())
        assert {_image_id(r["image"]) for r in rows} == by_split[name]
        rows = json.loads(synth_world.path(f"vqa/{name}.json").read_text())
        assert {_image_id(r["image"]) for r in rows} <= by_split[name]
        rows = synth_world.path(f"grounding/refcoco_{name}.jsonl").read_text().splitlines()
        assert {_image_id(json.loads(r)["image"]) for r in rows} <= by_split[name]
    for name in ("train", "dev", "test"):
        for line in synth_world.path(f"nlvr2/{name}.jsonl").read_text().splitlines():
            assert {_image_id(p) for p in json.loads(line)["images"]} <= by_split[split_of[name]]
    cls = {s: {hashlib.sha256(p.read_bytes()).hexdigest() for p in synth_world.path(f"classes/{s}").rglob("*.jpg")}
           for s in ("train", "val")}
    assert not cls["train"] & cls["val"]
