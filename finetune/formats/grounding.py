"""Referring-expression grounding sets (RefCOCO, RefCOCO+, RefCOCOg) in both public layouts.

- X-VLM JSON: rows `{image, text, bbox: [x, y, w, h], ref_id}` plus optional `image_id`,
  `width`, `height`, `split`; a JSON array or JSON lines. X-VLM's own files carry no box (its
  code looks boxes up through the REFER API): pass `boxes=read_refer_boxes(refs, instances)`
  to fill them from the original annotations.
- The original release: `refs(unc).p` (a Python pickle: a list of refs `{ref_id, ann_id,
  image_id, split, sentences: [{sent, raw, ...}], file_name, ...}`) and `instances.json`
  (COCO: `images[].{id, file_name, width, height}`, `annotations[].{id, image_id, bbox}`).
  One example per sentence; the box is the annotation's; the image file is the COCO image's
  `file_name` (the ref's own `file_name` carries an annotation suffix and names no file). The
  pickle is read without executing anything (`safe_pickle.py`).

Boxes are COCO [x, y, w, h] in pixels of the original image, as floats."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DataFormatError
from .fields import Loc, get_box, get_id, get_int, get_list, get_str, require_object, type_name
from .files import as_paths, display, load_json_object, load_records
from .images import ImageRef, resolve
from .safe_pickle import load_plain_pickle


@dataclass(frozen=True)
class GroundingExample:
    image: ImageRef
    text: str
    bbox: list[float]               # [x, y, w, h] pixels
    ref_id: int | str
    image_id: int | str | None = None
    split: str | None = None
    width: int | None = None
    height: int | None = None
    origin: str = field(default="", compare=False, repr=False)

    def image_refs(self):
        yield self.origin, "image", self.image


def read_grounding_json(paths, image_root=None, *, boxes: dict | None = None) -> list[GroundingExample]:
    """X-VLM grounding rows. `boxes` (ref_id -> [x, y, w, h]) supplies boxes for rows without
    `bbox`; a row's own `bbox` wins."""
    out = []
    for path in as_paths(paths):
        for loc, row in load_records(path):
            ref_id = get_id(row, loc, "ref_id")
            loc = loc.with_key("ref_id", ref_id)
            image = resolve(image_root, get_str(row, loc, "image"))
            text = get_str(row, loc, "text")
            width, height = get_int(row, loc, "width", optional=True), get_int(row, loc, "height", optional=True)
            if "bbox" in row or boxes is None:
                bbox = get_box(row, loc, "bbox", width, height)
            elif ref_id in boxes:
                bbox = list(boxes[ref_id])
            else:
                raise loc.error("bbox", f"missing, and ref_id {ref_id} is not in the given boxes")
            out.append(GroundingExample(image, text, bbox, ref_id, get_id(row, loc, "image_id", optional=True),
                                        get_str(row, loc, "split", optional=True), width, height, str(loc)))
    return out


@dataclass(frozen=True)
class _CocoImage:
    file_name: str
    width: int | None
    height: int | None


def _read_instances(path) -> tuple[dict, dict]:
    """COCO instances: image id -> _CocoImage, annotation id -> (Loc, annotation)."""
    name = display(path)
    obj = load_json_object(path, required=("images", "annotations"))
    images, anns = {}, {}
    for section in ("images", "annotations"):
        if not isinstance(obj[section], list):
            raise DataFormatError(f"{name}: field '{section}': expected a list, got {type_name(obj[section])}")
    for i, row in enumerate(obj["images"]):
        loc = Loc(name, "images record", i)
        row = require_object(row, loc)
        image_id = get_int(row, loc, "id")
        loc = loc.with_key("id", image_id)
        images[image_id] = _CocoImage(get_str(row, loc, "file_name"), get_int(row, loc, "width", optional=True),
                                      get_int(row, loc, "height", optional=True))
    for i, row in enumerate(obj["annotations"]):
        loc = Loc(name, "annotations record", i)
        row = require_object(row, loc)
        ann_id = get_int(row, loc, "id")
        anns[ann_id] = (loc.with_key("id", ann_id), row)
    return images, anns


def _read_refs(path) -> list[tuple[Loc, dict]]:
    name = display(path)
    refs = load_plain_pickle(path)
    if not isinstance(refs, list):
        raise DataFormatError(f"{name}: expected a list of refs, got {type_name(refs)}")
    out = []
    for i, ref in enumerate(refs):
        loc = Loc(name, "record", i)
        ref = require_object(ref, loc)
        out.append((loc.with_key("ref_id", get_int(ref, loc, "ref_id")), ref))
    return out


def read_refer(refs_path, instances_path, image_root=None, *, splits=None,
               sentence_field: str = "sent") -> list[GroundingExample]:
    """One example per sentence of every ref (of `splits` if given), in ref order.
    `sentence_field`: "sent" (the lower-cased, tokenised form X-VLM's JSON holds) or "raw"."""
    images, anns = _read_instances(instances_path)
    inst = display(instances_path)
    out = []
    for loc, ref in _read_refs(refs_path):
        split = get_str(ref, loc, "split")
        if splits is not None and split not in splits:
            continue
        ann_id, image_id = get_int(ref, loc, "ann_id"), get_int(ref, loc, "image_id")
        if ann_id not in anns:
            raise loc.error("ann_id", f"annotation {ann_id} is not in {inst}")
        if image_id not in images:
            raise loc.error("image_id", f"image {image_id} is not in {inst}")
        ann_loc, ann = anns[ann_id]
        if get_int(ann, ann_loc, "image_id") != image_id:
            raise loc.error("image_id", f"{image_id}, but annotation {ann_id} belongs to image {ann['image_id']}")
        im = images[image_id]
        bbox = get_box(ann, ann_loc, "bbox", im.width, im.height)
        sentences = get_list(ref, loc, "sentences")
        if not sentences:
            raise loc.error("sentences", "expected at least 1 sentence, got 0")
        for k, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise loc.error(f"sentences[{k}]", f"expected an object, got {type_name(sent)}")
            if sentence_field not in sent:
                raise loc.error(f"sentences[{k}].{sentence_field}", "missing")
            text = sent[sentence_field]
            if not isinstance(text, str) or not text.strip():
                raise loc.error(f"sentences[{k}].{sentence_field}", f"expected a non-empty string, got {type_name(text)}")
            out.append(GroundingExample(resolve(image_root, im.file_name), text, list(bbox), ref["ref_id"],
                                        image_id, split, im.width, im.height, f"{loc}: sentences[{k}]"))
    return out


def read_refer_boxes(refs_path, instances_path) -> dict:
    """ref_id -> [x, y, w, h] from the original annotations (for X-VLM JSON without boxes)."""
    images, anns = _read_instances(instances_path)
    boxes = {}
    for loc, ref in _read_refs(refs_path):
        ann_id = get_int(ref, loc, "ann_id")
        if ann_id not in anns:
            raise loc.error("ann_id", f"annotation {ann_id} is not in {display(instances_path)}")
        ann_loc, ann = anns[ann_id]
        im = images.get(ann.get("image_id"))
        boxes[ref["ref_id"]] = get_box(ann, ann_loc, "bbox", im and im.width, im and im.height)
    return boxes
