"""Pairs in the original X-FM record layout, as JSON lines or a JSON array:
``{"image": path | "binary": base64, "caption" | "desc": str or [str, ...], "image_id"?: ...}``.
Several captions for one record give one sample each."""
from __future__ import annotations

import os

from ..records import MalformedInputError, Record
from .common import iter_jsonl, resolve_image


def is_xfm_record(obj) -> bool:
    return isinstance(obj, dict) and ("image" in obj or "binary" in obj) and (
        "caption" in obj or "desc" in obj)


def _record(path: str, where: str, obj: dict, opts) -> Record:
    if not isinstance(obj, dict):
        raise MalformedInputError(f"{path}: {where}: expected an object, got {type(obj).__name__}")
    if "binary" in obj:
        data = obj["binary"]
        if not isinstance(data, str):
            raise MalformedInputError(f"{path}: {where}: field 'binary' must be a base64 string")
        image_path = None
    elif "image" in obj:
        image = obj["image"]
        if not isinstance(image, str):
            raise MalformedInputError(f"{path}: {where}: field 'image' must be a string path")
        data, image_path = None, resolve_image(image, opts.images, path)
    else:
        raise MalformedInputError(f"{path}: {where}: missing field 'image' or 'binary'")
    if "caption" in obj:
        captions = obj["caption"]
    elif "desc" in obj:
        captions = obj["desc"]
    else:
        raise MalformedInputError(f"{path}: {where}: missing field 'caption' or 'desc'")
    if not isinstance(captions, list):
        captions = [captions]
    image_id = obj.get("image_id", obj.get("id"))
    if image_id is None:
        image_id = obj["image"] if image_path else f"{os.path.basename(path)}:{where}"
    return Record(path, where, image_id=str(image_id), image_path=image_path,
                  image_bytes=data, captions=captions)


def read_jsonl(path: str, opts):
    for lineno, obj in iter_jsonl(path):
        yield _record(path, f"line {lineno}", obj, opts)


def read_json_list(path: str, obj, opts):
    if not isinstance(obj, list):
        raise MalformedInputError(f"{path}: top level: expected a JSON array of records")
    return [_record(path, f"[{i}]", o, opts) for i, o in enumerate(obj)]
