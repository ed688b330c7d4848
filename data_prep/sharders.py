"""``xfm-prep pairs|regions|text|images``: raw corpora -> webdataset shards.

Python API (what the synthetic world and the tests call)::

    from xfm.data_prep.sharders import shard
    stats = shard("pairs", ["annotations/captions_train2017.json"], "shards/pairs",
                  images="train2017", resize=384, workers=4)

``stats`` is the content of ``DIR/stats.json``. Bad items are skipped and listed; malformed input
files raise ``MalformedInputError``; too many bad items raise ``TooManyBadInputs``.
"""
from __future__ import annotations

import argparse
import sys

from .box_frame import CHOICES as FRAME_CHOICES
from .boxes import DEFAULT_MIN_INSIDE
from .formats import FORMATS
from .options import KINDS, ShardOptions, parse_size
from .pipeline import TooManyBadInputs, run
from .records import MalformedInputError
from .writer import OutputDirError

__all__ = ["shard", "add_parser", "MalformedInputError", "TooManyBadInputs", "OutputDirError"]


def shard(kind: str, inputs, out: str, **options) -> dict:
    """Shard ``inputs`` (paths: files or folders) of ``kind`` into ``out``; -> stats dict.
    ``options`` are the CLI flags with underscores (``images``, ``format``, ``workers``,
    ``shard_samples``, ``shard_bytes``, ``resize``, ``quality``, ``max_bad_fraction``, ``dedup``,
    ``overwrite``, ``progress``, ...; see ``ShardOptions``)."""
    opts = ShardOptions.build(kind, **options)
    return run(kind, inputs, out, opts)


HELP = {
    "pairs": "image-text pairs: COCO captions JSON, Karpathy JSON, CSV/TSV, X-FM JSON lines",
    "regions": "image + (phrase, box) items: Visual Genome, COCO instances, RefCOCO-style JSONL",
    "text": "text documents: .txt (per line or blank-line separated), JSON lines",
    "images": "image classification: ImageNet-style class folders",
}


def _common(p: argparse.ArgumentParser, kind: str):
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="annotation/CSV/JSONL/text files, or a folder of them" if kind != "images"
                   else "class-folder root(s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the shards")
    p.add_argument("--images", metavar="DIR", help="image root for relative image paths "
                   "(default: the annotation file's folder)")
    p.add_argument("--format", choices=FORMATS[kind],
                   help="input format (guessed per file when omitted; the guess is printed)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (output is "
                   "byte-identical for any number)")
    p.add_argument("--shard-samples", type=int, default=10000, help="max samples per shard")
    p.add_argument("--shard-bytes", type=parse_size, default="1G",
                   help="max bytes per shard, e.g. 1G, 500M (a single bigger sample gets its own "
                   "shard)")
    p.add_argument("--max-bad-fraction", type=float, default=0.1,
                   help="abort when more than this fraction of the samples (or, for regions, of "
                   "the (phrase, box) items) is rejected")
    p.add_argument("--bad-check-after", type=int, default=1000,
                   help="enforce --max-bad-fraction once this many samples were seen (and at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output of a different run in --out (otherwise an error)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    if kind != "text":
        p.add_argument("--resize", type=int, metavar="N",
                       help="shrink the shorter image side to N pixels and re-encode (never "
                       "enlarges)")
        p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
        p.add_argument("--resample", choices=("area", "bilinear", "bicubic", "lanczos"),
                       default="area", help="downscale filter (area = pixel averaging, like "
                       "OpenCV INTER_AREA)")
        p.add_argument("--dedup", action="store_true",
                       help="drop images whose bytes equal an earlier image's (sha256)")


def add_parser(subparsers):
    for kind in KINDS:
        p = subparsers.add_parser(kind, help=HELP[kind], description=HELP[kind])
        _common(p, kind)
        if kind == "pairs":
            p.add_argument("--image-column", help="CSV/TSV image column (name, or index with "
                           "--no-header)")
            p.add_argument("--caption-column", help="CSV/TSV caption column")
            p.add_argument("--no-header", action="store_true", help="CSV/TSV has no header row")
            p.add_argument("--encoding", default="utf-8",
                           help="text encoding of CSV/TSV files (e.g. latin-1)")
            p.add_argument("--splits", default="train,restval",
                           help="Karpathy splits to use, comma separated, or 'all'")
        if kind == "regions":
            p.add_argument("--box-frame", choices=FRAME_CHOICES, default="auto",
                           help="for EXIF-rotated photos: boxes refer to the file's stored pixel "
                           "array (stored) or to the upright picture a viewer shows (displayed); "
                           "auto: per image, from the image size the annotation declares, else "
                           "from the frame the boxes fit; an image where neither tells is "
                           "rejected (box_frame_ambiguous)")
            p.add_argument("--min-box-inside", type=float, default=DEFAULT_MIN_INSIDE,
                           metavar="FRACTION",
                           help="a box overshooting the picture is clipped to it when at least "
                           "this fraction of its area is inside, else rejected "
                           "(box_outside_image); 1 clips nothing")
            p.add_argument("--image-data", metavar="JSON",
                           help="Visual Genome image_data.json with each image's width/height "
                           "(default: image_data.json next to the VG input, when there)")
            p.add_argument("--captions", metavar="JSON",
                           help="COCO captions JSON: the first caption of the image with the same "
                           "image_id becomes the sample's caption (else null)")
        if kind == "text":
            p.add_argument("--text-field", default="text", help="JSON lines field with the text")
            p.add_argument("--doc-sep", choices=("auto", "line", "blank"), default="auto",
                           help=".txt documents: one per line, or separated by blank lines")
            p.add_argument("--encoding", default="utf-8",
                           help="text encoding of the input files (e.g. latin-1, cp1252); a "
                           "document that does not decode is rejected as bad_encoding")
            p.add_argument("--max-chars", type=int, default=2000,
                           help="split longer documents on sentence boundaries (0: never)")
        if kind == "images":
            p.add_argument("--classes", metavar="JSON", help="{class_name: index} to use instead "
                           "of sorted folder names")
            p.add_argument("--shuffle-seed", type=int, default=0,
                           help="fixed shuffle of the images across classes (-1: keep class order)")
        p.set_defaults(func=_main, kind=kind)


def _options_from_args(args) -> ShardOptions:
    values = {k: v for k, v in vars(args).items()
              if k not in ("func", "command", "kind", "input", "out")}
    if values.get("max_chars") == 0:
        values["max_chars"] = None
    if values.get("shuffle_seed") == -1:
        values["shuffle_seed"] = None
    return ShardOptions.build(args.kind, **values)


def _main(args) -> int:
    try:
        opts = _options_from_args(args)
        run(args.kind, args.input, args.out, opts)
    except (MalformedInputError, TooManyBadInputs, OutputDirError, ValueError) as e:
        print(f"xfm-prep {args.kind}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nxfm-prep {args.kind}: interrupted; the completed shards in {args.out} are kept: "
              f"run the same command again to resume after them", file=sys.stderr)
        return 130
    return 0
