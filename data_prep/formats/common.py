"""Helpers the format readers share: loading JSON / JSON lines with errors that name the file,
line and field, and resolving image paths."""
from __future__ import annotations

import json
import os

from ..records import MalformedInputError


def load_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise MalformedInputError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise MalformedInputError(f"{path}: not UTF-8 JSON ({e})") from None


def iter_jsonl(path: str):
    """Yield (line_number, object) for each non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MalformedInputError(f"{path}: line {lineno}: invalid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise MalformedInputError(f"{path}: line {lineno}: expected a JSON object, got "
                                          f"{type(obj).__name__}")
            yield lineno, obj


def head_jsonl(path: str, n: int = 5) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                out.append(obj)
                if len(out) >= n:
                    break
    return out


def need(obj: dict, field: str, path: str, where: str, types=None):
    """obj[field], or MalformedInputError naming file, place and field."""
    if not isinstance(obj, dict):
        raise MalformedInputError(f"{path}: {where}: expected an object, got {type(obj).__name__}")
    if field not in obj:
        raise MalformedInputError(f"{path}: {where}: missing field '{field}'")
    value = obj[field]
    if types is not None and not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise MalformedInputError(f"{path}: {where}: field '{field}' must be {names}, got "
                                  f"{type(value).__name__}")
    return value


def need_list(obj, field, path, where):
    return need(obj, field, path, where, list)


def resolve_image(name: str, images_dir: str | None, annotation_file: str) -> str:
    """Relative image paths are taken under ``--images``, else next to the annotation file."""
    if "://" in name or os.path.isabs(name):
        return name
    root = images_dir if images_dir else os.path.dirname(os.path.abspath(annotation_file))
    return os.path.join(root, name)
