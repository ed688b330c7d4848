"""Writers for the public formats, byte-deterministic (fixed key order, fixed separators, '\\n'
line ends, atomic temp-file-then-rename so a crash never leaves half a file)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))


def write_jsonl(path: Path, rows) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def write_lines(path: Path, lines) -> None:
    for i, line in enumerate(lines):
        if "\n" in line:
            raise ValueError(f"{path}: document {i} contains a newline (one document per line)")
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def write_tsv(path: Path, rows, header: list[str] | None) -> None:
    """GLUE TSV: tab separated, no quoting (GLUE files are read with quoting disabled)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n",
                        escapechar=None)
    if header is not None:
        writer.writerow(header)
    for row in rows:
        if any("\t" in str(v) or "\n" in str(v) for v in row):
            raise ValueError(f"{path}: a field contains a tab or newline: {row!r}")
        writer.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# ----------------------------------------------------------------- format builders
def coco_captions(images: list[dict], captions: list[tuple[int, str]], description: str) -> dict:
    """COCO `captions_*.json`: info, licenses, images [{id, file_name, width, height}],
    annotations [{id, image_id, caption}]."""
    return {
        "info": {"description": description, "version": "1.0", "year": 2026,
                 "contributor": "xfm synthetic world", "date_created": "synthetic"},
        "licenses": [{"id": 1, "name": "CC0 1.0 (synthetic)", "url": ""}],
        "images": [{"id": im["id"], "file_name": im["file_name"], "width": im["width"],
                    "height": im["height"], "license": 1} for im in images],
        "annotations": [{"id": k + 1, "image_id": image_id, "caption": cap}
                        for k, (image_id, cap) in enumerate(captions)],
    }

