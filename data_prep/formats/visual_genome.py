"""Visual Genome ``objects.json`` (phrase = the object's first name) and
``region_descriptions.json`` (phrase = the region description) -> regions, one sample per image.

Images are found as ``<images>/<image_id>.jpg``, also under ``VG_100K/`` and ``VG_100K_2/`` (the
two folders VG ships); an ``image_url`` field, when present, gives the file name.

Each image's width/height come from VG's ``image_data.json`` (``read_image_sizes``): they tell
which pixel frame the boxes of an EXIF-rotated photo are in (see ``box_frame.py``)."""
from __future__ import annotations

import os

from ..records import MalformedInputError, Record, Region
from .common import load_json, need, need_list

IMAGE_DATA = "image_data.json"


def sibling_image_data(path: str) -> str | None:
    """``image_data.json`` in the folder of a VG annotation file, when it exists."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), IMAGE_DATA)
    return candidate if os.path.isfile(candidate) else None


def read_image_sizes(path: str) -> dict:
    """VG ``image_data.json`` (``[{"image_id" (or "id"), "width", "height", ...}]``) ->
    {image_id (str): (width, height)}."""
    obj = load_json(path)
    if not isinstance(obj, list):
        raise MalformedInputError(f"{path}: top level: expected a list of images")
    sizes = {}
    for i, entry in enumerate(obj):
        where = f"[{i}]"
        if isinstance(entry, dict) and "image_id" not in entry and "id" in entry:
            image_id = entry["id"]                  # VG 1.0 spells it "id"
        else:
            image_id = need(entry, "image_id", path, where)
        size = []
        for field in ("width", "height"):
            value = need(entry, field, path, where)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MalformedInputError(f"{path}: {where}: field '{field}' must be a positive "
                                          f"integer, got {value!r}")
            size.append(value)
        sizes[str(image_id)] = tuple(size)
    return sizes


def is_vg_objects(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and isinstance(obj[0], dict) and "objects" in obj[0]


def is_vg_regions(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and isinstance(obj[0], dict) and "regions" in obj[0]


def _image_path(entry: dict, image_id, images_dir: str | None, path: str) -> str:
    name = f"{image_id}.jpg"
    url = entry.get("image_url") if isinstance(entry, dict) else None
    if isinstance(url, str) and url:
        name = url.rsplit("/", 1)[-1]
    root = images_dir or os.path.dirname(os.path.abspath(path))
    for sub in ("", "VG_100K", "VG_100K_2"):
        candidate = os.path.join(root, sub, name)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(root, name)   # missing: reported by the worker as missing_file


def _box(item, path, where, keys):
    return [need(item, k, path, where) for k in keys]


def read_objects(path: str, obj, opts, sizes: dict | None = None):
    if not isinstance(obj, list):
        raise MalformedInputError(f"{path}: top level: expected a list of images")
    out = []
    for i, entry in enumerate(obj):
        where = f"[{i}]"
        image_id = need(entry, "image_id", path, where)
        regions = []
        for j, o in enumerate(need_list(entry, "objects", path, where)):
            w = f"{where}.objects[{j}]"
            names = o.get("names") if isinstance(o, dict) else None
            if names is None and isinstance(o, dict) and "name" in o:
                names = [o["name"]]
            if names is None:
                raise MalformedInputError(f"{path}: {w}: missing field 'names'")
            phrase = names[0] if isinstance(names, list) and names else names
            regions.append(Region(phrase if isinstance(phrase, str) else "",
                                  _box(o, path, w, ("x", "y", "w", "h")), f"objects[{j}]"))
        if regions:
            out.append(Record(path, f"{where} (image_id {image_id})", image_id=str(image_id),
                              image_path=_image_path(entry, image_id, opts.images, path),
                              regions=regions, declared_size=(sizes or {}).get(str(image_id))))
    return out


def read_regions(path: str, obj, opts, sizes: dict | None = None):
    if not isinstance(obj, list):
        raise MalformedInputError(f"{path}: top level: expected a list of images")
    out = []
    for i, entry in enumerate(obj):
        where = f"[{i}]"
        items = need_list(entry, "regions", path, where)
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None and items:
            image_id = need(items[0], "image_id", path, f"{where}.regions[0]")
        if image_id is None:
            continue                     # an image with no regions and no id: nothing to shard
        regions = []
        for j, r in enumerate(items):
            w = f"{where}.regions[{j}]"
            regions.append(Region(need(r, "phrase", path, w),
                                  _box(r, path, w, ("x", "y", "width", "height")),
                                  f"regions[{j}]"))
        if regions:
            out.append(Record(path, f"{where} (image_id {image_id})", image_id=str(image_id),
                              image_path=_image_path(entry, image_id, opts.images, path),
                              regions=regions, declared_size=(sizes or {}).get(str(image_id))))
    return out
