"""Region boxes on real photos: boxes overshooting the border are clipped when enough of them is
inside (counted in stats.json), boxes with (almost) nothing inside are rejected one by one, and
boxes of EXIF-rotated JPEGs are placed in the right frame (stored pixels or displayed picture),
decided per image from the annotation's declared size, from where the boxes fit, or by
``box_frame``. Every check looks at the pixels of the written shard: the stored box frames exactly
the red object of the stored (upright) JPEG, and its content equals the picture as a viewer shows
it (PIL's own ``exif_transpose`` of the input file)."""
import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageOps

from xfm.data_prep import fixtures as fx
from xfm.data_prep.boxes import BoxError, clip_box, inside_fraction
from xfm.data_prep.cli import main as cli_main
from xfm.data_prep.records import MalformedInputError
from xfm.data_prep.sharders import shard

OPTS = dict(progress=False, max_bad_fraction=1.0)
STORED = (96, 64)                 # pixel array of every rotated test photo (displayed 64x96 at 6/8)


def _photo(path, orientation=1, size=STORED, red=(64, 16, 16, 32), seed=0):
    """A real JPEG: gradient with a red rectangle at ``red`` in the stored pixel array, tagged
    with EXIF ``orientation``. Box edges on multiples of 16 and a blue-green background next to
    them (seed 0) keep the red edges crisp through the 4:2:0 re-encoding of the shards."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(fx.pattern_array(size, red, seed)).save(
        path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    return str(path)


def _displayed(path) -> np.ndarray:
    """The picture as a viewer shows it, by PIL (independent of the code under test)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)


def _red_mask(arr):
    return (arr[..., 0] > 170) & (arr[..., 1] < 90) & (arr[..., 2] < 90)


def _red_box(arr):
    ys, xs = np.nonzero(_red_mask(arr))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
            float(ys.max() + 1 - ys.min())]


def _decode(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int)


def _check_box_content(sample_jpg: bytes, bbox, source_path):
    """The stored picture is the displayed source picture (re-encoding costs 1-4 levels on
    average; the same picture mirrored or turned differs by 20-70) and its stored box frames the
    red object exactly: every pixel inside is red (edges aside: 4:2:0 chroma), none outside."""
    got, ref = _decode(sample_jpg), _displayed(source_path)
    assert got.shape == ref.shape
    assert np.abs(got - ref).mean() < 6
    assert _red_box(got) == bbox == _red_box(ref)
    x, y, w, h = (int(v) for v in bbox)
    assert _red_mask(got)[y + 1:y + h - 1, x + 1:x + w - 1].all()


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _read(out):
    """(samples, stats.json and rejected.jsonl as written to disk)."""
    stats = json.load(open(os.path.join(out, "stats.json")))
    rejected = [json.loads(l) for l in open(os.path.join(out, "rejected.jsonl"))]
    samples = list(wds.WebDataset(stats["pattern"], shardshuffle=False)) if stats["pattern"] else []
    return samples, stats, rejected


def _meta(sample):
    return json.loads(sample["json"])


# ---------------------------------------------------------------- clipping at the border
def test_inside_fraction_and_clip_box():
    assert inside_fraction([600, 100, 100, 50], 640, 480) == pytest.approx(0.4)
    assert clip_box([600, 100, 100, 50], 640, 480) == ([600, 100, 40, 50], True)
    assert clip_box([10, 10, 20, 20], 640, 480) == ([10, 10, 20, 20], False)
    with pytest.raises(BoxError, match=r"40% of its area inside the 640x480 image.*0\.5"):
        clip_box([600, 100, 100, 50], 640, 480, min_inside=0.5)
    with pytest.raises(BoxError, match="0% of its area"):
        clip_box([700, 100, 10, 10], 640, 480, min_inside=0.01)


