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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xfm-prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    registered = set()
    for name, module in SUBCOMMANDS.items():
        if module in registered:
            continue
        mod = importlib.import_module(f"xfm.data_prep.{module}")
        mod.add_parser(sub)
        registered.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
