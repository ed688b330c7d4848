"""Readers of the public downstream formats (xfm.finetune.formats): the synthetic world's files
read in every layout give the same examples, and malformed files fail naming file, record and
field."""
from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest

from xfm.finetune import formats as F
from xfm.finetune.formats import DataFormatError


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def raises_naming(fn, *fragments, error=DataFormatError) -> str:
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def load(world, rel):
    return json.loads(world.path(rel).read_text())


def image_id_of(rel: str) -> int:
    return int(Path(rel).stem)


# ------------------------------------------------------------------------------------ retrieval
def karpathy_from_world(world, restval_every=4) -> dict:
    """The world's X-VLM retrieval files rewritten as a Karpathy dataset_coco.json; every
    `restval_every`-th training image goes to 'restval' (which still counts as training)."""
    images = OrderedDict()
    for row in load(world, "retrieval/train.json"):
        images.setdefault(row["image"], []).append(row["caption"])
    out = []
    for k, (rel, caps) in enumerate(images.items()):
        out.append({"filepath": "images", "filename": Path(rel).name,
                    "split": "restval" if k % restval_every == 3 else "train",
                    "sentences": [{"raw": c, "tokens": c.split()} for c in caps],
                    "cocoid": image_id_of(rel), "imgid": len(out)})
    for split in ("val", "test"):
        for row in load(world, f"retrieval/{split}.json"):
            out.append({"filepath": "images", "filename": Path(row["image"]).name, "split": split,
                        "sentences": [{"raw": c} for c in row["caption"]],
                        "cocoid": image_id_of(row["image"]), "imgid": len(out)})
    return {"images": out, "dataset": "coco"}


def test_retrieval_xvlm_and_karpathy_give_the_same_examples(synth_world, tmp_path):
    root = synth_world.root
    train = F.read_retrieval_train(synth_world.path("retrieval/train.json"), root)
    counts = synth_world.manifest["counts"]
    assert len(train) == counts["retrieval"]["train"]
    assert len({p.image_id for p in train}) == counts["scenes"]["train"]
    assert train[0].image_id == 0 and all(os.path.isabs(p.image.path) for p in train)
    # same picture -> same id; ids number the pictures in order of first appearance
    by_image = {}
    for p in train:
        assert by_image.setdefault(p.image.path, p.image_id) == p.image_id
    assert sorted(set(by_image.values())) == list(range(len(by_image)))

    karpathy = write_json(tmp_path / "dataset_coco.json", karpathy_from_world(synth_world))
    assert F.read_karpathy_retrieval_train(karpathy, root) == train
    assert F.read_retrieval(karpathy, "train", root) == train          # layout found by content
    assert F.read_retrieval(synth_world.path("retrieval/train.json"), "train", root) == train
    # control: without restval the Karpathy training set is a different (smaller) one
    assert len(F.read_karpathy_retrieval_train(karpathy, root, include_restval=False)) < len(train)

    for split in ("val", "test"):
        xvlm = F.read_retrieval_eval(synth_world.path(f"retrieval/{split}.json"), root)
        assert len(xvlm.images) == counts["retrieval"][split]
        assert F.read_karpathy_retrieval_eval(karpathy, split, root) == xvlm
        assert F.read_retrieval(karpathy, split, root) == xvlm
        for i, texts in enumerate(xvlm.img2txt):
            assert all(xvlm.txt2img[t] == i for t in texts)
        assert sorted(t for ts in xvlm.img2txt for t in ts) == list(range(len(xvlm.texts)))
        assert F.check_images(xvlm) == len(xvlm.images)
    assert F.check_images(train) == counts["scenes"]["train"]


def test_retrieval_json_lines_read_like_the_array(synth_world, tmp_path):
    rows = load(synth_world, "retrieval/test.json")
    lines = write_jsonl(tmp_path / "test.jsonl", rows)
    expected = F.read_retrieval_eval(synth_world.path("retrieval/test.json"), synth_world.root)
    assert F.read_retrieval_eval(lines, synth_world.root) == expected
    assert F.read_retrieval(lines, "test", synth_world.root) == expected
    one = write_jsonl(tmp_path / "one.jsonl", rows[:1])     # one record: still JSON lines
    assert F.read_retrieval(one, "test", synth_world.root).texts == rows[0]["caption"]