def _border_corpus(tmp_path):
    """160x96 photo whose red object touches the right border; VG regions overshooting it."""
    raw = tmp_path / "vg"
    _photo(raw / "1.jpg", size=(160, 96), red=(144, 32, 16, 32))
    _photo(raw / "2.jpg", size=(160, 96), red=(16, 16, 16, 16), seed=1)
    regs = [{"id": 1, "regions": [
        # the case scaled down: x 144-184 on a 160-wide photo, 40% inside
        {"image_id": 1, "x": 144, "y": 32, "width": 40, "height": 32, "phrase": "red sign"},
        {"image_id": 1, "x": -3, "y": -2, "width": 40, "height": 30, "phrase": "top left"},
        {"image_id": 1, "x": 0, "y": 0, "width": 160, "height": 96, "phrase": "whole"},
        {"image_id": 1, "x": 152, "y": 0, "width": 80, "height": 16, "phrase": "sliver"}]},
        {"id": 2, "regions": [
            {"image_id": 2, "x": 170, "y": 10, "width": 20, "height": 20, "phrase": "outside"}]}]
    return _dump(raw / "region_descriptions.json", regs), str(raw)


def test_overshooting_boxes_clipped_and_counted_bad_ones_rejected_alone(tmp_path):
    ann, images = _border_corpus(tmp_path)
    out = str(tmp_path / "o")
    shard("regions", [ann], out, images=images, **OPTS)
    samples, stats, rejected = _read(out)
    assert stats["options"]["min_box_inside"] == 0.25
    assert len(samples) == 1
    regions = _meta(samples[0])["regions"]
    assert regions == [{"phrase": "red sign", "bbox": [144.0, 32.0, 16.0, 32.0]},
                       {"phrase": "top left", "bbox": [0.0, 0.0, 37.0, 28.0]},
                       {"phrase": "whole", "bbox": [0.0, 0.0, 160.0, 96.0]}]
    # the clipped box is exactly the visible red object, pixel for pixel
    _check_box_content(samples[0]["jpg"], regions[0]["bbox"], os.path.join(images, "1.jpg"))
    assert stats["totals"]["boxes_clipped"] == 2
    assert stats["totals"]["regions"] == 3
    # the sliver (10% inside) drops alone; picture 2 goes only because none of its boxes is left
    assert stats["skipped_regions"] == {"box_outside_image": 2}
    assert stats["skipped"] == {"no_valid_regions": 1}
    sliver = next(r for r in rejected if r["where"].endswith("regions[3]"))
    assert sliver["level"] == "region" and sliver["reason"] == "box_outside_image"
    assert "10% of its area inside the 160x96 image" in sliver["detail"]


def test_min_box_inside_control_rejects_what_default_clips(tmp_path):
    """Control: with a stricter threshold the 40% box is rejected (what happened before clipping
    by area), and with 1.0 nothing is clipped at all."""
    ann, images = _border_corpus(tmp_path)
    shard("regions", [ann], str(tmp_path / "half"), images=images, min_box_inside=0.5, **OPTS)
    samples, stats, _ = _read(str(tmp_path / "half"))
    assert [r["phrase"] for r in _meta(samples[0])["regions"]] == ["top left", "whole"]
    assert stats["totals"]["boxes_clipped"] == 1
    assert stats["skipped_regions"] == {"box_outside_image": 3}
    shard("regions", [ann], str(tmp_path / "strict"), images=images, min_box_inside=1.0, **OPTS)
    samples, stats, _ = _read(str(tmp_path / "strict"))
    assert [r["phrase"] for r in _meta(samples[0])["regions"]] == ["whole"]
    assert stats["totals"]["boxes_clipped"] == 0
    assert stats["skipped_regions"] == {"box_outside_image": 4}
    with pytest.raises(ValueError, match=r"--min-box-inside must be in \(0, 1\]"):
        shard("regions", [ann], str(tmp_path / "bad"), images=images, min_box_inside=0, **OPTS)


# ---------------------------------------------------------------- EXIF frames
# The red object of the rotated photos, in the stored pixel array (x >= 64: outside the 64-wide
# displayed frame; at orientation 6 its displayed box has y >= 64: outside the 64-high stored
# frame). RED_LEFT does the latter at orientation 8.
RED_STORED = (64, 16, 16, 32)
RED_LEFT = (16, 16, 16, 32)


