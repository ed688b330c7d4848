"""Every input format of every sharder, on small fixture files written by the tests: the right
samples come out (read back with plain webdataset), guesses are printed, malformed files fail at
once naming file, line and field."""
import base64
import csv
import json
import os

import pytest
import webdataset as wds

from xfm.data_prep import fixtures as fx
from xfm.data_prep.pipeline import TooManyBadInputs
from xfm.data_prep.records import MalformedInputError
from xfm.data_prep.sharders import shard

OPTS = dict(progress=False, max_bad_fraction=1.0)


def read_back(stats):
    return list(wds.WebDataset(stats["pattern"], shardshuffle=False))


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


# ---------------------------------------------------------------- pairs
def test_coco_captions(tmp_path, capfd):
    ann = fx.coco_captions(str(tmp_path / "raw"), 4, captions_per_image=2,
                           kinds=("jpeg", "png", "cmyk_jpeg", "exif_rotated_jpeg"))
    stats = shard("pairs", [ann], str(tmp_path / "out"), images=str(tmp_path / "raw/images"), **OPTS)
    assert "format coco-captions (guessed)" in capfd.readouterr().err
    samples = read_back(stats)
    assert len(samples) == 8 == stats["totals"]["samples"]
    assert [s["txt"].decode() for s in samples[:2]] == ["a red box on picture 0, caption 0.",
                                                        "a red box on picture 0, caption 1."]
    meta = [json.loads(s["json"]) for s in samples]
    assert [m["image_id"] for m in meta] == ["1", "1", "2", "2", "3", "3", "4", "4"]
    assert meta[0]["source"] == "captions.json"
    assert (meta[6]["width"], meta[6]["height"]) == (64, 96)      # EXIF-rotated
    assert samples[0]["jpg"] == open(tmp_path / "raw/images/000000.jpg", "rb").read()  # pass-through
    assert stats["totals"]["images_passthrough"] == 2 and stats["totals"]["images_reencoded"] == 6


def test_karpathy_splits(tmp_path):
    raw = tmp_path / "raw"
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        fx.write_image(str(raw / "val2014" / f"{i}.jpg"), seed=i)
        images.append({"filepath": "val2014", "filename": f"{i}.jpg", "split": split,
                       "cocoid": 100 + i, "sentences": [{"raw": f"caption {i}", "tokens": []}]})
    ann = _dump(raw / "dataset_coco.json", {"images": images, "dataset": "coco"})
    stats = shard("pairs", [ann], str(tmp_path / "out"), images=str(raw), **OPTS)
    assert stats["formats"][0]["format"] == "karpathy"
    got = [(json.loads(s["json"])["image_id"], s["txt"].decode()) for s in read_back(stats)]
    assert got == [("100", "caption 0"), ("101", "caption 1")]
    stats = shard("pairs", [ann], str(tmp_path / "out_all"), images=str(raw), splits="all", **OPTS)
    assert stats["totals"]["samples"] == 4


def test_csv_selectable_columns_and_tsv_without_header(tmp_path):
    for i in range(3):
        fx.write_image(str(tmp_path / "img" / f"{i}.jpg"), seed=i)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "my_img", "alt text"])
        w.writerow([0, "0.jpg", "first, with a comma"])
        w.writerow([1, "1.jpg", 'second "quoted"\nover two lines'])
        w.writerow([2, "2.jpg", ""])                                 # empty caption
    stats = shard("pairs", [str(tmp_path / "data.csv")], str(tmp_path / "out"),
                  images=str(tmp_path / "img"), image_column="my_img", caption_column="alt text",
                  **OPTS)
    samples = read_back(stats)
    assert [s["txt"].decode() for s in samples] == ["first, with a comma",
                                                    'second "quoted"\nover two lines']
    assert stats["skipped"] == {"empty_caption": 1}
    rejected = [json.loads(l) for l in open(tmp_path / "out/rejected.jsonl")]
    assert rejected[0]["where"].startswith("line 5") and rejected[0]["reason"] == "empty_caption"

    (tmp_path / "cc3m.tsv").write_text("a cat\t0.jpg\na dog\t1.jpg\na url\thttp://x/y.jpg\n")
    stats = shard("pairs", [str(tmp_path / "cc3m.tsv")], str(tmp_path / "out2"),
                  images=str(tmp_path / "img"), no_header=True, **OPTS)
    assert [s["txt"] for s in read_back(stats)] == [b"a cat", b"a dog"]
    assert stats["skipped"] == {"remote_url": 1}