def test_retrieval_malformed(synth_world, tmp_path):
    rows = load(synth_world, "retrieval/test.json")
    rows[12]["caption"] = 7
    bad = write_json(tmp_path / "retrieval" / "test.json", rows)
    raises_naming(lambda: F.read_retrieval_eval(bad), "retrieval/test.json: record 12: field 'caption': "
                  "expected a list of strings, got int")
    rows[12]["caption"] = ["fine", 3]
    write_json(bad, rows)
    raises_naming(lambda: F.read_retrieval_eval(bad), "record 12", "field 'caption[1]'", "got int")

    train = load(synth_world, "retrieval/train.json")
    del train[5]["image_id"]
    bad_train = write_json(tmp_path / "train.json", train)
    raises_naming(lambda: F.read_retrieval_train(bad_train), "train.json: record 5: field 'image_id': missing")
    train = load(synth_world, "retrieval/train.json")
    train[2]["caption"] = None
    write_json(bad_train, train)
    raises_naming(lambda: F.read_retrieval_train(bad_train), "record 2 (image_id synth_", "field 'caption'",
                  "got null")

    karpathy = karpathy_from_world(synth_world)
    karpathy["images"][3]["split"] = "holdout"
    kp = write_json(tmp_path / "dataset_coco.json", karpathy)
    raises_naming(lambda: F.read_karpathy_retrieval_train(kp), "dataset_coco.json: record 3 (cocoid ",
                  "field 'split'", "'holdout'")
    karpathy = karpathy_from_world(synth_world)
    del karpathy["images"][4]["sentences"][1]["raw"]
    write_json(kp, karpathy)
    raises_naming(lambda: F.read_karpathy_retrieval_train(kp), "record 4", "field 'sentences[1].raw': missing")

    broken = tmp_path / "broken.json"
    broken.write_text('[{"image": "a.jpg",\n "caption": ["x"],}]')
    raises_naming(lambda: F.read_retrieval_eval(broken), "broken.json: line 2", "invalid JSON")


def test_check_images_lists_every_missing_file(synth_world, tmp_path):
    rows = load(synth_world, "retrieval/test.json")
    rows[3]["image"] = "images/absent.jpg"
    rows[9]["image"] = "images/gone.jpg"
    path = write_json(tmp_path / "retrieval" / "test.json", rows)
    ev = F.read_retrieval_eval(path, synth_world.root)
    with pytest.raises(F.MissingImagesError) as info:
        F.check_images(ev)
    message = str(info.value)
    assert "2 image file(s) missing" in message
    assert "retrieval/test.json: record 3: field 'image': image file not found: images/absent.jpg" in message
    assert "record 9" in message and "images/gone.jpg" in message
    assert [m[0].split(": ")[-1] for m in info.value.missing] == ["record 3", "record 9"]
    # another root: every image is missing there, resolved by its relative path
    with pytest.raises(F.MissingImagesError) as info:
        F.check_images(ev, tmp_path / "elsewhere")
    assert len(info.value.missing) == len(rows)
    assert str(tmp_path / "elsewhere" / "images") in str(info.value)


# ---------------------------------------------------------------------------------------- NLVR2
def official_nlvr2_from_world(world, split_file, tmp_path, use_directory: bool):
    """The world's NLVR2 rows in the official layout: identifier-named image files (links to the
    world's pictures) in `<pair>-img0.png` / `-img1.png`, optionally in numbered directories."""
    image_dir = tmp_path / "images"
    rows = []
    for k, row in enumerate(json.loads(line) for line in world.path(split_file).read_text().splitlines()):
        identifier = f"{row['identifier'].split('-')[0]}-{k}-0-0"      # <split>-<set>-<pair>-<sentence>
        pair_id = identifier.rsplit("-", 1)[0]
        folder = image_dir / str(k % 3) if use_directory else image_dir
        folder.mkdir(parents=True, exist_ok=True)
        for j, rel in enumerate(row["images"]):
            os.symlink(world.path(rel), folder / f"{pair_id}-img{j}.png")
        official = {"identifier": identifier, "sentence": row["sentence"], "label": row["label"],
                    "left_url": "https://example.invalid/l.jpg", "right_url": "https://example.invalid/r.jpg",
                    "synset": "n0", "query": "q", "writer": 1}
        if use_directory:
            official["directory"] = k % 3
        rows.append(official)
    return write_jsonl(tmp_path / "official.json", rows), image_dir