def _displayed_red(path):
    return _red_box(_displayed(path))


def _coco_rotated(tmp_path):
    """Four orientation 6/8 photos; two annotated on the stored pixels (declared 96x64), two on
    the displayed picture (declared 64x96), as different tools do. Each box lies outside the
    other frame, so a wrong frame shows as a rejection."""
    raw = tmp_path / "coco"
    images, anns = [], []
    for i, (orientation, frame) in enumerate([(6, "stored"), (6, "displayed"), (8, "stored"),
                                              (8, "displayed")]):
        red = RED_LEFT if (orientation, frame) == (8, "displayed") else RED_STORED
        path = _photo(raw / "img" / f"{i}.jpg", orientation, red=red)
        box = list(RED_STORED) if frame == "stored" else _displayed_red(path)
        size = STORED if frame == "stored" else STORED[::-1]
        images.append({"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": box})
    ann = _dump(raw / "instances.json", {"images": images, "annotations": anns,
                                         "categories": [{"id": 1, "name": "red box"}]})
    return ann, str(raw / "img")


def test_exif_frame_decided_by_coco_declared_size(tmp_path):
    ann, images = _coco_rotated(tmp_path)
    out = str(tmp_path / "o")
    shard("regions", [ann], out, images=images, **OPTS)
    samples, stats, _ = _read(out)
    assert len(samples) == 4 and stats["skipped"] == {} and stats["skipped_regions"] == {}
    for i, s in enumerate(samples):
        meta = _meta(s)
        assert (meta["width"], meta["height"]) == (64, 96)           # stored upright
        _check_box_content(s["jpg"], meta["regions"][0]["bbox"], os.path.join(images, f"{i}.jpg"))
    assert stats["totals"]["images_boxes_rotated"] == 2
    assert stats["box_frames"] == {"exif_rotated_images": 4, "stored": 2, "displayed": 2,
                                   "decided_by": {"declared_size": 4, "box_fit": 0, "option": 0}}


@pytest.mark.parametrize("forced", ["stored", "displayed"])
def test_exif_wrong_frame_control_puts_box_outside(tmp_path, forced):
    """Control: forcing one frame for all four photos rotates (or not) the other two's boxes
    wrongly: they fall outside and those pictures are rejected, as before the per-image choice."""
    ann, images = _coco_rotated(tmp_path)
    out = str(tmp_path / "o")
    shard("regions", [ann], out, images=images, box_frame=forced, **OPTS)
    samples, stats, _ = _read(out)
    assert len(samples) == 2
    assert stats["skipped_regions"] == {"box_outside_image": 2}
    assert stats["skipped"] == {"no_valid_regions": 2}
    assert stats["box_frames"]["decided_by"]["option"] == 2
    assert stats["totals"]["images_boxes_rotated"] == (2 if forced == "stored" else 0)


def _vg_rotated(tmp_path, with_image_data=True):
    """VG regions of two orientation-6 photos whose box (in the middle) fits both frames: only the
    declared size of image_data.json can tell that photo 1 was annotated upright."""
    raw = tmp_path / "vg"
    red = (16, 16, 16, 16)          # stored; displayed (orientation 6): (32, 16, 16, 16)
    p1 = _photo(raw / "1.jpg", 6, red=red)
    p2 = _photo(raw / "2.jpg", 6, red=red)
    boxes = {1: _displayed_red(p1), 2: list(red)}
    regs = [{"id": i, "regions": [{"image_id": i, "x": b[0], "y": b[1], "width": b[2],
                                   "height": b[3], "phrase": "red square"}]}
            for i, b in boxes.items()]
    ann = _dump(raw / "region_descriptions.json", regs)
    if with_image_data:
        _dump(raw / "image_data.json", [
            {"image_id": 1, "width": 64, "height": 96, "url": "x/1.jpg"},
            {"image_id": 2, "width": 96, "height": 64, "url": "x/2.jpg"}])
    return ann, str(raw), (p1, p2)