def test_csv_missing_column_fails_naming_file_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("file,caption\na.jpg,x\n")
    with pytest.raises(MalformedInputError, match=r"d\.csv: line 1 \(header\): no image column 'url'"):
        shard("pairs", [str(tmp_path / "d.csv")], str(tmp_path / "o"), image_column="url", **OPTS)
    (tmp_path / "short.csv").write_text("image,caption\na.jpg,x\nb.jpg\n")
    with pytest.raises(MalformedInputError, match=r"short\.csv: line 3: .*missing 'caption'"):
        shard("pairs", [str(tmp_path / "short.csv")], str(tmp_path / "o2"), **OPTS)
    # an unclosed quote would swallow every later row into one caption: stop, naming the line;
    # a stray quote inside an unquoted caption (5" screen) is kept as text
    fx.write_image(str(tmp_path / "a.jpg"))
    rows = 'image,caption\na.jpg,a 5" screen\na.jpg,"never closed\na.jpg,lost\na.jpg,"lost"\n'
    for name, text in (("runaway.csv", rows), ("last.csv", rows.split("a.jpg,lost")[0])):
        (tmp_path / name).write_text(text)
        with pytest.raises(MalformedInputError, match=rf"{name}: line 3: a quoted field in this "
                                                      r"row is never closed"):
            shard("pairs", [str(tmp_path / name)], str(tmp_path / "o3"), **OPTS)
    (tmp_path / "ok.csv").write_text(rows.split("a.jpg,\"never")[0])
    stats = shard("pairs", [str(tmp_path / "ok.csv")], str(tmp_path / "o4"), **OPTS)
    assert [s["txt"] for s in read_back(stats)] == [b'a 5" screen']


def test_xfm_jsonl_paths_and_base64(tmp_path):
    fx.write_image(str(tmp_path / "a.png"), "png")
    rows = [{"image": "a.png", "caption": "from a path"},
            {"binary": base64.b64encode(fx.image_bytes("gray_jpeg")).decode(), "desc": "from bytes"},
            {"binary": "!!not base64!!", "desc": "bad"},
            {"image": "a.png", "caption": ["one", "two"]}]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    stats = shard("pairs", [path], str(tmp_path / "out"), **OPTS)
    assert stats["formats"][0]["format"] == "jsonl"
    assert [s["txt"] for s in read_back(stats)] == [b"from a path", b"from bytes", b"one", b"two"]
    assert stats["skipped"] == {"bad_base64": 1}
    # the same records as a JSON array
    arr = _dump(tmp_path / "list" / "pairs.json", rows[:2])
    fx.write_image(str(tmp_path / "list/a.png"), "png")
    stats = shard("pairs", [arr], str(tmp_path / "out2"), **OPTS)
    assert stats["formats"][0]["format"] == "json-list" and stats["totals"]["samples"] == 2


def test_jsonl_malformed_lines_fail_at_once(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": \n')
    with pytest.raises(MalformedInputError, match=r"p\.jsonl: line 2: invalid JSON"):
        shard("pairs", [str(path)], str(tmp_path / "o"), format="jsonl", **OPTS)
    path.write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "text": "y"}\n')
    with pytest.raises(MalformedInputError, match=r"p\.jsonl: line 2: missing field 'caption'"):
        shard("pairs", [str(path)], str(tmp_path / "o"), format="jsonl", **OPTS)


def test_bad_json_names_line_and_missing_field_names_record(tmp_path):
    (tmp_path / "c.json").write_text('{"images": [\n{"id": 1,}\n]}')
    with pytest.raises(MalformedInputError, match=r"c\.json: line 2, column \d+: invalid JSON"):
        shard("pairs", [str(tmp_path / "c.json")], str(tmp_path / "o"), **OPTS)
    _dump(tmp_path / "d" / "c.json", {"images": [{"id": 1, "file_name": "a.jpg"}],
                                      "annotations": [{"image_id": 1, "text": "x"}]})
    with pytest.raises(MalformedInputError, match=r"c\.json: annotations\[0\]: missing field 'caption'"):
        shard("pairs", [str(tmp_path / "d/c.json")], str(tmp_path / "o"), format="coco-captions",
              **OPTS)


