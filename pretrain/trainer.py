"""The pretraining loop: every rank runs the same plan; rank 0 reports.

One step = the groups of ``plan_for_step`` in order; one group = ``grad_accum`` micro-steps, each
running every stream of the group (fixed order) through the engine, one backward of the summed
weighted loss, and ``engine.step()`` (DeepSpeed makes the optimizer step at the accumulation
boundary). After each step: temperature clamp, logging, a collective check for SIGTERM/SIGUSR1
(so all ranks agree to save at the same step) and periodic checkpoints.

The lr schedule runs over ``cfg.steps`` (the schedule length, stored in every checkpoint: a
resume that asks for another length stops unless ``optim.reschedule``); ``cfg.stop_at`` ends
this invocation earlier without changing the schedule.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from xfm.config import save_config
from xfm.pretrain.config import STREAMS, PretrainConfig
from xfm.runtime import checkpointing
from xfm.runtime.dist import DistInfo, init_distributed
from xfm.runtime.engine import (PartTracker, build_model, clamp_partition_, clear_grad_partitions, deepspeed_config,
                                initialize, load_state_from_rank0, partition_report, read_parameter)
from xfm.runtime.optim import set_lr
from xfm.runtime.process import (PRECISION_DTYPES, StopRequest, seed_everything, set_deterministic,
                                 set_encoder_checkpointing, to_device)
from xfm.pretrain.metrics import (IntervalStats, MetricsWriter, batch_size, batch_tokens, memory_mb,
                                  require_tensorboard)
from xfm.pretrain.plan import plan_for_step, step_seed
from xfm.pretrain.wrapper import PretrainWrapper

TEMP_PARAM = "heads.temp.temp"


def _default_model_factory(model_cfg):
    from xfm.model import XFM

    return lambda init_weights=True: XFM(model_cfg, init_weights=init_weights)


def _default_streams_factory(cfg: PretrainConfig, info: DistInfo, streams: list[str]):
    from xfm.pretrain.data import StreamSet

    return StreamSet(cfg.data, rank=info.rank, world_size=info.world_size, seed=cfg.seed, streams=streams)


def _init_from(model, model_cfg, paths: list[str], rank: int) -> None:
    """Initialise the (partitioned) model from checkpoints (a RoBERTa dir, a BEiT-v2 file, an
    X-FM dir or ``.th``; several are applied in order): rank 0 fills one full host copy with
    ``xfm.checkpoint.load_into``; ``load_state_from_rank0`` writes it into the partitions."""
    state = None
    if rank == 0:
        from xfm.checkpoint import load_into
        from xfm.model import XFM

        host = XFM(model_cfg)
        for path in paths:
            load_into(host, path)
        state = host.state_dict()
        del host
    missing = load_state_from_rank0(model, state, rank)
    if missing:
        raise ValueError(f"model.init_from {paths}: {len(missing)} key(s) missing, e.g. {missing[:5]}")


def _next_batch(streams, name: str) -> dict:
    return streams.next(name) if hasattr(streams, "next") else next(streams[name])


@dataclass
class Run:
    """Everything a started run holds (what ``train`` loops over; also used by tests/tools)."""

    cfg: PretrainConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    ckpt_dir: Path
    model_cfg: object
    model: torch.nn.Module
    engine: object
    streams: object
    step: int
    temp_param: Optional[torch.nn.Parameter]


def schedule_of(cfg: PretrainConfig) -> dict:
    """What a checkpoint records of the lr schedule (``set_lr`` depends on the step and this)."""
    return {"total_steps": cfg.steps}


def setup_run(cfg: PretrainConfig, resume: bool = False, *,
              model_factory: Optional[Callable] = None,
              streams_factory: Optional[Callable] = None,
              stream_losses: Optional[dict] = None,
              write_config: bool = True) -> Run:
    """Process group, model under zero.Init, engine, streams; restores the latest checkpoint
    when ``resume``. Collective: every rank calls it."""
    if cfg.logging.tensorboard:
        require_tensorboard()  # every rank, before the process group: fail at once, not in a collective
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.out) / "checkpoints"
    if resume:  # every rank reads the same file, before anything is built: all stop together
        checkpointing.check_schedule(checkpointing.read_schedule(ckpt_dir), schedule_of(cfg),
                                     allow_change=cfg.optim.reschedule, override="optim.reschedule=true",
                                     where=str(ckpt_dir))
    set_deterministic(cfg.deterministic)
    info = init_distributed(cfg.engine.backend, cfg.engine.dist_timeout_s)
    rank, world = info.rank, info.world_size
    from deepspeed.accelerator import get_accelerator

    device = torch.device(get_accelerator().device_name(info.local_rank)
                          if get_accelerator().device_name() != "cpu" else "cpu")
    run_dir = Path(cfg.out)
    stream_names = cfg.streams.streams
    missing_data = [s for s in stream_names if cfg.data.stream(s) is None]
    if missing_data:
        raise ValueError(f"streams.step_groups names {missing_data}, but data.{missing_data[0]} is not configured")

    model_cfg = cfg.model.build()
    if rank == 0 and write_config:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        save_config(model_cfg, run_dir / "model_config.yaml")
    ds_config = deepspeed_config(cfg.engine, world)

    # identical init on every rank (zero.Init also broadcasts from rank 0), then per-rank seeds
    seed_everything(cfg.seed)
    # the factory takes ``init_weights``: under ZeRO-3 the engine initialises the partitioned model
    factory = model_factory(model_cfg) if model_factory else _default_model_factory(model_cfg)
    model = build_model(factory, ds_config, cfg.engine.zero_stage)
    set_encoder_checkpointing(model, cfg.engine.activation_checkpointing)
    if cfg.model.init_from and not resume:
        _init_from(model, model_cfg, cfg.model.init_from, rank)
    seed_everything(cfg.seed + 1000003 * rank)
    wrapper = PretrainWrapper(model, cfg.streams.loss_weights, stream_losses)
    engine, _ = initialize(wrapper, model, cfg.optim, ds_config)
    temp_param = dict(model.named_parameters()).get(TEMP_PARAM)

    streams = (streams_factory or _default_streams_factory)(cfg, info, stream_names)
    step = 0
    if resume:
        if checkpointing.read_latest(ckpt_dir) is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        step, streams_state = checkpointing.load(engine, ckpt_dir)
        streams.load_state_dict(streams_state)
    return Run(cfg, info, device, run_dir, ckpt_dir, model_cfg, model, engine, streams, step, temp_param)


def train(cfg: PretrainConfig, resume: bool = False, *,
          model_factory: Optional[Callable] = None,
          streams_factory: Optional[Callable] = None,
          stream_losses: Optional[dict] = None) -> dict:
    """Run (or resume) a pretraining run; returns a summary dict (rank-local)."""
    run = setup_run(cfg, resume, model_factory=model_factory, streams_factory=streams_factory,
                    stream_losses=stream_losses)
    info, device, run_dir, ckpt_dir = run.info, run.device, run.run_dir, run.ckpt_dir
    model_cfg, model, engine, streams, step = run.model_cfg, run.model, run.engine, run.streams, run.step
    temp_param = run.temp_param
    rank, world = info.rank, info.world_size
    end = cfg.steps if cfg.stop_at is None else min(cfg.stop_at, cfg.steps)  # this invocation's last step

    report = partition_report(model)
    (run_dir / "partitions").mkdir(parents=True, exist_ok=True) if rank == 0 else None
    if dist.is_initialized():
        dist.barrier()
    (run_dir / "partitions" / f"rank{rank:05d}.json").write_text(json.dumps(
        {"rank": rank, "world_size": world, "zero_stage": cfg.engine.zero_stage,
         "total": report.total_params, "local": report.local_params, "params": report.per_param}))
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard) if rank == 0 else None
    if rank == 0:
        start = (f"xfm-pretrain: world size {world} ({info.launcher}), ZeRO stage {cfg.engine.zero_stage}, "
                 f"{cfg.engine.precision}, parameters {report.total_params:,} "
                 f"({report.total_params / 1e6:.2f}M), per-rank shard {report.local_params:,} "
                 f"({report.local_params / max(1, report.total_params):.1%}), streams {cfg.streams.step_groups} "
                 f"mode {cfg.streams.mode}, steps {step}->{end} of {cfg.steps}, run dir {run_dir}")
        print(start, flush=True)
        writer.event(event="start", world_size=world, launcher=info.launcher,
                     zero_stage=cfg.engine.zero_stage, precision=cfg.engine.precision,
                     params=report.total_params, local_params=report.local_params,
                     start_step=step, steps=cfg.steps, stop_at=cfg.stop_at, resumed=resume)

    input_dtype = PRECISION_DTYPES[cfg.engine.precision]
    plan_trace = None
    if cfg.logging.trace_plan:
        (run_dir / "plans").mkdir(parents=True, exist_ok=True)
        plan_trace = open(run_dir / "plans" / f"rank{rank:05d}.jsonl", "a", buffering=1)
    stop = StopRequest()
    stats = IntervalStats()
    tracker = PartTracker(model)
    num_patches = (model_cfg.vision.image_size // model_cfg.vision.patch_size) ** 2
    from xfm.objectives import LossContext

    bar = None
    if rank == 0 and cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", dynamic_ncols=True, file=sys.stderr)
    last_saved = step if resume else -1
    stopped_by = 0
    engine.train()
    while step < end:
        lr = set_lr(engine.optimizer, step, cfg.optim, cfg.steps)
        plan = plan_for_step(cfg.streams, cfg.seed, step)
        if plan_trace is not None:
            plan_trace.write(json.dumps({"step": step, "plan": plan}) + "\n")
        for group in plan:
            group_name = "+".join(group)
            tracker.reset()
            for micro in range(cfg.engine.grad_accum):
                total = None
                for stream in group:
                    t0 = time.perf_counter()
                    batch = _next_batch(streams, stream)
                    stats.data_wait += time.perf_counter() - t0
                    stats.samples[stream] += batch_size(stream, batch)
                    stats.tokens[stream] += batch_tokens(stream, batch, num_patches)
                    batch = to_device(batch, device, input_dtype)
                    if plan_trace is not None:  # what this rank is about to run (hang triage)
                        plan_trace.write(json.dumps({"step": step, "micro": micro, "stream": stream,
                                                     "rows": batch_size(stream, batch)}) + "\n")
                    gen = torch.Generator(device=device).manual_seed(
                        step_seed(cfg.seed, step * cfg.engine.grad_accum + micro, rank, STREAMS.index(stream)))
                    ctx = LossContext(group=None, world_size=world, rank=rank, generator=gen)
                    loss, parts = engine(stream, batch, ctx)
                    total = loss if total is None else total + loss
                    # detached tensors: read (one device sync) only when a log line is written
                    local = {f"loss/{stream}": loss.detach()}
                    local.update({f"loss/{stream}/{k}": v.detach() for k, v in parts.items()})
                    stats.add_losses({k: v / cfg.engine.grad_accum for k, v in local.items()})
                engine.backward(total)
                if cfg.streams.freeze_unused_parts:
                    set_lr(engine.optimizer, step, cfg.optim, cfg.steps, tracker.parts)
                engine.step()
            gn = engine.get_global_grad_norm()
            if gn is not None:
                stats.grad_norm[f"grad_norm/{group_name}"] = gn
            clear_grad_partitions(engine)  # else the next group re-applies this group's grads
        temp_value = None
        if temp_param is not None:  # every step, as the paper's in-place clamp; partition-local
            clamp_partition_(temp_param, model_cfg.temp_min, model_cfg.temp_max)  # (no sync)
        step += 1
        if temp_param is not None and (step % cfg.logging.every == 0 or step == end):
            temp_value = float(read_parameter(temp_param).reshape(-1)[0])  # for the log line only
        stats.end_step()
        if bar is not None:
            bar.update(1)

        if step % cfg.logging.every == 0 or step == end:
            _log(stats, writer, step, lr, temp_value, world, streams, rank, bar)

        # the stop request is a collective + host read: agree on it on logging steps only (a
        # SIGTERM / SIGUSR1 is then acted on within logging.every steps; SLURM warns 5 min ahead)
        signum = stop.agreed(device) if step % cfg.logging.every == 0 or step == end else 0
        save_now = signum or step == end or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0)
        if save_now and last_saved != step:
            tag = checkpointing.save(engine, ckpt_dir, step, streams.state_dict(),
                                     {"config": str(run_dir / "config.yaml")}, cfg.checkpoint.keep_last,
                                     schedule=schedule_of(cfg))
            last_saved = step
            if writer:
                writer.event(event="checkpoint", step=step, tag=tag, dir=str(ckpt_dir))
        if signum:
            stopped_by = signum
            if writer:
                writer.event(event="stopped", step=step, signal=signal.Signals(signum).name)
                print(f"xfm-pretrain: {signal.Signals(signum).name} received; saved step {step}, exiting",
                      flush=True)
            break
    if bar is not None:
        bar.close()
    if writer:
        if not stopped_by and step < cfg.steps:  # --stop-at: this invocation is done, the run is not
            writer.event(event="stopped", step=step, reason="stop_at", steps=cfg.steps)
            print(f"xfm-pretrain: stopped at step {step} of {cfg.steps} (--stop-at); continue with --resume",
                  flush=True)
        elif not stopped_by:
            writer.event(event="end", step=step)
        writer.close()
    tracker.remove()
    if plan_trace is not None:
        plan_trace.close()
    if hasattr(streams, "close"):
        streams.close()  # stop loader workers before the process group goes away
    return {"step": step, "stopped_by": stopped_by, "rank": rank, "world_size": world,
            "checkpoint_dir": str(ckpt_dir)}


def _log(stats: IntervalStats, writer, step, lr, temp, world, streams, rank, bar) -> None:
    """Collective (every rank calls): losses averaged over ranks, throughput summed."""
    elapsed = max(1e-9, time.perf_counter() - stats.t0)
    n = max(1, stats.steps)
    local = {"losses": stats.mean_losses(),
             "data_wait": stats.data_wait / n, "mem": memory_mb(),
             "samples": dict(stats.samples), "tokens": dict(stats.tokens),
             "counters": _numeric_counters(streams)}
    gathered = [local]
    if dist.is_initialized() and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
    if rank == 0:
        rec = {"step": step, "time": time.time(), "lr": lr, "step_time_s": elapsed / n,
               "data_wait_s": sum(g["data_wait"] for g in gathered) / len(gathered),
               "mem_mb": max(g["mem"] for g in gathered)}
        if temp is not None:
            rec["temp"] = temp
        keys = sorted({k for g in gathered for k in g["losses"]})
        for k in keys:
            vals = [g["losses"][k] for g in gathered if k in g["losses"]]
            rec[k] = sum(vals) / len(vals)
        for s in sorted({k for g in gathered for k in g["samples"]}):
            rec[f"samples_per_s/{s}"] = sum(g["samples"].get(s, 0) for g in gathered) / elapsed
            rec[f"tokens_per_s/{s}"] = sum(g["tokens"].get(s, 0) for g in gathered) / elapsed
        rec.update({k: float(v) for k, v in stats.grad_norm.items()})
        for k in sorted({k for g in gathered for k in g["counters"]}):
            rec[f"data/{k}"] = sum(g["counters"].get(k, 0) for g in gathered)
        writer.write(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
    stats.reset()


def _numeric_counters(streams) -> dict:
    """Loader counters (skipped samples, bad shards...) flattened to ``a/b`` numbers."""
    out = {}

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out[prefix] = obj

    if hasattr(streams, "counters"):
        walk("", streams.counters() or {})
    return out
