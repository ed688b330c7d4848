"""``xfm-finetune --task NAME --config configs/finetune/NAME.yaml --checkpoint CKPT``.

Runs unchanged as one plain process, under ``torchrun``, ``deepspeed`` and SLURM ``srun``
(rank / world / master from the launcher's variables, as pretraining). Short flags are sugar for
``--set``: ``--out RUN_DIR``, ``--seed S``, ``--deterministic``, ``--checkpoint CKPT``.
``--eval-only`` evaluates without training (zero-shot retrieval from a pretrained checkpoint,
re-scoring a ``best/``); ``--resume`` continues RUN_DIR's latest checkpoint.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xfm-finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="registered task name (--task list shows them)")
    p.add_argument("--config", help="task YAML (configs/finetune/<task>.yaml)")
    p.add_argument("--checkpoint", help="official .th, xfm-export dir, pretraining run dir, best/ dir, "
                                        "HF BERT/RoBERTa dir or timm BEiT-v2 state dict")
    p.add_argument("--out", help="run directory (config, metrics.jsonl, eval.json, best/, checkpoints/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-5 (repeatable)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint, no training")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR's latest checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def overrides_from_args(args) -> list[str]:
    ov = list(args.overrides)
    for flag, key in (("out", "out"), ("seed", "seed"), ("checkpoint", "checkpoint_path")):
        value = getattr(args, flag)
        if value is not None:
            ov.append(f"{key}={value}")
    if args.deterministic:
        ov.append("deterministic=true")
    return ov


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xfm.runtime.process import launcher_setup

    launcher_setup(args.local_rank)
    from xfm.config import ConfigError
    from xfm.finetune.config import load_finetune_config
    from xfm.finetune.registry import get_task, task_names

    if args.task == "list":
        print("\n".join(task_names()))
        return 0
    try:
        task_cls = get_task(args.task)
    except KeyError as e:
        print(f"xfm-finetune: {e.args[0]}", file=sys.stderr)
        return 2
    if not args.config:
        print(f"xfm-finetune: --config is required (configs/finetune/{args.task}.yaml)", file=sys.stderr)
        return 2
    try:
        cfg, task_cfg = load_finetune_config(args.config, task_cls.Config, overrides_from_args(args))
    except ConfigError as e:
        print(f"xfm-finetune: config error: {e}", file=sys.stderr)
        return 2
    from xfm.finetune.loop import run
    from xfm.finetune.formats.errors import DataFormatError
    from xfm.checkpoint import CheckpointError

    try:
        run(cfg, task_cls, task_cfg, resume=args.resume, eval_only=args.eval_only)
        code = 0
    except (DataFormatError, CheckpointError, FileNotFoundError) as e:
        print(f"xfm-finetune: {e}", file=sys.stderr)
        code = 1
    except ConfigError as e:   # what only the built model can tell (e.g. a prefix naming none of its parameters)
        print(f"xfm-finetune: config error: {e}", file=sys.stderr)
        code = 2
    from xfm.runtime.process import finish_distributed

    return finish_distributed(code)


if __name__ == "__main__":
    sys.exit(main())
