"""Text corpora -> documents.

``.txt``: one document per line, or documents separated by blank lines (``--doc-sep``; ``auto``
picks blank-line mode when the file has blank lines between multi-line blocks). Each document is
decoded (``--encoding``, default UTF-8) on its own, so one badly encoded document is rejected
(``bad_encoding``) without losing the rest of the file. Blank lines are separators, not documents.
JSON lines: the ``--text-field`` of each object is one document."""
from __future__ import annotations

import json

from ..records import MalformedInputError, Record, Rejection

SNIFF_BYTES = 1 << 20


def guess_doc_sep(path: str) -> str:
    """Blank-line mode when most blank-separated blocks span several lines (paragraph-style
    documents); a one-document-per-line file with a few stray blank lines stays in line mode."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    blocks, run = [], 0
    for ln in head.split(b"\n"):
        if ln.strip():
            run += 1
        elif run:
            blocks.append(run)
            run = 0
    if run:
        blocks.append(run)
    multi = sum(1 for b in blocks if b > 1)
    return "blank" if len(blocks) > 1 and multi * 2 > len(blocks) else "line"


def _decode(raw: bytes, encoding: str) -> str:
    """-> text, or UnicodeDecodeError whose message says how to read another encoding."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise UnicodeDecodeError(e.encoding, e.object, e.start, e.end,
                                 f"{e.reason} (the file is read as {encoding}; pass --encoding "
                                 f"if it uses another, e.g. --encoding latin-1)") from None


def _doc(path: str, where: str, raw: bytes, encoding: str = "utf-8") -> Record:
    try:
        text = _decode(raw, encoding)
    except UnicodeDecodeError as e:
        return Record(path, where, rejection=Rejection("bad_encoding", path, where,
                                                       f"not valid {encoding}: {e}"))
    return Record(path, where, text=text)


def read_txt(path: str, opts, doc_sep: str):
    with open(path, "rb") as f:
        if doc_sep == "line":
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    yield _doc(path, f"line {lineno}", raw.rstrip(b"\r\n"), opts.encoding)
            return
        block, first = [], None
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                if first is None:
                    first = lineno
                block.append(raw.rstrip(b"\r\n"))
                continue
            if block:
                yield _doc(path, f"lines {first}-{lineno - 1}", b"\n".join(block), opts.encoding)
                block, first = [], None
        if block:
            yield _doc(path, f"lines {first}-{first + len(block) - 1}", b"\n".join(block),
                       opts.encoding)


def read_jsonl(path: str, opts):
    field = opts.text_field
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"line {lineno}"
            try:
                line = _decode(raw, opts.encoding)
            except UnicodeDecodeError as e:
                yield Record(path, where, rejection=Rejection("bad_encoding", path, where,
                                                              f"not valid {opts.encoding}: {e}"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MalformedInputError(f"{path}: line {lineno}: invalid JSON: {e}") from None
            if not isinstance(obj, dict) or field not in obj:
                raise MalformedInputError(f"{path}: line {lineno}: missing field '{field}' "
                                          f"(choose the field with --text-field)")
            value = obj[field]
            if not isinstance(value, str):
                raise MalformedInputError(f"{path}: line {lineno}: field '{field}' must be a "
                                          f"string, got {type(value).__name__}")
            yield Record(path, where, text=value)
