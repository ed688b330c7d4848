"""``xfm-prep``: one command, one subcommand per job. Each subcommand lives in its own module
exposing ``add_parser(subparsers)`` (which sets ``func``) so the modules stay independent."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module (relative to xfm.data_prep) that registers it
SUBCOMMANDS = {
    "pairs": "sharders",
    "regions": "sharders",
    "text": "sharders",
    "images": "sharders",
    "verify": "verify",
    "synth": "synth.cli",
    "tokenizer": "tokenizer",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All subcommands, or only ``only``'s module (so one broken part cannot take the others down)."""
    parser = argparse.ArgumentParser(
        prog="xfm-prep",
        description="Prepare X-FM data: shard corpora into webdataset tars (pairs, regions, text, "
        "images), verify shards, make the synthetic world, train a tokenizer.")
    sub = parser.add_subparsers(dest="command", required=True)
    registered = set()
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        if module in registered:
            continue
        mod = importlib.import_module(f"xfm.data_prep.{module}")
        mod.add_parser(sub)
        registered.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(only).parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
