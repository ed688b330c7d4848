"""`xfm-prep synth`: write a synthetic world (and, with --prepare, its shards and tokenizer)."""
from __future__ import annotations

import argparse
import json

from .build import DEFAULT_IMAGE_SIZE, SIZES


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth", help="write the synthetic world (coloured shapes + exact language)",
        description="Write images of coloured shapes with captions, region phrases, VQA, NLVR2, "
                    "grounding, GLUE-style and class-folder sets in their public formats, plus "
                    "DIR/world.json naming every file and the xfm-prep commands that shard it.")
    p.add_argument("--out", required=True, help="empty (or new) output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="test")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"side of the square images in pixels (default {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--prepare", action="store_true",
                   help="also run the world.json commands (shards + tokenizer) and verify "
                        "the shards")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .build import make_world, prepare_world

    if args.prepare:
        manifest = prepare_world(args.out, seed=args.seed, size=args.size,
                                 image_size=args.image_size, progress=True, verify=True)
    else:
        manifest = make_world(args.out, seed=args.seed, size=args.size,
                              image_size=args.image_size, progress=True)
    print(json.dumps({"out": args.out, "counts": manifest["counts"]}, indent=1))
    if not args.prepare:
        print("shard it with (from the world directory):")
        for cmd in manifest["commands"]:
            print("  " + cmd["command_line"])
    return 0