def test_unguessable_format_is_a_clear_error(tmp_path):
    _dump(tmp_path / "x" / "weird.json", {"something": 1})
    with pytest.raises(MalformedInputError, match="cannot tell which pairs format.*--format"):
        shard("pairs", [str(tmp_path / "x/weird.json")], str(tmp_path / "o"), **OPTS)


# ---------------------------------------------------------------- regions
def _regions(samples):
    return [json.loads(s["json"]) for s in samples]


def test_vg_objects_and_region_descriptions(tmp_path):
    raw = tmp_path / "vg"
    objs, regs = [], []
    for i in range(3):
        fx.write_image(str(raw / ("VG_100K" if i < 2 else "VG_100K_2") / f"{i + 1}.jpg"), seed=i)
        objs.append({"image_id": i + 1, "objects": [
            {"object_id": 1, "x": 20, "y": 10, "w": 30, "h": 24, "names": ["red box"]},
            {"object_id": 2, "x": 80, "y": 50, "w": 17, "h": 15, "names": ["corner"]},  # clipped
            {"object_id": 3, "x": 200, "y": 10, "w": 5, "h": 5, "names": ["outside"]}]})
        regs.append({"id": i + 1, "regions": [
            {"region_id": 7, "image_id": i + 1, "x": 20, "y": 10, "width": 30, "height": 24,
             "phrase": "a red rectangle"},
            {"region_id": 8, "image_id": i + 1, "x": 0, "y": 0, "width": 5, "height": 5,
             "phrase": "  "}]})
    stats = shard("regions", [_dump(raw / "objects.json", objs)], str(tmp_path / "o1"),
                  images=str(raw), **OPTS)
    assert stats["formats"][0]["format"] == "vg-objects"
    metas = _regions(read_back(stats))
    assert [m["image_id"] for m in metas] == ["1", "2", "3"]
    assert metas[0]["regions"] == [{"phrase": "red box", "bbox": [20.0, 10.0, 30.0, 24.0]},
                                   {"phrase": "corner", "bbox": [80.0, 50.0, 16.0, 14.0]}]
    assert metas[0]["caption"] is None
    assert stats["skipped_regions"] == {"box_outside_image": 3}
    assert stats["totals"]["boxes_clipped"] == 3
    stats = shard("regions", [_dump(raw / "region_descriptions.json", regs)], str(tmp_path / "o2"),
                  images=str(raw), **OPTS)
    assert stats["formats"][0]["format"] == "vg-regions"
    metas = _regions(read_back(stats))
    assert metas[2]["regions"] == [{"phrase": "a red rectangle", "bbox": [20.0, 10.0, 30.0, 24.0]}]
    assert stats["skipped_regions"] == {"empty_phrase": 3}


def test_coco_instances_category_names(tmp_path):
    raw = tmp_path / "coco"
    fx.write_image(str(raw / "img/a.jpg"))
    fx.write_image(str(raw / "img/b.jpg"), "truncated_jpeg")
    ann = _dump(raw / "instances.json", {
        "images": [{"id": 5, "file_name": "a.jpg"}, {"id": 6, "file_name": "b.jpg"}],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [20, 10, 30, 24]},
                        {"id": 2, "image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10]},
                        {"id": 3, "image_id": 6, "category_id": 2, "bbox": [0, 0, 10, 10]},
                        {"id": 4, "image_id": 99, "category_id": 2, "bbox": [0, 0, 10, 10]}]})
    caps = _dump(raw / "captions.json", {"images": [{"id": 5, "file_name": "a.jpg"}], "annotations": [
        {"id": 1, "image_id": 5, "caption": "a box and a thing"},
        {"id": 2, "image_id": 5, "caption": "second caption"}]})
    stats = shard("regions", [ann], str(tmp_path / "o"), images=str(raw / "img"), captions=caps,
                  **OPTS)
    assert stats["formats"][0]["format"] == "coco-instances"
    metas = _regions(read_back(stats))
    assert len(metas) == 1 and [r["phrase"] for r in metas[0]["regions"]] == ["box", "thing"]
    assert metas[0]["caption"] == "a box and a thing"
    assert stats["skipped"] == {"undecodable_image": 1, "unknown_image_id": 1}