@pytest.mark.parametrize("use_directory", [False, True])
def test_nlvr2_official_layout_gives_the_same_examples(synth_world, tmp_path, use_directory):
    xvlm = F.read_nlvr2(synth_world.path("nlvr2/dev.jsonl"), synth_world.root)
    assert len(xvlm) == synth_world.manifest["counts"]["nlvr2"]["dev"]
    assert {e.label for e in xvlm} == {0, 1}
    path, image_dir = official_nlvr2_from_world(synth_world, "nlvr2/dev.jsonl", tmp_path, use_directory)
    template = F.NLVR2_TRAIN_TEMPLATE if use_directory else F.NLVR2_EVAL_TEMPLATE
    official = F.read_nlvr2(path, image_dir, image_template=template)
    assert F.check_images(official) == 2 * len(official)
    assert len(official) == len(xvlm)
    for a, b in zip(xvlm, official):
        assert (a.sentence, a.label) == (b.sentence, b.label)
        # the identifier-named files are the same pictures, left stays left
        assert os.path.realpath(b.left) == a.left.path and os.path.realpath(b.right) == a.right.path
        assert b.left.path.endswith(b.identifier.rsplit("-", 1)[0] + "-img0.png")
    if use_directory:   # control: the flat template does not find the directory layout's files
        flat = F.read_nlvr2(path, image_dir)
        with pytest.raises(F.MissingImagesError):
            F.check_images(flat)


def test_nlvr2_labels_and_malformed_rows(tmp_path):
    rows = [{"images": ["a.png", "b.png"], "sentence": "s", "label": v} for v in ("True", "False", True, 0, 1)]
    path = write_jsonl(tmp_path / "nlvr2" / "train.jsonl", rows)
    assert [e.label for e in F.read_nlvr2(path)] == [1, 0, 1, 0, 1]
    for bad_label in ("maybe", "true", 2, None, 1.0):
        rows[2]["label"] = bad_label
        write_jsonl(path, rows)
        raises_naming(lambda: F.read_nlvr2(path), "nlvr2/train.jsonl: line 3: field 'label': unknown label")
    rows[2]["label"] = "True"
    del rows[4]["label"]
    write_jsonl(path, rows)
    raises_naming(lambda: F.read_nlvr2(path), "line 5: field 'label': missing")
    rows[4]["label"] = "False"
    rows[1]["images"] = ["only-one.png"]
    write_jsonl(path, rows)
    raises_naming(lambda: F.read_nlvr2(path), "line 2: field 'images': expected [left, right] (2 paths), got 1")
    official = write_jsonl(tmp_path / "train.json", [{"identifier": "train-1-2-0", "sentence": "s", "label": "True"}])
    raises_naming(lambda: F.read_nlvr2(official, image_template=F.NLVR2_TRAIN_TEMPLATE),
                  "line 1 (identifier train-1-2-0): field 'directory': missing")


