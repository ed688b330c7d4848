"""The three things that flow through a sharding run: a ``Record`` (one unit of input as a reader
found it), a ``Sample`` (what goes into a shard) and a ``Rejection`` (bad input, kept with the
reason and place so nothing is dropped silently). Plain dataclasses: they cross process
boundaries (pickled) when ``--workers`` > 1."""
from __future__ import annotations

from dataclasses import dataclass, field


class MalformedInputError(ValueError):
    """The input file itself is broken (bad JSON, missing column/field): stop at once.

    The message always names the file, the line or record, and the field."""


@dataclass
class Rejection:
    reason: str                  # short stable token, counted in stats.json ("missing_file", ...)
    source: str                  # input file the item came from
    where: str                   # "line 12", "images[3]", "image_id 42" ...
    detail: str = ""
    image_id: str | None = None
    image: str | None = None     # image path, when there is one
    level: str = "sample"        # "sample" or "region" (a region item dropped from a kept sample)

    def to_dict(self) -> dict:
        d = {"reason": self.reason, "level": self.level, "source": self.source, "where": self.where}
        if self.image_id is not None:
            d["image_id"] = self.image_id
        if self.image is not None:
            d["image"] = self.image
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class Region:
    phrase: str
    bbox: object                 # raw value from the annotation; validated by the worker
    where: str = ""


@dataclass
class Record:
    """One unit of work. Which fields are set depends on the kind:
    pairs: image + captions (one sample per caption, image decoded once);
    regions: image + regions (+ caption); images: image + label; text: text."""
    source: str
    where: str
    image_id: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = None
    captions: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    caption: str | None = None
    declared_size: tuple | None = None   # (width, height) the annotation says the image has
    label: int | None = None
    text: str | None = None
    rejection: Rejection | None = None   # reader already knows this item is bad

    def reject(self, reason: str, detail: str = "", level: str = "sample") -> Rejection:
        return Rejection(reason=reason, source=self.source, where=self.where, detail=detail,
                         image_id=self.image_id, image=self.image_path, level=level)


@dataclass
class Sample:
    """Members by extension (``jpg``, ``txt``, ``json``, ``cls``); the key is given at write time
    from the running sample index so it is unique and deterministic."""
    members: dict
    image_id: str | None = None
    image_hash: str | None = None        # sha256 of the original image bytes (for --dedup)
    passthrough: bool | None = None      # image bytes kept as they were (no re-encode)
    clipped_boxes: int = 0               # regions: boxes clipped to the image border
    regions_kept: int = 0                # regions: (phrase, box) items in this sample
    # regions, EXIF-rotated pictures only: the frame the boxes were in ("stored": they were
    # rotated with the picture; "displayed": already upright) and what decided it
    box_frame: str | None = None
    box_frame_rule: str | None = None