def test_refcoco_jsonl_groups_by_image_and_resize_scales_boxes(tmp_path):
    fx.write_image(str(tmp_path / "r/a.jpg"), "png", size=(200, 100), box=(50, 20, 40, 30))
    fx.write_image(str(tmp_path / "r/b.jpg"), size=(200, 100))
    path = _jsonl(tmp_path / "r/refs.jsonl", [
        {"image": "a.jpg", "text": "the red box", "bbox": [50, 20, 40, 30]},
        {"image": "b.jpg", "text": "left part", "bbox": [0, 0, 100, 100]},
        {"image": "a.jpg", "text": "whole picture", "bbox": [0, 0, 200, 100]},
        {"image": "a.jpg", "text": "bad box", "bbox": [10, 10, -5, 3]}])
    stats = shard("regions", [path], str(tmp_path / "o"), resize=50, **OPTS)
    assert stats["formats"][0]["format"] == "refcoco"
    metas = _regions(read_back(stats))
    assert [m["image_id"] for m in metas] == ["a.jpg", "b.jpg"]
    assert (metas[0]["width"], metas[0]["height"]) == (100, 50)
    assert metas[0]["regions"] == [{"phrase": "the red box", "bbox": [25.0, 10.0, 20.0, 15.0]},
                                   {"phrase": "whole picture", "bbox": [0.0, 0.0, 100.0, 50.0]}]
    assert stats["skipped_regions"] == {"invalid_box": 1}


# ---------------------------------------------------------------- text
def test_txt_line_and_blank_modes_and_sentence_split(tmp_path):
    (tmp_path / "lines.txt").write_text("doc one.\n\ndoc two here.\ndoc three\n")
    stats = shard("text", [str(tmp_path / "lines.txt")], str(tmp_path / "o1"), **OPTS)
    assert stats["formats"][0]["detail"] == "one document per line"
    assert [s["txt"] for s in read_back(stats)] == [b"doc one.", b"doc two here.", b"doc three"]

    long_para = "First sentence is here. Second one follows! Third? Fourth sentence ends it."
    (tmp_path / "paras.txt").write_text(f"para one\nstill para one\n\n{long_para}\n\nlast\npara\n")
    stats = shard("text", [str(tmp_path / "paras.txt")], str(tmp_path / "o2"), max_chars=30, **OPTS)
    assert stats["formats"][0]["detail"] == "documents separated by blank lines"
    got = [s["txt"].decode() for s in read_back(stats)]
    assert got == ["para one\nstill para one", "First sentence is here.",
                   "Second one follows! Third?", "Fourth sentence ends it.", "last\npara"]
    assert all(len(g) <= 30 for g in got)


def test_txt_bad_encoding_rejected_not_fatal(tmp_path):
    (tmp_path / "mixed.txt").write_bytes(b"good line\n\xff\xfe bad latin-1 \xe9\nlast good\n")
    stats = shard("text", [str(tmp_path / "mixed.txt")], str(tmp_path / "o"), doc_sep="line", **OPTS)
    assert [s["txt"] for s in read_back(stats)] == [b"good line", b"last good"]
    assert stats["skipped"] == {"bad_encoding": 1}
    rej = json.loads(open(tmp_path / "o/rejected.jsonl").readline())
    assert rej["where"] == "line 2" and rej["source"].endswith("mixed.txt")


