"""``xfm-pretrain --config configs/pretrain/<name>.yaml [--set k=v ...]``.

Runs unchanged under ``deepspeed`` (which adds ``--local_rank``), ``torchrun``, SLURM ``srun``
(rank/world/master from SLURM variables) and plain ``python`` (one process); also as
``python -m xfm.pretrain``. Short flags are sugar for ``--set``: ``--steps N`` (the schedule
length), ``--stop-at STEP`` (end this invocation there), ``--out RUN_DIR``, ``--seed S``,
``--deterministic``; ``--resume`` continues from RUN_DIR's latest checkpoint. After a distributed run ``main`` ends the
process itself (``xfm.runtime.process.exit_without_teardown`` says why).
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xfm-pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="pretraining YAML (configs/pretrain/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--steps", type=int, help="total optimizer steps: the schedule length (= --set steps=N)")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="end this invocation after STEP (checkpoint saved, exit 0); the schedule "
                        "still runs to --steps, which a later --resume continues (= --set stop_at=STEP)")
    p.add_argument("--out", help="run directory: resolved config, metrics, checkpoints")
    p.add_argument("--resume", action="store_true", help="resume from RUN_DIR's latest checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-exact resume; slower on GPUs)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)  # added by the deepspeed launcher; LOCAL_RANK is used
    return p


def overrides_from_args(args) -> list[str]:
    ov = list(args.overrides)
    if args.steps is not None:
        ov.append(f"steps={args.steps}")
    if args.stop_at is not None:
        ov.append(f"stop_at={args.stop_at}")
    if args.out is not None:
        ov.append(f"out={args.out}")
    if args.seed is not None:
        ov.append(f"seed={args.seed}")
    if args.deterministic:
        ov.append("deterministic=true")
    return ov


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xfm.runtime.process import launcher_setup

    launcher_setup(args.local_rank)
    from xfm.config import ConfigError
    from xfm.pretrain.config import load_pretrain_config

    try:
        cfg = load_pretrain_config(args.config, overrides_from_args(args))
    except ConfigError as e:
        print(f"xfm-pretrain: config error: {e}", file=sys.stderr)
        return 2
    if cfg.logging.tensorboard:
        from xfm.runtime.metrics import require_tensorboard

        try:
            require_tensorboard()
        except RuntimeError as e:
            print(f"xfm-pretrain: {e}", file=sys.stderr)
            return 2
    from xfm.pretrain.trainer import train
    from xfm.runtime.checkpointing import ScheduleMismatch

    try:
        summary = train(cfg, resume=args.resume)
    except ScheduleMismatch as e:
        print(f"xfm-pretrain: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:  # found once the model exists, e.g. an lr_mult prefix naming nothing
        print(f"xfm-pretrain: config error: {e}", file=sys.stderr)
        return 2
    code = 0 if summary else 1
    from xfm.runtime.process import finish_distributed

    return finish_distributed(code)


if __name__ == "__main__":
    sys.exit(main())