def test_exif_frame_from_vg_image_data_next_to_the_input(tmp_path, capfd):
    ann, images, paths = _vg_rotated(tmp_path)
    out = str(tmp_path / "o")
    shard("regions", [ann], out, images=images, **OPTS)
    assert "image sizes from " in capfd.readouterr().err
    samples, stats, _ = _read(out)
    assert len(samples) == 2
    for s, path in zip(samples, paths):
        _check_box_content(s["jpg"], _meta(s)["regions"][0]["bbox"], path)
    assert stats["box_frames"] == {"exif_rotated_images": 2, "stored": 1, "displayed": 1,
                                   "decided_by": {"declared_size": 2, "box_fit": 0, "option": 0}}
    assert stats["totals"]["images_boxes_rotated"] == 1


def test_exif_frame_undecidable_without_sizes_is_rejected_not_guessed(tmp_path):
    """Control for image_data.json: without it the boxes fit both frames, so each picture is
    rejected with the flag that settles it; the flag then places them."""
    ann, images, paths = _vg_rotated(tmp_path, with_image_data=False)
    out = str(tmp_path / "o")
    shard("regions", [ann], out, images=images, **OPTS)
    samples, stats, rejected = _read(out)
    assert samples == [] and stats["skipped"] == {"box_frame_ambiguous": 2}
    assert "--box-frame stored or --box-frame displayed" in rejected[0]["detail"]
    assert stats["formats"][0]["detail"] == "no image_data.json: image sizes unknown"
    shard("regions", [ann], str(tmp_path / "o2"), images=images, box_frame="displayed", **OPTS)
    samples, stats, _ = _read(str(tmp_path / "o2"))
    _check_box_content(samples[0]["jpg"], _meta(samples[0])["regions"][0]["bbox"], paths[0])
    assert _meta(samples[1])["regions"][0]["bbox"] != _red_box(_decode(samples[1]["jpg"]))
    # an explicit --image-data file is used too, and changes the run (fingerprint)
    sizes = _dump(tmp_path / "meta" / "sizes.json", [
        {"image_id": 1, "width": 64, "height": 96}, {"image_id": 2, "width": 96, "height": 64}])
    shard("regions", [ann], str(tmp_path / "o3"), images=images, image_data=sizes, **OPTS)
    samples, stats3, _ = _read(str(tmp_path / "o3"))
    assert len(samples) == 2
    for s, path in zip(samples, paths):
        _check_box_content(s["jpg"], _meta(s)["regions"][0]["bbox"], path)
    assert stats3["input_fingerprint"] != stats["input_fingerprint"]


def test_vg_image_data_malformed_names_record_and_field(tmp_path):
    ann, images, _ = _vg_rotated(tmp_path)
    _dump(tmp_path / "vg" / "image_data.json", [{"image_id": 1, "width": 64, "height": 96},
                                                {"image_id": 2, "width": "96", "height": 64}])
    with pytest.raises(MalformedInputError,
                       match=r"image_data\.json: \[1\]: field 'width' must be a positive integer"):
        shard("regions", [ann], str(tmp_path / "o"), images=images, **OPTS)


def test_exif_frame_from_where_the_boxes_fit(tmp_path):
    """RefCOCO-style records declare no size: a box that exists in only one frame decides."""
    raw = tmp_path / "r"
    rows, paths = [], []
    for i, frame in enumerate(["stored", "displayed"]):
        path = _photo(raw / f"{i}.jpg", 6, red=RED_STORED)
        paths.append(path)
        box = list(RED_STORED) if frame == "stored" else _displayed_red(path)
        rows.append({"image": f"{i}.jpg", "text": "the red box", "bbox": box})
    out = str(tmp_path / "o")
    shard("regions", [_jsonl(raw / "refs.jsonl", rows)], out, **OPTS)
    samples, stats, _ = _read(out)
    assert len(samples) == 2 and stats["skipped"] == {} and stats["skipped_regions"] == {}
    for s, path in zip(samples, paths):
        _check_box_content(s["jpg"], _meta(s)["regions"][0]["bbox"], path)
    assert stats["box_frames"] == {"exif_rotated_images": 2, "stored": 1, "displayed": 1,
                                   "decided_by": {"declared_size": 0, "box_fit": 2, "option": 0}}


