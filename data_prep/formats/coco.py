"""COCO annotation files: captions (``annotations/captions_*.json``) -> pairs, instances
(``annotations/instances_*.json``) -> regions with the category name as phrase.

Samples follow the order of the ``images`` list; an image's captions/boxes keep file order."""
from __future__ import annotations

from collections import defaultdict

from ..records import MalformedInputError, Record, Region, Rejection
from .common import load_json, need, need_list, resolve_image


def is_coco_captions(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("images"), list)
            and isinstance(obj.get("annotations"), list)
            and any(isinstance(a, dict) and "caption" in a for a in obj["annotations"][:5]))


def is_coco_instances(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("images"), list)
            and isinstance(obj.get("annotations"), list) and "categories" in obj
            and any(isinstance(a, dict) and "bbox" in a for a in obj["annotations"][:5]))


def _images(obj, path):
    images = {}
    order = []
    for i, im in enumerate(need_list(obj, "images", path, "top level")):
        where = f"images[{i}]"
        image_id = need(im, "id", path, where)
        file_name = need(im, "file_name", path, where, str)
        size = (im.get("width"), im.get("height"))
        declared = size if all(isinstance(v, int) and v > 0 for v in size) else None
        images[image_id] = (file_name, where, declared)
        order.append(image_id)
    return images, order


def read_captions(path: str, obj, opts):
    images, order = _images(obj, path)
    captions = defaultdict(list)
    orphans = []
    for i, ann in enumerate(need_list(obj, "annotations", path, "top level")):
        where = f"annotations[{i}]"
        image_id = need(ann, "image_id", path, where)
        caption = need(ann, "caption", path, where)
        if image_id not in images:
            orphans.append(Rejection("unknown_image_id", path, where,
                                     f"image_id {image_id} is not in 'images'", str(image_id)))
            continue
        captions[image_id].append(caption)
    out = [Record(path, f"{images[i][1]} (image_id {i})", image_id=str(i),
                  image_path=resolve_image(images[i][0], opts.images, path), captions=captions[i])
           for i in order if captions.get(i)]
    out.extend(Record(path, r.where, image_id=r.image_id, rejection=r) for r in orphans)
    return out


def first_captions(path: str) -> dict:
    """image_id (str) -> its first caption in a COCO captions JSON (for regions samples)."""
    obj = load_json(path)
    out = {}
    for i, ann in enumerate(need_list(obj, "annotations", path, "top level")):
        image_id = str(need(ann, "image_id", path, f"annotations[{i}]"))
        caption = need(ann, "caption", path, f"annotations[{i}]")
        if image_id not in out and isinstance(caption, str) and caption.strip():
            out[image_id] = caption
    return out


def read_instances(path: str, obj, opts):
    images, order = _images(obj, path)
    categories = {}
    for i, cat in enumerate(need_list(obj, "categories", path, "top level")):
        categories[need(cat, "id", path, f"categories[{i}]")] = need(cat, "name", path,
                                                                     f"categories[{i}]", str)
    regions = defaultdict(list)
    orphans = []
    for i, ann in enumerate(need_list(obj, "annotations", path, "top level")):
        where = f"annotations[{i}]"
        image_id = need(ann, "image_id", path, where)
        category = need(ann, "category_id", path, where)
        bbox = need(ann, "bbox", path, where)
        if category not in categories:
            raise MalformedInputError(f"{path}: {where}: field 'category_id': {category} is not "
                                      f"in 'categories'")
        if image_id not in images:
            orphans.append(Rejection("unknown_image_id", path, where,
                                     f"image_id {image_id} is not in 'images'", str(image_id)))
            continue
        regions[image_id].append(Region(categories[category], bbox, where))
    out = [Record(path, f"{images[i][1]} (image_id {i})", image_id=str(i),
                  image_path=resolve_image(images[i][0], opts.images, path), regions=regions[i],
                  declared_size=images[i][2])
           for i in order if regions.get(i)]
    out.extend(Record(path, r.where, image_id=r.image_id, rejection=r) for r in orphans)
    return out
