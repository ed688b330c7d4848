"""The Karpathy split files `dataset_coco.json` / `dataset_flickr30k.json` / `dataset_flickr8k.json`:
`{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", ...}], "cocoid"?, "imgid"?}],
"dataset"}`. Splits are train, restval, val and test; restval is training data (X-VLM and ALBEF
train on train + restval)."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .fields import Loc, get_int, get_list, get_str, require_object, type_name
from .files import display, load_json_object
from .images import ImageRef, resolve

KARPATHY_SPLITS = ("train", "restval", "val", "test")
TRAIN_SPLITS = ("train", "restval")


@dataclass(frozen=True)
class KarpathyImage:
    loc: Loc
    image: ImageRef
    split: str
    sentences: list[str]
    image_id: int | None     # cocoid when present (what COCO results files use), else imgid


def read_karpathy(path, image_root=None, splits=KARPATHY_SPLITS) -> list[KarpathyImage]:
    """Images of the wanted splits, in file order."""
    obj = load_json_object(path, required=("images",))
    return parse_karpathy(obj, display(path), image_root, splits)


def is_karpathy(obj) -> bool:
    return isinstance(obj, dict) and "images" in obj


def parse_karpathy(obj: dict, name: str, image_root, splits) -> list[KarpathyImage]:
    for s in splits:
        if s not in KARPATHY_SPLITS:
            raise ValueError(f"unknown Karpathy split {s!r}; choose from {KARPATHY_SPLITS}")
    images = obj["images"]
    if not isinstance(images, list):
        raise Loc(name, "top level").error("images", f"expected a list, got {type_name(images)}")
    out = []
    for i, row in enumerate(images):
        loc = Loc(name, "record", i)
        row = require_object(row, loc)
        coco_id, img_id = get_int(row, loc, "cocoid", optional=True), get_int(row, loc, "imgid", optional=True)
        if coco_id is not None or img_id is not None:
            loc = loc.with_key("cocoid" if coco_id is not None else "imgid",
                               coco_id if coco_id is not None else img_id)
        split = get_str(row, loc, "split")
        if split not in KARPATHY_SPLITS:
            raise loc.error("split", f"unknown split {split!r} (expected one of {', '.join(KARPATHY_SPLITS)})")
        filename = get_str(row, loc, "filename")
        filepath = get_str(row, loc, "filepath", optional=True)
        sentences = get_list(row, loc, "sentences")
        raws = []
        for k, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise loc.error(f"sentences[{k}]", f"expected an object, got {type_name(sent)}")
            raws.append(get_str(sent, loc, "raw") if "raw" in sent else _missing_raw(loc, k))
        if split not in splits:
            continue
        rel = posixpath.join(filepath, filename) if filepath else filename
        out.append(KarpathyImage(loc, resolve(image_root, rel), split, raws,
                                 coco_id if coco_id is not None else img_id))
    return out


def _missing_raw(loc: Loc, k: int):
    raise loc.error(f"sentences[{k}].raw", "missing")
