"""Worker side: one ``Record`` -> its outputs (``Sample``s and ``Rejection``s, in a fixed order).

Pure functions of (record, options): this is what makes ``--workers N`` give the same bytes as
``--workers 1``. Runs in worker processes, so everything here must be picklable and must not
touch shared state."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os

from .boxes import BoxError, fit_box, parse_box, round_box
from .images import ImageError, prepare_image
from .options import ShardOptions
from .records import Record, Rejection, Sample
from .textsplit import split_document


def _read_image(rec: Record):
    if isinstance(rec.image_bytes, str):          # X-FM "binary": base64 text
        try:
            return base64.b64decode(rec.image_bytes, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError("bad_base64", f"field 'binary' is not valid base64: {e}") from None
    if rec.image_bytes is not None:
        return rec.image_bytes
    path = rec.image_path
    if path is None:
        raise ImageError("missing_image_field", "record names no image")
    if "://" in path:
        raise ImageError("remote_url", f"{path} is a URL; download images first (e.g. img2dataset)")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("missing_file", f"no such file: {path}") from None
    except OSError as e:
        raise ImageError("unreadable_file", f"{path}: {e}") from None


def _load_image(rec: Record, opts: ShardOptions):
    data = _read_image(rec)
    digest = hashlib.sha256(data).hexdigest() if opts.dedup else None
    return prepare_image(data, opts.resize, opts.quality, opts.resample), digest


def _meta_json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _source_name(rec: Record) -> str:
    return os.path.basename(rec.source.rstrip("/")) or rec.source


def process_pairs(rec: Record, opts: ShardOptions) -> list:
    captions = [c if isinstance(c, str) else None for c in rec.captions]
    # empty captions are known before the image is read: reject them without the image cost
    valid = [i for i, c in enumerate(captions) if c is not None and c.strip()]
    out: list = []
    img = digest = None
    if valid:
        try:
            img, digest = _load_image(rec, opts)
        except ImageError as e:
            return [rec.reject(e.reason, str(e))]
    for i, cap in enumerate(captions):
        if i not in valid:
            bad = "caption is not a string" if cap is None else "caption is empty"
            out.append(Rejection("empty_caption" if cap is not None else "invalid_caption",
                                 rec.source, f"{rec.where} caption {i}", bad, rec.image_id,
                                 rec.image_path))
            continue
        meta = {"image_id": str(rec.image_id), "source": _source_name(rec),
                "width": img.width, "height": img.height}
        out.append(Sample({"jpg": img.data, "txt": cap.strip().encode("utf-8"),
                           "json": _meta_json(meta)}, str(rec.image_id), digest, img.passthrough))
    return out


def box_frame(rec: Record, img, requested: str) -> str:
    """Which pixel frame the annotation's boxes use for an EXIF-rotated image. Tools differ
    (some annotate the stored pixel array, some the upright picture); the image size the
    annotation declares tells them apart when the rotation swaps width and height."""
    if requested != "auto":
        return requested
    if rec.declared_size and img.orientation in (5, 6, 7, 8):
        if tuple(rec.declared_size) == img.oriented_size:
            return "oriented"
    return "raw"


def _size_matches(rec: Record, img) -> bool:
    if not rec.declared_size:
        return True
    declared = tuple(rec.declared_size)
    return declared in ((img.raw_width, img.raw_height), img.oriented_size)


def process_regions(rec: Record, opts: ShardOptions) -> list:
    try:
        img, digest = _load_image(rec, opts)
    except ImageError as e:
        return [rec.reject(e.reason, str(e))]
    if not _size_matches(rec, img):
        # boxes made for another picture (or another resolution) would land in the wrong place
        return [rec.reject("size_mismatch", f"annotation says {rec.declared_size[0]}x"
                           f"{rec.declared_size[1]}, image is {img.raw_width}x{img.raw_height}")]
    frame = box_frame(rec, img, opts.box_frame)
    ow, oh = img.oriented_size
    out, regions = [], []
    clipped = 0
    for j, region in enumerate(rec.regions):
        where = region.where or f"region {j}"
        phrase = region.phrase.strip() if isinstance(region.phrase, str) else ""
        try:
            if not phrase:
                raise BoxError("empty_phrase", "region phrase is empty")
            box = parse_box(region.bbox)
            # check in the upright, full-size frame, where the tolerance means input pixels
            upright = img.map_box(box, frame)
            sx, sy = img.width / ow, img.height / oh
            full = [upright[0] / sx, upright[1] / sy, upright[2] / sx, upright[3] / sy]
            fitted, was_clipped = fit_box(full, ow, oh, opts.box_tolerance)
        except BoxError as e:
            out.append(Rejection(e.reason, rec.source, f"{rec.where} {where}", str(e),
                                 rec.image_id, rec.image_path, level="region"))
            continue
        clipped += was_clipped
        stored = [fitted[0] * sx, fitted[1] * sy, fitted[2] * sx, fitted[3] * sy]
        regions.append({"phrase": phrase, "bbox": round_box(stored)})
    if not regions:
        out.append(rec.reject("no_valid_regions", "no region of this image survived the checks"))
        return out
    caption = rec.caption.strip() if isinstance(rec.caption, str) and rec.caption.strip() else None
    meta = {"image_id": str(rec.image_id), "width": img.width, "height": img.height,
            "caption": caption, "regions": regions}
    out.append(Sample({"jpg": img.data, "json": _meta_json(meta)}, str(rec.image_id), digest,
                      img.passthrough, clipped, len(regions)))
    return out


def process_text(rec: Record, opts: ShardOptions) -> list:
    text = rec.text if isinstance(rec.text, str) else ""
    pieces = split_document(text, opts.max_chars)
    if not pieces:
        return [rec.reject("empty_document", "document is empty")]
    return [Sample({"txt": p.encode("utf-8")}) for p in pieces]


def process_images(rec: Record, opts: ShardOptions) -> list:
    try:
        img, digest = _load_image(rec, opts)
    except ImageError as e:
        return [rec.reject(e.reason, str(e))]
    return [Sample({"jpg": img.data, "cls": str(int(rec.label)).encode("ascii")},
                   str(rec.image_id), digest, img.passthrough)]


PROCESSORS = {"pairs": process_pairs, "regions": process_regions, "text": process_text,
              "images": process_images}


def process_record(rec: Record, opts: ShardOptions) -> list:
    if rec.rejection is not None:
        return [rec.rejection]
    try:
        return PROCESSORS[opts.kind](rec, opts)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:   # noqa: BLE001
        # Last line of defence for inputs no check above foresaw (a codec bug on one odd file):
        # one item must not kill a run of millions. It is counted and listed like any bad item,
        # and --max-bad-fraction stops the run if it is systematic.
        return [rec.reject("processing_error", f"{type(e).__name__}: {e}")]


def process_chunk(opts: ShardOptions, records: list) -> list:
    return [process_record(r, opts) for r in records]