def test_jsonl_text_field_and_folder_input(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    _jsonl(d / "b.jsonl", [{"body": "from jsonl"}, {"body": ""}])
    (d / "a.txt").write_text("from txt\n")
    stats = shard("text", [str(d)], str(tmp_path / "o"), text_field="body", **OPTS)
    assert [f["format"] for f in stats["formats"]] == ["txt", "jsonl"]
    assert [s["txt"] for s in read_back(stats)] == [b"from txt", b"from jsonl"]
    assert stats["skipped"] == {"empty_document": 1}
    with pytest.raises(MalformedInputError, match=r"b\.jsonl: line 1: missing field 'text'"):
        shard("text", [str(d / "b.jsonl")], str(tmp_path / "o2"), **OPTS)


# ---------------------------------------------------------------- images
def test_class_folders(tmp_path):
    root = tmp_path / "train"
    for c, name in enumerate(["n01", "n02", "n03"]):
        for j, kind in enumerate(["jpeg", "gray_png", "palette_png"]):
            fx.write_image(str(root / name / f"{j}.{'png' if 'png' in kind else 'jpg'}"), kind,
                           seed=c * 3 + j)
    (root / "n02" / "notes.txt").write_text("not an image")
    fx.write_image(str(root / "n03" / "broken.jpg"), "zero_bytes")
    stats = shard("images", [str(root)], str(tmp_path / "o"), **OPTS)
    assert json.load(open(tmp_path / "o/classes.json")) == {"n01": 0, "n02": 1, "n03": 2}
    samples = read_back(stats)
    assert len(samples) == 9
    assert sorted(int(s["cls"]) for s in samples) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [int(s["cls"]) for s in samples] != sorted(int(s["cls"]) for s in samples)  # shuffled
    assert stats["skipped"] == {"empty_file": 1, "not_an_image": 1}
    # a given class map (e.g. the official ImageNet order) is used as is
    _dump(tmp_path / "m" / "classes.json", {"n03": 0, "n02": 1, "n01": 2, "n04": 3})
    stats = shard("images", [str(root)], str(tmp_path / "o2"),
                  classes=str(tmp_path / "m/classes.json"), shuffle_seed=None, **OPTS)
    assert [int(s["cls"]) for s in read_back(stats)][:3] == [2, 2, 2]


def test_exif_rotated_boxes_frame_from_declared_size(tmp_path):
    """Raw 96x64 pixels with orientation 6 (upright 64x96): boxes in either frame land on the red
    box of the stored upright image, chosen by the size the annotation declares."""
    raw = tmp_path / "coco"
    for name in ("raw.jpg", "upright.jpg", "other.jpg"):
        fx.write_image(str(raw / "img" / name), "exif_rotated_jpeg")
    ann = _dump(raw / "instances.json", {
        "images": [{"id": 1, "file_name": "raw.jpg", "width": 96, "height": 64},
                   {"id": 2, "file_name": "upright.jpg", "width": 64, "height": 96},
                   {"id": 3, "file_name": "other.jpg", "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "box"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 30, 24]},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 20, 24, 30]},
                        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [30, 20, 24, 30]}]})
    stats = shard("regions", [ann], str(tmp_path / "o"), images=str(raw / "img"), **OPTS)
    metas = _regions(read_back(stats))
    assert [m["regions"][0]["bbox"] for m in metas] == [[30.0, 20.0, 24.0, 30.0]] * 2
    assert all((m["width"], m["height"]) == (64, 96) for m in metas)
    assert stats["skipped"] == {"size_mismatch": 1}


def _red_bbox(jpg: bytes):
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int)
    ys, xs = np.nonzero((a[..., 0] > 170) & (a[..., 1] < 90) & (a[..., 2] < 90))
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_region_boxes_cover_the_object_pixels_after_exif_and_resize(tmp_path):
    """End to end through the sharder: the stored box of every region still frames the red
    object in the stored JPEG (EXIF-rotated, PNG, CMYK inputs; shorter side resized to 60). The
    same records as a JSON array give the same shards."""
    raw = tmp_path / "r"
    items = [("rot.jpg", "exif_rotated_jpeg", (300, 200), (40, 30, 120, 60)),
             ("flat.png", "png", (300, 200), (150, 90, 90, 70)),
             ("cmyk.jpg", "cmyk_jpeg", (200, 300), (20, 200, 60, 80))]
    rows = []
    for name, kind, size, box in items:
        fx.write_image(str(raw / name), kind, size=size, box=box)
        rows.append({"image": name, "text": f"red thing in {name}", "bbox": list(box)})
        rows.append({"image": name, "text": "the whole picture", "bbox": [0, 0, *size]})
    stats = shard("regions", [_jsonl(raw / "refs.jsonl", rows)], str(tmp_path / "o"), resize=60,
                  **OPTS)
    samples = read_back(stats)
    assert len(samples) == 3 and stats["totals"]["regions"] == 6
    for s, (name, kind, size, box) in zip(samples, items):
        meta = json.loads(s["json"])
        assert min(meta["width"], meta["height"]) == 60
        red, whole = meta["regions"]
        got = _red_bbox(s["jpg"])
        assert all(abs(g - b) <= 1.5 for g, b in zip(got, red["bbox"])), (name, got, red["bbox"])
        assert whole["bbox"] == [0.0, 0.0, float(meta["width"]), float(meta["height"])]
    # EXIF orientation 6: the upright stored picture is portrait
    assert json.loads(samples[0]["json"])["height"] > json.loads(samples[0]["json"])["width"]
    arr = _dump(raw / "refs.json", rows)
    stats2 = shard("regions", [arr], str(tmp_path / "o2"), resize=60, **OPTS)
    assert stats2["formats"][0]["format"] == "refcoco"
    assert [s["json"] for s in read_back(stats2)] == [s["json"] for s in samples]


