"""Options of a sharding run, shared by the CLI and the Python API ``shard(kind, inputs, out,
**options)``. Options that change the output bytes feed the run fingerprint (resume safety);
``workers``, ``progress`` and ``max_bad_fraction`` do not."""
from __future__ import annotations

import codecs
import re
from dataclasses import asdict, dataclass, fields

from .box_frame import CHOICES as FRAME_CHOICES
from .boxes import DEFAULT_MIN_INSIDE

KINDS = ("pairs", "regions", "text", "images")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value) -> int:
    """'1G', '500M', '64k', '1000' -> bytes (binary units)."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 1G, 500M, 64K or a byte count)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class ShardOptions:
    kind: str
    images: str | None = None            # image root for relative paths
    format: str | None = None            # None: guessed per input file
    workers: int = 1
    shard_samples: int = 10000
    shard_bytes: int = 1 << 30
    resize: int | None = None            # shorter side (shrink only)
    quality: int = 90
    resample: str = "area"               # area | bilinear | bicubic | lanczos
    max_bad_fraction: float = 0.1
    bad_check_after: int = 1000          # fraction is enforced once this many samples were seen
    dedup: bool = False
    overwrite: bool = False
    progress: bool = True
    # pairs (CSV/TSV) and text: how the input text files are encoded
    encoding: str = "utf-8"
    # pairs (CSV/TSV)
    image_column: str | None = None
    caption_column: str | None = None
    no_header: bool = False
    # pairs (Karpathy JSON)
    splits: str = "train,restval"
    # regions
    box_frame: str = "auto"              # auto | stored | displayed (see box_frame.py)
    min_box_inside: float = DEFAULT_MIN_INSIDE   # fraction of a box's area inside, to clip it
    image_data: str | None = None        # Visual Genome image_data.json (declared image sizes)
    captions: str | None = None          # COCO captions JSON giving each image's caption
    # text
    text_field: str = "text"
    doc_sep: str = "auto"                # auto | line | blank
    max_chars: int | None = 2000
    # images
    classes: str | None = None           # classes.json to use instead of sorted folder names
    shuffle_seed: int | None = 0         # None keeps class-sorted order

    OUTPUT_NEUTRAL = ("workers", "progress", "max_bad_fraction", "bad_check_after", "overwrite")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        self.shard_bytes = parse_size(self.shard_bytes)
        if self.shard_samples < 1:
            raise ValueError("--shard-samples must be >= 1")
        if self.shard_bytes < 10240:
            raise ValueError("--shard-bytes must be at least 10K (one tar record)")
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.resize is not None and self.resize < 1:
            raise ValueError("--resize must be >= 1")
        if not 1 <= self.quality <= 100:
            raise ValueError("--quality must be in 1..100")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError("--max-bad-fraction must be in [0, 1]")
        if self.resample not in ("area", "bilinear", "bicubic", "lanczos"):
            raise ValueError("--resample must be area, bilinear, bicubic or lanczos")
        if self.box_frame not in FRAME_CHOICES:
            raise ValueError(f"--box-frame must be one of {', '.join(FRAME_CHOICES)}, got "
                             f"{self.box_frame!r}")
        if not 0.0 < self.min_box_inside <= 1.0:
            raise ValueError(f"--min-box-inside must be in (0, 1], got {self.min_box_inside}")
        if self.doc_sep not in ("auto", "line", "blank"):
            raise ValueError("--doc-sep must be auto, line or blank")
        try:
            self.encoding = codecs.lookup(self.encoding).name
        except LookupError:
            raise ValueError(f"--encoding: unknown text encoding {self.encoding!r}") from None

    @classmethod
    def build(cls, kind: str, **options) -> "ShardOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown shard option(s): {', '.join(unknown)}")
        return cls(kind=kind, **options)

    def output_affecting(self) -> dict:
        """The options that can change the output of this kind (recorded in stats.json and
        hashed into the run fingerprint)."""
        foreign = {k for kind, names in KIND_OPTIONS.items() if kind != self.kind for k in names}
        foreign -= set(KIND_OPTIONS[self.kind])
        return {k: v for k, v in asdict(self).items()
                if k not in self.OUTPUT_NEUTRAL and k not in foreign}


# options that only mean something for one kind
KIND_OPTIONS = {
    "pairs": ("images", "resize", "quality", "resample", "dedup", "image_column", "caption_column",
              "no_header", "splits", "encoding"),
    "regions": ("images", "resize", "quality", "resample", "dedup", "box_frame", "min_box_inside",
                "image_data", "captions"),
    "text": ("text_field", "doc_sep", "max_chars", "encoding"),
    "images": ("resize", "quality", "resample", "dedup", "classes", "shuffle_seed"),
}
