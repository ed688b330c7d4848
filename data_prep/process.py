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

from .box_frame import FrameError, choose_frame
from .boxes import BoxError, clip_box, parse_box, round_box
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


def process_regions(rec: Record, opts: ShardOptions) -> list:
    """One picture and its (phrase, box) items -> one sample. A bad item (empty phrase, invalid
    box, box with too little of it inside the picture) is rejected on its own (``level`` region);
    the picture is rejected only when no item survives, or when its boxes cannot be placed at all
    (``size_mismatch``, ``box_frame_ambiguous``)."""
    try:
        img, digest = _load_image(rec, opts)
    except ImageError as e:
        return [rec.reject(e.reason, str(e))]
    items = []                           # per region: (phrase, box or None, BoxError or None)
    for region in rec.regions:
        phrase = region.phrase.strip() if isinstance(region.phrase, str) else ""
        error = None if phrase else BoxError("empty_phrase", "region phrase is empty")
        try:
            box = parse_box(region.bbox)
        except BoxError as e:
            box, error = None, error or e
        items.append((phrase, box, error))
    try:
        # every well-formed box is evidence of the frame, even one whose phrase is empty
        choice = choose_frame(img, rec.declared_size, [b for _, b, _ in items if b is not None],
                              opts.box_frame, opts.min_box_inside)
    except FrameError as e:
        return [rec.reject(e.reason, str(e))]
    width, height = img.displayed_size
    out, regions = [], []
    clipped = 0
    for j, (region, (phrase, box, error)) in enumerate(zip(rec.regions, items)):
        if error is None:
            try:
                # clipped in the full-resolution displayed picture (resize scales afterwards)
                fitted, was_clipped = clip_box(img.displayed_box(box, choice.frame), width,
                                               height, opts.min_box_inside)
            except BoxError as e:
                error = e
        if error is not None:
            where = region.where or f"region {j}"
            out.append(Rejection(error.reason, rec.source, f"{rec.where} {where}", str(error),
                                 rec.image_id, rec.image_path, level="region"))
            continue
        clipped += was_clipped
        regions.append({"phrase": phrase, "bbox": round_box(img.scale_box(fitted))})
    if not regions:
        out.append(rec.reject("no_valid_regions", "no region of this image survived the checks"))
        return out
    caption = rec.caption.strip() if isinstance(rec.caption, str) and rec.caption.strip() else None
    meta = {"image_id": str(rec.image_id), "width": img.width, "height": img.height,
            "caption": caption, "regions": regions}
    out.append(Sample({"jpg": img.data, "json": _meta_json(meta)}, str(rec.image_id), digest,
                      img.passthrough, clipped, len(regions),
                      choice.frame if choice.rule else None, choice.rule))
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
