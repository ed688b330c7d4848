"""Image captioning sets (COCO Karpathy split) in both public layouts.

- Karpathy `dataset_coco.json` (see `karpathy.py`): training pairs from train + restval, one
  per sentence; evaluation images with their reference sentences; image ids are the `cocoid`s
  (`imgid` for files without one), which COCO results files use.
- X-VLM caption JSON: training rows `{image, caption, image_id}` (as for retrieval); evaluation
  rows `{image, image_id?, caption?}` where `caption` (when present) is the list of references
  (the COCO-Karpathy test layout). Without `image_id`, the id is the number that ends the file
  name (`COCO_val2014_000000391895.jpg` -> 391895), as X-VLM derives it."""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from .fields import get_id, get_str, get_str_list
from .files import as_paths, load_records
from .images import ImageRef, resolve
from .karpathy import TRAIN_SPLITS, read_karpathy
from .retrieval import RetrievalPair, number_images, karpathy_train_rows, xvlm_train_rows


# a training caption is the same record as a retrieval training pair: picture, caption, image index
CaptionPair = RetrievalPair


@dataclass(frozen=True)
class CaptionImage:
    image: ImageRef
    image_id: int | str             # the dataset's id (COCO id), what results files carry
    references: list[str]           # [] when the file holds none
    origin: str = field(default="", compare=False, repr=False)

    def image_refs(self):
        yield self.origin, "image", self.image


def read_caption_train(paths, image_root=None) -> list[CaptionPair]:
    return [CaptionPair(*r) for r in number_images(xvlm_train_rows(paths, image_root))]


def read_karpathy_caption_train(path, image_root=None, *, include_restval=True) -> list[CaptionPair]:
    splits = TRAIN_SPLITS if include_restval else ("train",)
    return [CaptionPair(*r) for r in number_images(karpathy_train_rows(read_karpathy(path, image_root, splits)))]


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def read_caption_eval(paths, image_root=None) -> list[CaptionImage]:
    out = []
    for path in as_paths(paths):
        for loc, row in load_records(path):
            rel = get_str(row, loc, "image")
            image_id = get_id(row, loc, "image_id", optional=True)
            if image_id is None:
                m = _TRAILING_NUMBER.search(posixpath.splitext(posixpath.basename(rel))[0])
                if m is None:
                    raise loc.error("image_id", f"missing, and the file name {rel!r} does not end in a number")
                image_id = int(m.group(1))
            loc = loc.with_key("image_id", image_id)
            refs = get_str_list(row, loc, "caption", optional=True, min_len=0) or []
            out.append(CaptionImage(resolve(image_root, rel), image_id, refs, str(loc)))
    return out


def read_karpathy_caption_eval(path, split, image_root=None) -> list[CaptionImage]:
    if split not in ("val", "test"):
        raise ValueError(f"caption evaluation reads split 'val' or 'test', not {split!r}")
    out = []
    for im in read_karpathy(path, image_root, (split,)):
        if im.image_id is None:
            raise im.loc.error("cocoid", "missing (and no 'imgid'): evaluation images need an id")
        out.append(CaptionImage(im.image, im.image_id, im.sentences, str(im.loc)))
    return out
