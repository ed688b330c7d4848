"""Reading JSON, JSON lines and pickles with errors that name the file and the line."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DataFormatError
from .fields import Loc, require_object, type_name


def display(path) -> str:
    return os.fspath(path)


def load_json(path):
    """A whole-file JSON document; a syntax error names the line and column."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{display(path)}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None


def load_document(path):
    """The whole file as one JSON document, or None when it is not one (e.g. JSON lines)."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError:
        return None


def records_of(rows, name: str) -> list[tuple[Loc, dict]]:
    if not isinstance(rows, list):
        raise DataFormatError(f"{name}: expected a JSON array of records or JSON lines, got {type_name(rows)}")
    return [(loc, require_object(row, loc)) for i, row in enumerate(rows) for loc in [Loc(name, "record", i)]]


def load_records(path) -> list[tuple[Loc, dict]]:
    """Records of a file that is either a JSON array of objects (X-VLM writes these) or JSON
    lines (one object per line, as NLVR2 and the synthetic world write). A file whose first
    non-blank character is '[' is an array; anything else is read as JSON lines, so a
    one-record JSON-lines file is not mistaken for something else."""
    text = _read_text(path)
    name = display(path)
    if text.lstrip()[:1] == "[":
        return records_of(load_json(path), name)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        loc = Loc(name, "line", n)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{loc}: column {e.colno}: invalid JSON: {e.msg}") from None
        records.append((loc, require_object(row, loc)))
    return records


def load_json_object(path, required: tuple[str, ...] = ()) -> dict:
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{display(path)}: expected a JSON object at the top level, got {type_name(obj)}")
    for key in required:
        if key not in obj:
            raise DataFormatError(f"{display(path)}: field '{key}': missing at the top level")
    return obj


def as_paths(paths) -> list[Path]:
    """One path or several (X-VLM concatenates several annotation files for training)."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no annotation file given")
    return out


def _read_text(path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{display(path)}: annotation file not found") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{display(path)}: byte {e.start}: not UTF-8 text") from None
