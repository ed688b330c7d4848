"""Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``):
``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}], "cocoid"|"imgid"}]}``.
Only the splits in ``--splits`` are used (default ``train,restval``: pretraining must not see the
val/test images; ``all`` takes everything)."""
from __future__ import annotations

import os

from ..records import Record
from .common import need, need_list, resolve_image


def is_karpathy(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("images"), list) and bool(obj["images"])
            and isinstance(obj["images"][0], dict) and "sentences" in obj["images"][0])


def read_karpathy(path: str, obj, opts):
    wanted = None if opts.splits == "all" else {s.strip() for s in opts.splits.split(",")}
    out = []
    for i, im in enumerate(need_list(obj, "images", path, "top level")):
        where = f"images[{i}]"
        split = need(im, "split", path, where, str)
        if wanted is not None and split not in wanted:
            continue
        filename = need(im, "filename", path, where, str)
        rel = os.path.join(im["filepath"], filename) if im.get("filepath") else filename
        captions = []
        for j, sent in enumerate(need_list(im, "sentences", path, where)):
            if isinstance(sent, dict) and "raw" in sent:
                captions.append(sent["raw"])
            elif isinstance(sent, dict) and "tokens" in sent:
                captions.append(" ".join(sent["tokens"]))
            else:
                need(sent, "raw", path, f"{where}.sentences[{j}]")
        image_id = im.get("cocoid", im.get("imgid", filename))
        out.append(Record(path, f"{where} ({filename})", image_id=str(image_id),
                          image_path=resolve_image(rel, opts.images, path), captions=captions))
    return out