@pytest.mark.parametrize("frame", ["stored", "displayed"])
def test_every_exif_orientation_places_boxes_on_the_object(tmp_path, frame):
    """All eight EXIF orientations, boxes given in either frame with --box-frame: the stored box
    is the red object of the stored upright picture."""
    raw = tmp_path / "r"
    rows, paths = [], []
    for orientation in range(1, 9):
        path = _photo(raw / f"o{orientation}.jpg", orientation, red=RED_STORED)
        paths.append(path)
        box = list(RED_STORED) if frame == "stored" else _displayed_red(path)
        rows.append({"image": f"o{orientation}.jpg", "text": "red", "bbox": box})
    out = str(tmp_path / "o")
    shard("regions", [_jsonl(raw / "refs.jsonl", rows)], out, box_frame=frame, **OPTS)
    samples, stats, _ = _read(out)
    assert len(samples) == 8
    for s, path in zip(samples, paths):
        _check_box_content(s["jpg"], _meta(s)["regions"][0]["bbox"], path)
    assert stats["box_frames"]["exif_rotated_images"] == 7          # orientation 1 needs nothing
    assert stats["box_frames"][frame] == 7 and stats["box_frames"]["decided_by"]["option"] == 7
    assert stats["totals"]["images_boxes_rotated"] == (7 if frame == "stored" else 0)


def test_cli_flags_for_frame_and_clipping(tmp_path, capsys):
    ann, images = _coco_rotated(tmp_path)
    out = str(tmp_path / "o")
    rc = cli_main(["regions", "--input", ann, "--images", images, "--out", out, "--no-progress",
                   "--max-bad-fraction", "1", "--box-frame", "displayed",
                   "--min-box-inside", "0.6"])
    assert rc == 0
    _, stats, _ = _read(out)
    assert stats["options"]["box_frame"] == "displayed"
    assert stats["options"]["min_box_inside"] == 0.6
    assert stats["box_frames"]["displayed"] == 2
    with pytest.raises(SystemExit):
        cli_main(["regions", "--input", ann, "--out", out, "--box-frame", "raw"])
    assert "invalid choice: 'raw'" in capsys.readouterr().err


def test_auto_without_sizes_decides_where_boxes_tell_and_rejects_the_rest(tmp_path):
    """Stored-frame boxes on all eight orientations, no declared size, ``auto``: at 5-8 the box
    lies outside the turned frame, so the boxes decide; a mirror or half turn (2-4) keeps the frame
    size and the box fits both, so those pictures are rejected instead of guessed."""
    raw = tmp_path / "r"
    rows = []
    for orientation in range(1, 9):
        _photo(raw / f"o{orientation}.jpg", orientation, red=RED_STORED)
        rows.append({"image": f"o{orientation}.jpg", "text": "red", "bbox": list(RED_STORED)})
    out = str(tmp_path / "o")
    shard("regions", [_jsonl(raw / "refs.jsonl", rows)], out, **OPTS)
    samples, stats, rejected = _read(out)
    assert [_meta(s)["image_id"] for s in samples] == [f"o{o}.jpg" for o in (1, 5, 6, 7, 8)]
    for s in samples:
        _check_box_content(s["jpg"], _meta(s)["regions"][0]["bbox"],
                           str(raw / _meta(s)["image_id"]))
    assert stats["skipped"] == {"box_frame_ambiguous": 3}
    assert [r["image"].rsplit("/", 1)[-1] for r in rejected] == ["o2.jpg", "o3.jpg", "o4.jpg"]
    assert stats["box_frames"] == {"exif_rotated_images": 4, "stored": 4, "displayed": 0,
                                   "decided_by": {"declared_size": 0, "box_fit": 4, "option": 0}}
