"""RefCOCO-style grounding records ``{"image", "text", "bbox": [x, y, w, h]}`` (JSON lines or a
JSON array) -> regions: all records of one image become one sample (first-appearance order)."""
from __future__ import annotations

from ..records import MalformedInputError, Record, Region
from .common import iter_jsonl, need, resolve_image

TEXT_FIELDS = ("text", "phrase", "caption", "sentence")


def is_refcoco_record(obj) -> bool:
    return isinstance(obj, dict) and "bbox" in obj and "image" in obj


def _group(path, items, opts):
    by_image: dict = {}
    for where, obj in items:
        image = need(obj, "image", path, where, str)
        text_field = next((f for f in TEXT_FIELDS if f in obj), None)
        if text_field is None:
            raise MalformedInputError(f"{path}: {where}: missing field 'text'")
        bbox = need(obj, "bbox", path, where)
        rec = by_image.get(image)
        if rec is None:
            image_id = obj.get("image_id", image)
            size = (obj.get("width"), obj.get("height"))
            declared = size if all(isinstance(v, int) and v > 0 for v in size) else None
            rec = by_image[image] = Record(path, f"{where} ({image})", image_id=str(image_id),
                                           image_path=resolve_image(image, opts.images, path),
                                           declared_size=declared)
        rec.regions.append(Region(obj[text_field], bbox, where))
    return list(by_image.values())


def read_jsonl(path: str, opts):
    return _group(path, ((f"line {n}", o) for n, o in iter_jsonl(path)), opts)


def read_json_list(path: str, obj, opts):
    if not isinstance(obj, list):
        raise MalformedInputError(f"{path}: top level: expected a JSON array of records")
    return _group(path, ((f"[{i}]", o) for i, o in enumerate(obj)), opts)