# ------------------------------------------------------------------------------------ grounding
def refer_from_world(world, tmp_path, protocol=2):
    """The world's grounding rows as the original release: refs(unc).p + instances.json."""
    refs, anns, images = [], [], {}
    for split in ("train", "val", "test"):
        for line in world.path(f"grounding/refcoco_{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            ann_id = 1000 + row["ref_id"]
            images[row["image_id"]] = {"id": row["image_id"], "file_name": Path(row["image"]).name,
                                       "width": row["width"], "height": row["height"]}
            anns.append({"id": ann_id, "image_id": row["image_id"], "bbox": row["bbox"],
                         "category_id": 1, "area": row["bbox"][2] * row["bbox"][3], "iscrowd": 0})
            refs.append({"ref_id": row["ref_id"], "ann_id": ann_id, "image_id": row["image_id"],
                         "split": row["split"], "category_id": 1, "sent_ids": [row["ref_id"]],
                         "file_name": f"{row['image_id']}_{ann_id}.jpg",
                         "sentences": [{"sent": row["text"], "raw": row["text"].capitalize(),
                                        "tokens": row["text"].split(), "sent_id": row["ref_id"]}]})
    refs_path = tmp_path / "refcoco+" / "refs(unc).p"
    refs_path.parent.mkdir(parents=True, exist_ok=True)
    refs_path.write_bytes(pickle.dumps(refs, protocol=protocol))
    instances = write_json(tmp_path / "refcoco+" / "instances.json",
                           {"images": list(images.values()), "annotations": anns,
                            "categories": [{"id": 1, "name": "shape"}]})
    return refs_path, instances, refs


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_grounding_refer_pickle_gives_the_same_examples(synth_world, tmp_path, protocol):
    paths = [synth_world.path(f"grounding/refcoco_{s}.jsonl") for s in ("train", "val", "test")]
    xvlm = F.read_grounding_json(paths, synth_world.root)
    assert len(xvlm) == sum(synth_world.manifest["counts"]["grounding"].values())
    refs_path, instances, _ = refer_from_world(synth_world, tmp_path, protocol)
    original = F.read_refer(refs_path, instances, synth_world.path("images"))
    assert original == xvlm
    assert F.read_refer(refs_path, instances, synth_world.path("images"), splits=("val",)) == \
        [e for e in xvlm if e.split == "val"]
    raw = F.read_refer(refs_path, instances, synth_world.path("images"), sentence_field="raw")
    assert raw[0].text == xvlm[0].text.capitalize() != xvlm[0].text
    # X-VLM JSON as an array and without boxes (boxes looked up through the original release)
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    array = write_json(tmp_path / "refcoco+_all.json", [{k: v for k, v in r.items() if k != "bbox"} for r in rows])
    boxes = F.read_refer_boxes(refs_path, instances)
    assert F.read_grounding_json(array, synth_world.root, boxes=boxes) == xvlm
    raises_naming(lambda: F.read_grounding_json(array, synth_world.root), "refcoco+_all.json: record 0 (ref_id 1): "
                  "field 'bbox': missing")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refs_pickle_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": [_RunsCode(marker)]}], protocol=2))
    instances = write_json(tmp_path / "instances.json", {"images": [], "annotations": []})
    message = raises_naming(lambda: F.read_refer(evil, instances), "refs(unc).p: refused to load the global",
                            "system'", "only plain data")
    assert "posix.system" in message or "os.system" in message or "nt.system" in message
    assert not marker.exists()
    # control: the same pickle does run the command when loaded the ordinary way
    pickle.loads(evil.read_bytes())
    assert marker.exists()
    # other globals are refused too, sets (plain containers) are allowed
    (tmp_path / "cls.p").write_bytes(pickle.dumps([OrderedDict(a=1)]))
    raises_naming(lambda: F.load_plain_pickle(tmp_path / "cls.p"), "collections.OrderedDict")
    (tmp_path / "set.p").write_bytes(pickle.dumps([{1, 2}, frozenset([3])], protocol=2))
    assert F.load_plain_pickle(tmp_path / "set.p") == [{1, 2}, frozenset([3])]
    (tmp_path / "cut.p").write_bytes(pickle.dumps(list(range(100)))[:-5])
    raises_naming(lambda: F.load_plain_pickle(tmp_path / "cut.p"), "cut.p: not a readable pickle")


def test_grounding_malformed(synth_world, tmp_path):
    rows = [json.loads(x) for x in synth_world.path("grounding/refcoco_val.jsonl").read_text().splitlines()]
    path = tmp_path / "grounding" / "refcoco_val.jsonl"
    ref = rows[4]["ref_id"]
    for field, value, expect in [("bbox", [1, 2, 3], "expected [x, y, w, h] as 4 finite numbers"),
                                 ("bbox", "0 0 5 5", "expected [x, y, w, h]"),
                                 ("bbox", [1, 2, 0, 5], "has no area"),
                                 ("bbox", [60, 2, 10, 5], "extends past the 64x64 image"),
                                 ("text", ["a"], "expected a string, got list"),
                                 ("ref_id", 2.5, "expected an integer or a non-empty string, got float")]:
        bad = [dict(r) for r in rows]
        bad[4][field] = value
        write_jsonl(path, bad)
        where = "grounding/refcoco_val.jsonl: line 5" + (f" (ref_id {ref})" if field != "ref_id" else "")
        raises_naming(lambda: F.read_grounding_json(path), where, f"field '{field}'", expect)

    refs_path, instances, refs = refer_from_world(synth_world, tmp_path)
    refs[7]["ann_id"] = 999999
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    raises_naming(lambda: F.read_refer(refs_path, instances), "refs(unc).p: record 7 (ref_id 8): field 'ann_id'",
                  "annotation 999999 is not in")
    refs[7]["ann_id"] = 1008
    refs[7]["sentences"] = [{"raw": "no sent"}]
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    raises_naming(lambda: F.read_refer(refs_path, instances), "record 7 (ref_id 8): field 'sentences[0].sent': missing")


# ----------------------------------------------------------------------------------------- GLUE
def write_tsv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


# one train/dev file and one test file per task, with the column layouts of the GLUE release
GLUE_LAYOUTS = {
    "CoLA": ([["gj04", "1", "", 'He said "hi" to us.'], ["gj04", "0", "*", "Us said hi he."]],
             [["index", "sentence"], ["0", "A test sentence."]], ["1", "0"]),
    "SST-2": ([["sentence", "label"], ["a gripping , funny film ", "1"], ['" dull "', "0"]],
              [["index", "sentence"], ["0", "fine"]], ["1", "0"]),
    "MRPC": ([["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "7", "8", "A b.", "A c."],
              ["0", "9", "10", "D e.", "F g."]],
             [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1", "2", "x", "y"]], ["1", "0"]),
    "QQP": ([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["5", "1", "2", "Why?", "How?", "0"]],
            [["id", "question1", "question2"], ["0", "a?", "b?"]], ["0"]),
    "STS-B": ([["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                "score"], ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A man.", "A guy.",
                           "4.750"]],
              [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
               ["0", "g", "f", "y", "o", "s", "s", "p", "q"]], [4.75]),
    "MNLI": ([["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4",
               "label5", "gold_label"],
              ["0", "1", "1e", "slate", "( a )", "( b )", "(ROOT a)", "(ROOT b)", "P.", "H.", "neutral", "entailment",
               "entailment", "entailment", "neutral", "entailment"]],
             [["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"],
              ["0", "1", "1e", "g", "x", "y", "x", "y", "P.", "H."]], ["entailment"]),
    "QNLI": ([["index", "question", "sentence", "label"], ["0", "Q?", "S.", "not_entailment"]],
             [["index", "question", "sentence"], ["0", "Q?", "S."]], ["not_entailment"]),
    "RTE": ([["index", "sentence1", "sentence2", "label"], ["0", "P.", "H.", "entailment"]],
            [["index", "sentence1", "sentence2"], ["0", "P.", "H."]], ["entailment"]),
}


@pytest.mark.parametrize("task", sorted(GLUE_LAYOUTS))
def test_glue_layouts(task, tmp_path):
    train_rows, test_rows, label_names = GLUE_LAYOUTS[task]
    t = F.GLUE_TASKS[task]
    dev_split = "dev_matched" if task == "MNLI" else "dev"
    test_split = "test_matched" if task == "MNLI" else "test"
    write_tsv(tmp_path / t.files[dev_split], train_rows)
    write_tsv(tmp_path / t.files[test_split], test_rows)
    dev = F.read_glue(task, tmp_path, dev_split)
    expected = [v if t.is_regression else t.labels.index(v) for v in label_names]
    assert [e.label for e in dev] == expected
    assert (dev[0].text_b is None) == (t.text_b is None)
    if task == "CoLA":   # QUOTE_NONE: quotes are characters, not field delimiters
        assert dev[0].text_a == 'He said "hi" to us.'
    if task == "SST-2":
        assert dev[1].text_a == '" dull "'
    if task == "MRPC":   # the byte-order mark before "Quality" is not part of the column name
        assert dev[0].text_a == "A b." and dev[0].text_b == "A c."
    test = F.read_glue(task, tmp_path, test_split)
    assert len(test) == 1 and test[0].label is None and test[0].guid == f"{test_split}-0"
    assert set(F.glue_files(task, tmp_path)) == {dev_split, test_split}


def test_glue_reads_the_synthetic_tasks(synth_world):
    counts = synth_world.manifest["counts"]["glue"]
    for task in ("SynthRTE", "SynthCoLA"):
        t = F.GLUE_TASKS[task]
        for split in ("train", "dev", "test"):
            examples = F.read_glue(task, synth_world.path(f"glue/{task}"), split)
            assert len(examples) == counts[task][split]
            if split == "test":
                assert all(e.label is None for e in examples)
            else:
                assert {e.label for e in examples} == set(range(t.num_labels))
            assert all((e.text_b is None) == (task == "SynthCoLA") for e in examples)
    # control: the world's RTE train rows have the label column where the header says
    with open(synth_world.path("glue/SynthRTE/train.tsv"), newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    first = F.read_glue("SynthRTE", synth_world.path("glue/SynthRTE"), "train")[0]
    assert F.GLUE_TASKS["SynthRTE"].labels[first.label] == rows[1][3]


def test_glue_malformed(tmp_path):
    rte = write_tsv(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                                   ["0", "P.", "H.", "entailment"], ["1", "P.", "H.", "contradiction"]])
    raises_naming(lambda: F.read_glue("RTE", tmp_path / "RTE", "dev"),
                  "RTE/dev.tsv: line 3: field 'label': unknown label 'contradiction'")
    write_tsv(rte, [["index", "sentence1", "sentence2", "label"], ["0", "P.", "H."]])
    raises_naming(lambda: F.read_glue("RTE", tmp_path / "RTE", "dev"), "line 2", "expected 4 tab-separated columns")
    bad_rows = []   # asked for: short rows are left out and reported, the others are read
    write_tsv(rte, [["index", "sentence1", "sentence2", "label"], ["0", "P.", "H."], ["1", "P.", "H.", "entailment"]])
    assert [e.guid for e in F.read_glue("RTE", tmp_path / "RTE", "dev", bad_rows=bad_rows)] == ["dev-1"]
    assert len(bad_rows) == 1 and "RTE/dev.tsv: line 2" in str(bad_rows[0])
    write_tsv(rte, [["index", "premise", "hypothesis", "label"], ["0", "P.", "H.", "entailment"]])
    raises_naming(lambda: F.read_glue("RTE", tmp_path / "RTE", "dev"), "line 1: field 'sentence1': column missing")
    cola = write_tsv(tmp_path / "CoLA" / "train.tsv", [["s", "1", "", "ok."], ["s", "1", "ok too."]])
    raises_naming(lambda: F.read_glue_file("CoLA", cola, "train"), "CoLA/train.tsv: line 2",
                  "expected 4 tab-separated columns")
    sts = write_tsv(tmp_path / "STS-B" / "dev.tsv", [GLUE_LAYOUTS["STS-B"][0][0], GLUE_LAYOUTS["STS-B"][0][1][:-1] + ["high"]])
    raises_naming(lambda: F.read_glue_file("STS-B", sts, "dev"), "line 2: field 'score': expected a number, got 'high'")
    with pytest.raises(ValueError, match="dev_matched"):
        F.read_glue("MNLI", tmp_path, "dev")


# -------------------------------------------------------------------------------- image folders
def test_image_folders_match_torchvision(synth_world, tmp_path):
    train, val = F.read_image_folders(synth_world.path("classes/train"), synth_world.path("classes/val"))
    counts = synth_world.manifest["counts"]["class_images"]
    assert len(train.samples) == counts["train"] and len(val.samples) == counts["val"]
    assert train.classes == sorted(synth_world.manifest["vocabulary"]["shapes"])
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.datasets.ImageFolder(str(synth_world.path("classes/val")))
    assert val.samples == reference.samples and val.classes == reference.classes

    # a validation folder with a subset of the classes keeps the training indices
    sub = tmp_path / "val"
    shutil.copytree(synth_world.path("classes/val/triangle"), sub / "triangle")
    (sub / "triangle" / "notes.txt").write_text("not an image")
    only = F.read_image_folder(sub, train.classes)
    assert {label for _, label in only.samples} == {train.classes.index("triangle")}
    assert len(only.samples) == counts["val"] // len(train.classes)
    # a class the training split does not have is named with its folder
    shutil.copytree(synth_world.path("classes/val/circle"), sub / "hexagon")
    raises_naming(lambda: F.read_image_folder(sub, train.classes), f"{sub / 'hexagon'}: class folder 'hexagon' "
                  "is not a training class")
    shutil.rmtree(sub / "hexagon")
    (sub / "circle").mkdir()
    (sub / "circle" / "readme.md").write_text("x")
    raises_naming(lambda: F.read_image_folder(sub, train.classes), f"{sub / 'circle'}: class folder holds no image")


# ------------------------------------------------------------------------------------------ VQA
def official_vqa_from_world(world, split_file, tmp_path, subtype="val2014"):
    """The world's VQA rows as official VQAv2 questions + annotations, images linked under the
    COCO_<subtype>_<id:012d>.jpg names."""
    rows = load(world, split_file)
    image_dir = tmp_path / subtype
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for row in rows:
        image_id = image_id_of(row["image"])
        link = image_dir / F.coco_image_name(subtype, image_id)
        if not link.exists():
            os.symlink(world.path(row["image"]), link)
        questions.append({"image_id": image_id, "question": row["question"], "question_id": row["question_id"]})
        annotations.append({"question_type": "what", "multiple_choice_answer": row["answer"][0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(row["answer"])],
                            "image_id": image_id, "answer_type": row["answer_type"],
                            "question_id": row["question_id"]})
    q = write_json(tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                   {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                    "data_subtype": subtype, "questions": questions})
    a = write_json(tmp_path / f"v2_mscoco_{subtype}_annotations.json",
                   {"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations})
    return q, a, image_dir


def test_vqa_official_layout_gives_the_same_examples(synth_world, tmp_path):
    xvlm = F.read_vqa_json(synth_world.path("vqa/val.json"), synth_world.root)
    assert len(xvlm) == synth_world.manifest["counts"]["vqa"]["val"]
    q, a, image_dir = official_vqa_from_world(synth_world, "vqa/val.json", tmp_path)
    official = F.read_vqa_official(q, a, image_dir)
    F.check_images(official)
    assert len(official) == len(xvlm)
    for x, o in zip(xvlm, official):
        assert (x.question_id, x.question, x.answers, x.answer_type) == (o.question_id, o.question, o.answers,
                                                                          o.answer_type)
        assert len(o.answers) == 10 and os.path.realpath(o.image) == x.image.path
    # test files: questions only
    assert all(e.answers == [] for e in F.read_vqa_official(q, None, image_dir))
    test = F.read_vqa_json(synth_world.path("vqa/test.json"), synth_world.root, require_answers=False)
    assert len(test) == synth_world.manifest["counts"]["vqa"]["test"]
    answers = F.read_answer_list(synth_world.path("vqa/answer_list.json"))
    assert {a for e in xvlm for a in e.answers} <= set(answers)


def test_vqa_vg_rows(tmp_path):
    rows = [{"dataset": "vg", "image": "VG_100K/1.jpg", "question": "what colour?", "answer": "red"},
            {"dataset": "vqa", "image": "train2014/x.jpg", "question": "q?", "question_id": 4, "answer": ["a"] * 10}]
    path = write_json(tmp_path / "vg_qa.json", rows)
    vg, vqa = F.read_vqa_json(path, tmp_path / "coco", vg_image_root=tmp_path / "vg")
    assert vg.answers == ["red"] and vg.question_id is None and vg.dataset == "vg"
    assert vg.image.path == str(tmp_path / "vg" / "VG_100K" / "1.jpg")
    assert vqa.image.path == str(tmp_path / "coco" / "train2014" / "x.jpg")
    rows[1]["dataset"] = "gqa"
    write_json(path, rows)
    raises_naming(lambda: F.read_vqa_json(path), "vg_qa.json: record 1: field 'dataset': unknown dataset 'gqa'")


def test_vqa_malformed(synth_world, tmp_path):
    rows = load(synth_world, "vqa/train.json")
    path = tmp_path / "vqa" / "train.json"
    qid = rows[6]["question_id"]
    cases = [("question_id", None, "vqa/train.json: record 6: field 'question_id': missing"),
             ("answer", "circle", f"record 6 (question_id {qid}): field 'answer': expected a list of strings, got string"),
             ("answer", None, "field 'answer': missing"),
             ("question", 5, "field 'question': expected a string, got int"),
             ("image", None, "field 'image': missing")]
    for field, value, expect in cases:
        bad = [dict(r) for r in rows]
        if value is None:
            del bad[6][field]
        else:
            bad[6][field] = value
        write_json(path, bad)
        raises_naming(lambda: F.read_vqa_json(path), expect)
    bad = [dict(r) for r in rows]
    bad[9]["question_id"] = bad[2]["question_id"]
    write_json(path, bad)
    raises_naming(lambda: F.read_vqa_json(path), "record 9", "field 'question_id': duplicate of", "record 2")
    bad = [dict(r) for r in rows]
    bad[3]["image"] = "images/99999.jpg"
    write_json(path, bad)
    with pytest.raises(F.MissingImagesError, match=r"train.json: record 3 \(question_id \d+\): field 'image'"):
        F.check_images(F.read_vqa_json(path, synth_world.root))

    q, a, image_dir = official_vqa_from_world(synth_world, "vqa/val.json", tmp_path)
    ann = json.loads(a.read_text())
    ann["annotations"][2]["answers"] = "yes"
    write_json(a, ann)
    raises_naming(lambda: F.read_vqa_official(q, a, image_dir), "v2_mscoco_val2014_annotations.json: record 2",
                  "field 'answers': expected a list, got string")
    ann["annotations"][2]["answers"] = [{"answer_id": 1}]
    write_json(a, ann)
    raises_naming(lambda: F.read_vqa_official(q, a, image_dir), "record 2", "field 'answers[0].answer': missing")
    del ann["annotations"][2]
    write_json(a, ann)
    raises_naming(lambda: F.read_vqa_official(q, a, image_dir), "v2_OpenEnded_mscoco_val2014_questions.json: record 2",
                  "field 'question_id': no annotation")

    answers = write_json(tmp_path / "answer_list.json", ["yes", "no", 3])
    raises_naming(lambda: F.read_answer_list(answers), "answer_list.json: record 2", "got int")
    write_json(answers, ["yes", "no", "yes"])
    raises_naming(lambda: F.read_answer_list(answers), "record 2: answer 'yes' repeats record 0")


# ------------------------------------------------------------------------------------- captions
def test_captions_xvlm_and_karpathy_give_the_same_examples(synth_world, tmp_path):
    root = synth_world.root
    train = F.read_caption_train(synth_world.path("retrieval/train.json"), root)
    karpathy = write_json(tmp_path / "dataset_coco.json", karpathy_from_world(synth_world))
    assert F.read_karpathy_caption_train(karpathy, root) == train
    assert [(p.image, p.caption, p.image_id) for p in train] == \
        [(p.image, p.caption, p.image_id) for p in F.read_retrieval_train(synth_world.path("retrieval/train.json"), root)]
    for split in ("val", "test"):
        # the COCO-Karpathy test layout {image, caption: [...]}: ids from the file names
        xvlm = F.read_caption_eval(synth_world.path(f"retrieval/{split}.json"), root)
        assert xvlm == F.read_karpathy_caption_eval(karpathy, split, root)
        assert all(e.image_id == image_id_of(e.image.rel) and len(e.references) == 3 for e in xvlm)
    rows = [{"image": "val2014/COCO_val2014_000000391895.jpg"}, {"image": "x.jpg", "image_id": "abc"}]
    eval_path = write_json(tmp_path / "coco_karpathy_test.json", rows)
    no_refs = F.read_caption_eval(eval_path, tmp_path)
    assert [(e.image_id, e.references) for e in no_refs] == [(391895, []), ("abc", [])]


def test_captions_malformed(tmp_path):
    path = write_json(tmp_path / "captions" / "test.json", [{"image": "a_1.jpg"}, {"image": "cover.jpg"}])
    raises_naming(lambda: F.read_caption_eval(path), "captions/test.json: record 1: field 'image_id': missing, "
                  "and the file name 'cover.jpg' does not end in a number")
    write_json(path, [{"image": "a_1.jpg", "caption": "one string"}])
    raises_naming(lambda: F.read_caption_eval(path), "record 0 (image_id 1): field 'caption': expected a list of strings")
    train = write_json(tmp_path / "captions" / "train.json", [{"image": "a.jpg", "caption": "c", "image_id": [1]}])
    raises_naming(lambda: F.read_caption_train(train), "train.json: record 0: field 'image_id': expected an integer "
                  "or a non-empty string, got list")
    kp = write_json(tmp_path / "dataset_coco.json",
                    {"images": [{"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a"}]}]})
    raises_naming(lambda: F.read_karpathy_caption_eval(kp, "test"), "dataset_coco.json: record 0: field 'cocoid': missing")
