"""ImageNet-style class folders: ``ROOT/<class name>/<image>`` -> images samples (``jpg``,
``cls``). Class indices come from ``--classes classes.json`` when given (e.g. the official
ImageNet order), else from the sorted folder names; the map is written as ``DIR/classes.json``.
Samples are shuffled with a fixed seed (``--shuffle-seed``; none keeps class order) so that a
shard does not hold a single class."""
from __future__ import annotations

import os
import random

from ..records import MalformedInputError, Record, Rejection
from .common import load_json

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".jfif"}


def class_map(roots: list[str], classes_file: str | None) -> dict:
    if classes_file:
        mapping = load_json(classes_file)
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise MalformedInputError(f"{classes_file}: expected {{class_name: index}} with "
                                      f"integer indices")
        return mapping
    names = set()
    for root in roots:
        names.update(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not names:
        raise MalformedInputError(f"{', '.join(roots)}: no class folders found")
    return {name: i for i, name in enumerate(sorted(names))}


def list_files(root: str, mapping: dict) -> list[tuple[str, str]]:
    """(class name, path) for every non-hidden file under the class folders, sorted."""
    out = []
    for name in sorted(d for d in os.listdir(root)
                       if not d.startswith(".") and os.path.isdir(os.path.join(root, d))):
        if name not in mapping:
            raise MalformedInputError(f"{os.path.join(root, name)}: class folder '{name}' is not "
                                      f"in the classes map")
        for dirpath, dirs, files in os.walk(os.path.join(root, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fn in sorted(files):
                if not fn.startswith("."):
                    out.append((name, os.path.join(dirpath, fn)))
    return out


def read_class_folders(root: str, opts, mapping: dict):
    items = list_files(root, mapping)
    if opts.shuffle_seed is not None:
        random.Random(opts.shuffle_seed).shuffle(items)
    out = []
    for name, path in items:
        rel = os.path.relpath(path, root)
        image_id = os.path.splitext(rel)[0].replace(os.sep, "/")
        if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
            out.append(Record(root, rel, rejection=Rejection(
                "not_an_image", root, rel, "file extension is not an image type", image_id, path)))
            continue
        out.append(Record(root, rel, image_id=image_id, image_path=path, label=mapping[name]))
    return out
