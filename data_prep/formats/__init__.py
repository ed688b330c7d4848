"""Input formats per kind, format guessing, and the record stream of a run.

Each format is a reader turning one input file (or folder) into ``Record``s in a fixed order.
JSON files are parsed once: the parsed object is used both to guess the format and to read it."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ..records import MalformedInputError
from . import class_folders, coco, karpathy, refcoco, tabular, text, visual_genome, xfm_pairs
from .common import head_jsonl, load_json

FORMATS = {
    "pairs": ("coco-captions", "karpathy", "csv", "tsv", "jsonl", "json-list"),
    "regions": ("vg-objects", "vg-regions", "coco-instances", "refcoco"),
    "text": ("txt", "jsonl"),
    "images": ("class-folders",),
}
JSON_EXT = (".json",)
JSONL_EXT = (".jsonl", ".ndjson")
FOLDER_FILE_EXT = {"pairs": (".json", ".jsonl", ".ndjson", ".csv", ".tsv"),
                   "regions": (".json", ".jsonl", ".ndjson"),
                   "text": (".txt", ".jsonl", ".ndjson")}


@dataclass
class InputFile:
    path: str
    format: str
    guessed: bool
    detail: str = ""          # e.g. the document separator chosen for .txt, in words
    parsed: object = None     # the loaded JSON, kept between guessing and reading
    doc_sep: str = ""         # .txt: "line" or "blank" (what ``detail`` describes)
    sizes_path: str = ""      # Visual Genome: image_data.json giving each image's size

    def describe(self) -> str:
        how = "guessed" if self.guessed else "given"
        extra = f", {self.detail}" if self.detail else ""
        return f"{self.path}: format {self.format} ({how}{extra})"


def _guess_json(kind: str, path: str, obj) -> str | None:
    if kind == "pairs":
        if coco.is_coco_captions(obj):
            return "coco-captions"
        if karpathy.is_karpathy(obj):
            return "karpathy"
        if isinstance(obj, list) and obj and xfm_pairs.is_xfm_record(obj[0]):
            return "json-list"
    if kind == "regions":
        if coco.is_coco_instances(obj):
            return "coco-instances"
        if visual_genome.is_vg_objects(obj):
            return "vg-objects"
        if visual_genome.is_vg_regions(obj):
            return "vg-regions"
        if isinstance(obj, list) and obj and refcoco.is_refcoco_record(obj[0]):
            return "refcoco"
    return None


def _guess(kind: str, path: str) -> tuple[str, object]:
    ext = os.path.splitext(path)[1].lower()
    if kind == "images":
        if os.path.isdir(path):
            return "class-folders", None
    elif ext in JSON_EXT:
        obj = load_json(path)
        fmt = _guess_json(kind, path, obj)
        if fmt:
            return fmt, obj
    elif ext in JSONL_EXT:
        head = head_jsonl(path)
        if kind == "text":
            return "jsonl", None
        if kind == "pairs" and (not head or xfm_pairs.is_xfm_record(head[0])):
            return "jsonl", None
        if kind == "regions" and (not head or refcoco.is_refcoco_record(head[0])):
            return "refcoco", None
    elif ext in (".csv", ".tsv", ".tab") and kind == "pairs":
        return ("csv" if ext == ".csv" else "tsv"), None
    elif ext == ".txt" and kind == "text":
        return "txt", None
    raise MalformedInputError(f"{path}: cannot tell which {kind} format this is; pass --format "
                              f"(one of {', '.join(FORMATS[kind])})")


def expand_inputs(kind: str, inputs: list[str]) -> list[str]:
    """Folders stand for the annotation files inside them (sorted); for ``images`` a folder is a
    class-folder root."""
    out = []
    for path in inputs:
        if not os.path.exists(path):
            raise MalformedInputError(f"{path}: input does not exist")
        if os.path.isdir(path) and kind != "images":
            exts = FOLDER_FILE_EXT[kind]
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if n.lower().endswith(exts) and not n.startswith("."))
            if not found:
                raise MalformedInputError(f"{path}: folder holds no {kind} input files "
                                          f"({', '.join(exts)})")
            out.extend(found)
        else:
            if kind == "images" and not os.path.isdir(path):
                raise MalformedInputError(f"{path}: images input must be a class-folder root")
            out.append(path)
    return out


def plan(kind: str, inputs: list[str], opts) -> list[InputFile]:
    files = []
    for path in expand_inputs(kind, inputs):
        if opts.format:
            if opts.format not in FORMATS[kind]:
                raise MalformedInputError(f"--format {opts.format} is not a {kind} format (one of "
                                          f"{', '.join(FORMATS[kind])})")
            item = InputFile(path, opts.format, False)
        else:
            fmt, parsed = _guess(kind, path)
            item = InputFile(path, fmt, True, parsed=parsed)
        if item.format == "txt":
            item.doc_sep = opts.doc_sep if opts.doc_sep != "auto" else text.guess_doc_sep(path)
            item.detail = ("one document per line" if item.doc_sep == "line"
                           else "documents separated by blank lines")
        if item.format in ("vg-objects", "vg-regions"):
            item.sizes_path = opts.image_data or visual_genome.sibling_image_data(path) or ""
            if opts.image_data and not os.path.isfile(opts.image_data):
                raise MalformedInputError(f"--image-data {opts.image_data}: no such file")
            item.detail = (f"image sizes from {item.sizes_path}" if item.sizes_path else
                           "no image_data.json: image sizes unknown")
        files.append(item)
    return files


def read(item: InputFile, opts, class_map: dict | None = None, captions: dict | None = None):
    """Records of one input, in a fixed order. ``captions``: ``--captions`` already loaded
    (``coco.first_captions``), so a run over many regions files parses it once."""
    fmt, path = item.format, item.path

    def parsed():
        obj = item.parsed if item.parsed is not None else load_json(path)
        item.parsed = None                     # free it once read
        return obj

    if opts.kind == "pairs":
        if fmt == "coco-captions":
            return coco.read_captions(path, parsed(), opts)
        if fmt == "karpathy":
            return karpathy.read_karpathy(path, parsed(), opts)
        if fmt in ("csv", "tsv"):
            return tabular.read_table(path, opts, "," if fmt == "csv" else "\t")
        if fmt == "jsonl":
            return xfm_pairs.read_jsonl(path, opts)
        if fmt == "json-list":
            return xfm_pairs.read_json_list(path, parsed(), opts)
    if opts.kind == "regions":
        if fmt in ("vg-objects", "vg-regions"):
            sizes = (visual_genome.read_image_sizes(item.sizes_path) if item.sizes_path
                     else None)
            reader = (visual_genome.read_objects if fmt == "vg-objects"
                      else visual_genome.read_regions)
            records = reader(path, parsed(), opts, sizes)
        elif fmt == "coco-instances":
            records = coco.read_instances(path, parsed(), opts)
        elif fmt == "refcoco":
            if path.lower().endswith(JSON_EXT):
                records = refcoco.read_json_list(path, parsed(), opts)
            else:
                records = refcoco.read_jsonl(path, opts)
        else:
            raise MalformedInputError(f"{path}: format {fmt} is not a regions format")
        if opts.captions:
            if captions is None:
                captions = coco.first_captions(opts.captions)
            for rec in records:
                rec.caption = captions.get(rec.image_id)
        return records
    if opts.kind == "text":
        if fmt == "txt":
            return text.read_txt(path, opts, item.doc_sep)
        if fmt == "jsonl":
            return text.read_jsonl(path, opts)
    if opts.kind == "images" and fmt == "class-folders":
        return class_folders.read_class_folders(path, opts, class_map)
    raise MalformedInputError(f"{path}: format {fmt} is not a {opts.kind} format")


def fingerprint(files: list[InputFile]) -> str:
    """sha256 over each input's format and contents, and the image-size file it uses (folders:
    the listing with file sizes; image files referenced by annotations are not hashed: that would
    read the whole corpus)."""
    h = hashlib.sha256()
    for item in files:
        h.update(f"{item.format}\0{item.detail}\0".encode())
        for side in ([item.sizes_path] if item.sizes_path else []):
            with open(side, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        if os.path.isdir(item.path):
            for dirpath, dirs, names in os.walk(item.path):
                dirs.sort()
                for n in sorted(names):
                    p = os.path.join(dirpath, n)
                    h.update(f"{os.path.relpath(p, item.path)}\0{os.path.getsize(p)}\0".encode())
        else:
            with open(item.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(b"\1")
    return h.hexdigest()