def test_region_items_count_against_max_bad_fraction(tmp_path):
    """Boxes outside the image drop single (phrase, box) items from kept images; when most boxes
    are bad (e.g. [x1, y1, x2, y2] given as [x, y, w, h]) the run stops instead of quietly
    keeping the rest."""
    raw = tmp_path / "vg"
    regs = []
    for i in range(4):
        fx.write_image(str(raw / f"{i + 1}.jpg"), seed=i)          # 96x64
        regs.append({"id": i + 1, "regions": [
            {"image_id": i + 1, "x": 20, "y": 10, "width": 30, "height": 24, "phrase": "box"},
            {"image_id": i + 1, "x": 60, "y": 30, "width": 90, "height": 60, "phrase": "xyxy"}]})
    ann = _dump(raw / "region_descriptions.json", regs)
    with pytest.raises(TooManyBadInputs, match=r"4 of 8 region items rejected \(50\.0%\).*"
                                               r"box_outside_image 4"):
        shard("regions", [ann], str(tmp_path / "o"), images=str(raw), progress=False)
    stats = shard("regions", [ann], str(tmp_path / "o"), images=str(raw), progress=False,
                  max_bad_fraction=0.5)
    assert stats["totals"]["regions"] == 4 and stats["totals"]["region_bad_fraction"] == 0.5
    assert stats["skipped_regions"] == {"box_outside_image": 4} and stats["skipped"] == {}


def test_text_and_csv_in_another_encoding(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Café crème.\nZürich Straße.\n".encode("latin-1"))
    with pytest.raises(TooManyBadInputs, match="2 of 2 samples rejected"):
        shard("text", [str(tmp_path / "latin1.txt")], str(tmp_path / "o"), progress=False)
    rej = [json.loads(l) for l in open(tmp_path / "o/rejected.jsonl")]
    assert [r["where"] for r in rej] == ["line 1", "line 2"]
    assert all(r["reason"] == "bad_encoding" and "--encoding" in r["detail"] for r in rej)
    stats = shard("text", [str(tmp_path / "latin1.txt")], str(tmp_path / "o2"), encoding="latin-1",
                  **OPTS)
    assert [s["txt"].decode() for s in read_back(stats)] == ["Café crème.", "Zürich Straße."]

    fx.write_image(str(tmp_path / "a.jpg"))
    (tmp_path / "d.csv").write_bytes("image,caption\na.jpg,“curly” café\n".encode("cp1252"))
    stats = shard("pairs", [str(tmp_path / "d.csv")], str(tmp_path / "o3"), **OPTS)
    assert stats["skipped"] == {"bad_encoding": 1}
    stats = shard("pairs", [str(tmp_path / "d.csv")], str(tmp_path / "o4"), encoding="cp1252",
                  **OPTS)
    assert [s["txt"].decode() for s in read_back(stats)] == ["“curly” café"]
    with pytest.raises(ValueError, match="unknown text encoding 'klingon'"):
        shard("text", [str(tmp_path / "latin1.txt")], str(tmp_path / "o5"), encoding="klingon")
