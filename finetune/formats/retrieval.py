"""Image-text retrieval sets (COCO, Flickr30k) in both public layouts.

- X-VLM/ALBEF JSON: train rows `{image, caption, image_id}` (one per caption); val/test rows
  `{image, caption: [..]}` (one per image). A JSON array, or JSON lines.
- Karpathy `dataset_coco.json` / `dataset_flickr30k.json` (see `karpathy.py`).

Both give the same records: training pairs whose `image_id` numbers the distinct images in
order of first appearance (as X-VLM does), and evaluation sets with the text<->image index maps
the recall metrics need. Captions are returned as written (no lower-casing or truncation: that
is the text pipeline's job)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .fields import get_id, get_str, get_str_list
from .files import as_paths, display, load_document, load_records, records_of
from .images import ImageRef, resolve
from .karpathy import TRAIN_SPLITS, is_karpathy, parse_karpathy, read_karpathy


@dataclass(frozen=True)
class RetrievalPair:
    image: ImageRef
    caption: str
    image_id: int                   # index of the distinct image, 0.. in order of appearance
    origin: str = field(default="", compare=False, repr=False)

    def image_refs(self):
        yield self.origin, "image", self.image


@dataclass(frozen=True)
class RetrievalEvalSet:
    images: list[ImageRef]
    texts: list[str]
    txt2img: list[int]              # text index -> image index
    img2txt: list[list[int]]        # image index -> its text indices
    origins: list[str] = field(default_factory=list, compare=False, repr=False)

    def image_refs(self):
        for origin, image in zip(self.origins, self.images):
            yield origin, "image", image


def number_images(rows) -> list[tuple]:
    ids: dict = {}
    return [(image, caption, ids.setdefault(key, len(ids)), origin) for image, caption, key, origin in rows]


def xvlm_train_rows(paths, image_root, records=None):
    """(image, caption, image key, origin) of X-VLM training rows, files concatenated in order
    (`records`: the already parsed records of the one file `paths`)."""
    for path in as_paths(paths):
        for loc, row in (records if records is not None else load_records(path)):
            key = get_id(row, loc, "image_id")
            loc = loc.with_key("image_id", key)
            image = resolve(image_root, get_str(row, loc, "image"))
            yield image, get_str(row, loc, "caption"), key, str(loc)


def karpathy_train_rows(images):
    for im in images:
        for caption in im.sentences:
            yield im.image, caption, im.image.path, str(im.loc)


def read_retrieval_train(paths, image_root=None) -> list[RetrievalPair]:
    """X-VLM/ALBEF training JSON (one file or several, concatenated)."""
    return [RetrievalPair(*r) for r in number_images(xvlm_train_rows(paths, image_root))]


def read_retrieval_eval(path, image_root=None, *, records=None) -> RetrievalEvalSet:
    """X-VLM/ALBEF val/test JSON: one row per image with its list of captions."""
    entries = []
    for loc, row in (records if records is not None else load_records(path)):
        entries.append((resolve(image_root, get_str(row, loc, "image")),
                        get_str_list(row, loc, "caption"), str(loc)))
    return _eval_set(entries)


def read_karpathy_retrieval_train(path, image_root=None, *, include_restval=True) -> list[RetrievalPair]:
    splits = TRAIN_SPLITS if include_restval else ("train",)
    return [RetrievalPair(*r) for r in number_images(karpathy_train_rows(read_karpathy(path, image_root, splits)))]


def read_karpathy_retrieval_eval(path, split, image_root=None) -> RetrievalEvalSet:
    if split not in ("val", "test"):
        raise ValueError(f"retrieval evaluation reads split 'val' or 'test', not {split!r}")
    return _karpathy_eval(read_karpathy(path, image_root, (split,)))


def _karpathy_eval(images) -> RetrievalEvalSet:
    for im in images:
        if not im.sentences:
            raise im.loc.error("sentences", "expected at least 1 sentence, got 0")
    return _eval_set([(im.image, im.sentences, str(im.loc)) for im in images])


def read_retrieval(path, split, image_root=None):
    """Either layout, told apart by content: a JSON object with `images` is a Karpathy file,
    anything else X-VLM JSON. `split` "train" -> list[RetrievalPair] (Karpathy: train +
    restval), "val"/"test" -> RetrievalEvalSet."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    obj = load_document(path)
    if is_karpathy(obj):
        if split == "train":
            return [RetrievalPair(*r) for r in number_images(
                karpathy_train_rows(parse_karpathy(obj, display(path), image_root, TRAIN_SPLITS)))]
        images = parse_karpathy(obj, display(path), image_root, (split,))
        return _karpathy_eval(images)
    records = records_of(obj, display(path)) if isinstance(obj, list) else None   # else: JSON lines
    if split == "train":
        return [RetrievalPair(*r) for r in number_images(xvlm_train_rows(path, image_root, records))]
    return read_retrieval_eval(path, image_root, records=records)


def _eval_set(entries) -> RetrievalEvalSet:
    images, texts, txt2img, img2txt, origins = [], [], [], [], []
    for i, (image, captions, origin) in enumerate(entries):
        images.append(image)
        origins.append(origin)
        img2txt.append(list(range(len(texts), len(texts) + len(captions))))
        texts.extend(captions)
        txt2img.extend([i] * len(captions))
    return RetrievalEvalSet(images, texts, txt2img, img2txt, origins)
