"""The one epoch loop every task runs: engine, epochs, evaluation, best model, checkpoints.

One optimizer step = ``engine.grad_accum`` micro-batches (DeepSpeed steps the optimizer at the
accumulation boundary). Evaluation runs every ``train.eval_every`` steps (0: each epoch end)
on ``train.eval_split``; the best model by the task's main metric is written to
``RUN_DIR/best/``; at the end the best model is evaluated on ``train.test_split`` into
``RUN_DIR/eval.json``. Checkpoints (every ``checkpoint.every`` steps, at each epoch end, on
SIGTERM/SIGUSR1) hold the engine, every RNG, the epoch and the micro-batch reached in it and the
best-so-far, so ``--resume`` after ``kill -9`` continues the same epoch at the same example.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from xfm.config import save_config
from xfm.finetune.image_cache import decoded_image_cache
from xfm.finetune.model_io import (gather_full_state, is_task_dir, load_backbone, new_keys, read_task_file,
                                   save_task_model, task_state_from_dir)
from xfm.finetune.optim import finetune_param_groups
from xfm.finetune.sampling import EvalSampler, PAD_INDEX, SeededItems, TrainSampler, collate_with_index
from xfm.finetune.task import TaskContext
from xfm.runtime import checkpointing
from xfm.runtime.dist import init_distributed
from xfm.runtime.engine import build_model, deepspeed_config, initialize, load_state_from_rank0
from xfm.runtime.metrics import MetricsWriter, memory_mb
from xfm.runtime.optim import set_lr
from xfm.runtime.process import (PRECISION_DTYPES, StopRequest, seed_everything, set_deterministic,
                                 set_encoder_checkpointing, to_device)

BEST_DIR = "best"
EVAL_FILE = "eval.json"


class Runner:
    """What tasks see of the run during evaluation: the engine, ranks, loaders, gathers."""

    def __init__(self, cfg, task, engine, model, info, device, dtype, run_dir: Path):
        self.cfg, self.task, self.engine, self.model = cfg, task, engine, model
        self.rank, self.world = info.rank, info.world_size
        self.device, self.dtype, self.run_dir = device, dtype, run_dir
        self._datasets = {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def dataset(self, split: str, train: bool = False):
        key = (split, train)
        if key not in self._datasets:
            self._datasets[key] = self.task.dataset(split, train)
        return self._datasets[key]

    def context(self, step: int = 0, generator=None) -> TaskContext:
        return TaskContext(rank=self.rank, world_size=self.world, generator=generator, step=step)

    def to_device(self, batch: dict) -> dict:
        return to_device(batch, self.device, self.dtype, self.task.float_inputs)

    def eval_loader(self, split: str, dataset=None, collate=None, batch_size=None) -> DataLoader:
        """Every example once across ranks (padding slots have ``index`` -1)."""
        dataset = dataset if dataset is not None else self.dataset(split, False)
        items = SeededItems(dataset, self.cfg.seed)
        return DataLoader(items, batch_size=batch_size or self.cfg.train.eval_batch_size,
                          sampler=EvalSampler(len(dataset), self.rank, self.world),
                          num_workers=self.cfg.train.num_workers,
                          collate_fn=collate or collate_with_index(self.task, False),
                          generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def predict_split(self, task, split: str):
        """Run ``task.predict`` over a split -> (outputs in dataset order on rank 0, dataset)."""
        dataset = self.dataset(split, False)
        self.engine.eval()
        local: dict[str, list] = {}
        indices = []
        for batch in _progress(self.eval_loader(split), self.is_main and self.cfg.logging.progress,
                               f"eval {split}"):
            idx = batch["index"]
            out = self.engine("predict", self.to_device(batch), self.context())
            indices.append(idx)
            for k, v in out.items():
                local.setdefault(k, []).append(v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu())
        self.engine.train()
        local_cat = {k: torch.cat(v) for k, v in local.items()}
        local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
        gathered = self.gather_objects((local_idx, local_cat))
        if not self.is_main:
            return {}, dataset
        idx = torch.cat([g[0] for g in gathered])
        keep = idx != PAD_INDEX
        order = torch.argsort(idx[keep])
        outputs = {k: torch.cat([g[1][k] for g in gathered])[keep][order] for k in local_cat}
        if int(keep.sum()) != len(dataset) or not torch.equal(idx[keep][order], torch.arange(len(dataset))):
            raise RuntimeError(f"evaluation of {split}: saw {int(keep.sum())} examples for {len(dataset)}")
        return outputs, dataset

    def gather_objects(self, obj) -> list:
        if dist.is_initialized() and self.world > 1:
            out = [None] * self.world
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def broadcast(self, obj):
        if dist.is_initialized() and self.world > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return obj


def _progress(iterable, show: bool, desc: str):
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, dynamic_ncols=True, file=sys.stderr, leave=False)


def _device(info):
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return torch.device(acc.device_name(info.local_rank) if acc.device_name() != "cpu" else "cpu")


def prepare(cfg, task_cls, task_cfg, *, resume: bool = False, eval_only: bool = False):
    """Process group, tokenizer, weights, task model (partitioned under ZeRO-3), engine."""
    from xfm.tokenizer import load_tokenizer

    set_deterministic(cfg.deterministic)
    info = init_distributed(cfg.engine.backend, cfg.engine.dist_timeout_s)
    device = _device(info)
    run_dir = Path(cfg.out)
    if cfg.checkpoint_path is None:
        raise ValueError("no --checkpoint given (an official .th, an xfm-export dir, a pretraining run dir, "
                         "a fine-tuned best/ dir, or for single-encoder tasks a HF / timm checkpoint); "
                         "--resume takes the same --checkpoint as the run it continues")
    tokenizer = load_tokenizer(cfg.tokenizer)

    # rank 0 reads the checkpoint into a host model; the engine's copy is filled from it
    report_lines, state, model_cfg = [], None, None
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    if ckpt is not None and is_task_dir(ckpt):
        meta = read_task_file(ckpt)
        if meta.get("task") != task_cls.name:
            raise ValueError(f"{ckpt} is a fine-tuned {meta.get('task')!r} model, not {task_cls.name!r}")
        from xfm.checkpoint.native import read_native_config

        model_cfg = read_native_config(ckpt)
        state = task_state_from_dir(ckpt) if info.rank == 0 else None
        report_lines.append(f"{ckpt}: fine-tuned {task_cls.name} model ({meta.get('step', '?')} steps), no new tensors")
    else:
        backbone = load_backbone(ckpt, cfg.model.num_heads, cfg.model.overrides)
        model_cfg = backbone.model.config
        if info.rank == 0:
            host_task = task_cls(cfg, task_cfg, model_cfg, tokenizer)
            seed_everything(cfg.seed)  # the new head's init: a function of --seed, whatever the launcher did
            host = host_task.build_model(backbone.model)
            state = host.state_dict()
            fresh = new_keys(host, task_cls.head_prefixes)
            report_lines.append(backbone.report_text)
            report_lines.append(f"task {task_cls.name}: {len(fresh)} new tensor(s), {task_cls.head_init}: "
                                + (", ".join(fresh) if fresh else "none"))
            del host
        del backbone
    task = task_cls(cfg, task_cfg, model_cfg, tokenizer)
    ds_config = deepspeed_config(cfg.engine, info.world_size)
    seed_everything(cfg.seed)

    def factory(init_weights=True):
        from xfm.model import XFM

        return task.build_model(XFM(model_cfg, init_weights=init_weights))

    model = build_model(factory, ds_config, cfg.engine.zero_stage)
    set_encoder_checkpointing(getattr(model, "xfm", model), cfg.engine.activation_checkpointing)
    # every rank joins (collective); on --resume the engine checkpoint then overwrites the weights
    missing = load_state_from_rank0(model, state, info.rank, strict=False)
    missing = [k for k in missing if not k.endswith("heads.text_mlm.decoder.weight")]  # tied
    if missing:
        raise ValueError(f"{ckpt}: {len(missing)} tensor(s) of the {task_cls.name} model missing, e.g. {missing[:5]}")
    seed_everything(cfg.seed + 1000003 * info.rank)
    groups = finetune_param_groups(model, cfg.optim, task_cls.head_prefixes)
    engine, _ = initialize(model, model, cfg.optim, ds_config, groups=groups)
    if info.rank == 0:
        print("\n".join(f"xfm-finetune: {line}" for text in report_lines for line in text.splitlines()), flush=True)
    runner = Runner(cfg, task, engine, model, info, device, PRECISION_DTYPES[cfg.engine.precision], run_dir)
    return runner, model_cfg


def total_steps(cfg, batches_per_epoch: int) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * batches_per_epoch / cfg.engine.grad_accum))


def run(cfg, task_cls, task_cfg, *, resume: bool = False, eval_only: bool = False) -> dict:
    """Fine-tune (or with ``eval_only`` only evaluate); returns the final metrics (rank 0)."""
    runner, model_cfg = prepare(cfg, task_cls, task_cfg, resume=resume, eval_only=eval_only)
    task, engine, rank = runner.task, runner.engine, runner.rank
    run_dir = runner.run_dir
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        save_config(task_cfg, run_dir / "task_config.yaml")
        save_config(model_cfg, run_dir / "model_config.yaml")
        writer = MetricsWriter(run_dir, cfg.logging.tensorboard)
        writer.event(event="start", task=task.name, world_size=runner.world, zero_stage=cfg.engine.zero_stage,
                     precision=cfg.engine.precision, checkpoint=cfg.checkpoint_path, resumed=resume,
                     eval_only=eval_only)
    cache = None
    try:
        with decoded_image_cache(cfg.train.image_cache_mb) as cache:
            if eval_only or cfg.train.skip_train:
                split = cfg.train.test_split or cfg.train.eval_split
                metrics = task.evaluate(runner, split)
                _write_eval(runner, writer, split, metrics, cfg.checkpoint_path, 0)
                return metrics
            return _train(cfg, runner, task_cfg, model_cfg, ckpt_dir, writer, resume)
    finally:
        if writer is not None:
            if cache is not None:
                writer.event(event="image_cache", **cache.stats())
            writer.close()


def _write_eval(runner, writer, split, metrics, checkpoint, step) -> None:
    if runner.rank != 0:
        return
    record = {"task": runner.task.name, "split": split, "metrics": metrics, "checkpoint": str(checkpoint),
              "step": step}
    tmp = runner.run_dir / (EVAL_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(runner.run_dir / EVAL_FILE)
    writer.event(event="eval", step=step, split=split, final=True, **{f"eval/{split}/{k}": v for k, v in metrics.items()})
    print(f"xfm-finetune: {runner.task.name} {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
          flush=True)


def _train(cfg, runner, task_cfg, model_cfg, ckpt_dir: Path, writer, resume: bool) -> dict:
    task, engine, rank, world = runner.task, runner.engine, runner.rank, runner.world
    train_set = runner.dataset("train", True)
    sampler = TrainSampler(len(train_set), cfg.train.batch_size, rank, world, cfg.seed,
                           multiple_of=cfg.engine.grad_accum)
    items = SeededItems(train_set, cfg.seed)
    accum = cfg.engine.grad_accum
    n_steps = total_steps(cfg, sampler.batches_per_epoch)
    optim_cfg = cfg.optim
    if optim_cfg.warmup_ratio > 0:
        from dataclasses import replace

        optim_cfg = replace(optim_cfg, warmup_steps=int(optim_cfg.warmup_ratio * n_steps))

    state = {"epoch": 0, "micro": 0, "best": None, "best_step": -1, "bad_evals": 0, "total_steps": n_steps}
    step = 0
    if resume:
        if checkpointing.read_latest(ckpt_dir) is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        step, saved = checkpointing.load(engine, ckpt_dir)
        if saved.get("total_steps") != n_steps:
            raise ValueError(f"--resume: the checkpoint's run has {saved.get('total_steps')} steps, this "
                             f"config gives {n_steps}: epochs, batch size, world size and max_steps must match")
        state.update(saved)
    task.on_train_start(runner)
    stop = StopRequest()
    best_dir = runner.run_dir / BEST_DIR
    higher = task.higher_is_better
    bar = None
    if rank == 0 and cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, initial=step, desc=f"finetune {task.name}", dynamic_ncols=True, file=sys.stderr)
    interval = {"t0": time.perf_counter(), "steps": 0, "losses": {}, "samples": 0}
    stopped = False

    def evaluate_and_keep(at_step: int) -> bool:
        """Evaluate, keep the best; True when early stopping says to stop."""
        metrics = task.evaluate(runner, cfg.train.eval_split)
        value = metrics[task.main_metric]
        better = state["best"] is None or (value > state["best"] if higher else value < state["best"])
        if better:
            state.update(best=value, best_step=at_step, bad_evals=0)
            full = gather_full_state(runner.model)
            if rank == 0:
                save_task_model(full, best_dir, task, model_cfg,
                                {"step": at_step, "metric": task.main_metric, "value": value,
                                 "split": cfg.train.eval_split})
                task.tokenizer.save_pretrained(str(best_dir))  # the model dir is self-contained
        else:
            state["bad_evals"] += 1
        if writer:
            writer.event(event="eval", step=at_step, split=cfg.train.eval_split, best=state["best"],
                         **{f"eval/{cfg.train.eval_split}/{k}": v for k, v in metrics.items()})
        patience = cfg.train.early_stop_patience
        return bool(patience and state["bad_evals"] >= patience)

    def save(at_step: int) -> None:
        checkpointing.save(engine, ckpt_dir, at_step, dict(state), {"task": task.name}, cfg.checkpoint.keep_last)
        if writer:
            writer.event(event="checkpoint", step=at_step, epoch=state["epoch"], micro=state["micro"])

    engine.train()
    last_eval = -1
    while step < n_steps and not stopped:
        epoch = state["epoch"]
        start_micro = state["micro"]
        sampler.set_epoch(epoch, start_micro)
        items.epoch = epoch
        loader = DataLoader(items, batch_size=cfg.train.batch_size, sampler=sampler,
                            num_workers=cfg.train.num_workers, collate_fn=collate_with_index(task, True),
                            drop_last=True, generator=torch.Generator().manual_seed(0))
        micro = start_micro
        t_wait = time.perf_counter()
        for batch in loader:
            if micro % accum == 0:
                lr = set_lr(engine.optimizer, step, optim_cfg, n_steps)
            gen = torch.Generator(device=runner.device).manual_seed(_batch_seed(cfg.seed, epoch, micro, rank))
            batch = runner.to_device(batch)
            loss, parts = engine("loss", batch, runner.context(step, gen))
            engine.backward(loss)
            engine.step()
            micro += 1
            interval["samples"] += int(batch["index"].shape[0])
            for k, v in {"loss": loss.detach(), **{f"loss/{k}": v.detach() for k, v in parts.items()}}.items():
                interval["losses"][k] = interval["losses"].get(k, 0.0) + v
            if micro % accum:
                continue
            step += 1
            state["micro"] = micro
            interval["steps"] += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.logging.every == 0 or step == n_steps:
                _log(runner, writer, interval, step, epoch, lr, accum, bar)
            end_of_epoch = micro >= sampler.batches_per_epoch
            if end_of_epoch:
                state.update(epoch=epoch + 1, micro=0)
            due_eval = (cfg.train.eval_every and step % cfg.train.eval_every == 0) or \
                (not cfg.train.eval_every and end_of_epoch) or step == n_steps
            if due_eval and last_eval != step:
                last_eval = step
                if evaluate_and_keep(step):
                    stopped = True
            signum = stop.agreed(runner.device)
            due_ckpt = (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or end_of_epoch or \
                step == n_steps or signum or stopped
            if due_ckpt:
                save(step)
            if signum:
                if writer:
                    writer.event(event="stopped", step=step, signal=int(signum))
                return {"stopped_by": int(signum), "step": step}
            if stopped or step >= n_steps or end_of_epoch:
                break
    if bar is not None:
        bar.close()
    # final test with the best model
    metrics = {}
    split = cfg.train.test_split
    if split:
        best_state = task_state_from_dir(best_dir) if rank == 0 else None
        load_state_from_rank0(runner.model, best_state, rank, strict=False)
        metrics = task.evaluate(runner, split)
        _write_eval(runner, writer, split, metrics, best_dir, state["best_step"])
    if writer:
        writer.event(event="end", step=step, best=state["best"], best_step=state["best_step"])
    return metrics


def _batch_seed(seed: int, epoch: int, micro: int, rank: int) -> int:
    """Seed of the task's sampling in one micro-batch (hard negatives, mixup): a function of
    where the run is, so a resumed run draws the same."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch, micro, rank, 0xF17E]).generate_state(1)[0])


def _log(runner, writer, interval, step, epoch, lr, accum, bar) -> None:
    """Collective: losses averaged over micro-steps and ranks."""
    n = max(1, interval["steps"] * accum)
    local = {k: float(v) / n for k, v in interval["losses"].items()}
    elapsed = max(1e-9, time.perf_counter() - interval["t0"])
    gathered = runner.gather_objects((local, interval["samples"], memory_mb()))
    if runner.rank == 0:
        rec = {"step": step, "epoch": epoch, "time": time.time(), "lr": lr,
               "step_time_s": elapsed / max(1, interval["steps"]),
               "samples_per_s": sum(g[1] for g in gathered) / elapsed,
               "mem_mb": max(g[2] for g in gathered)}
        for k in sorted(local):
            rec[k] = sum(g[0].get(k, 0.0) for g in gathered) / len(gathered)
        writer.write(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
    interval.update(t0=time.perf_counter(), steps=0, losses={}, samples=0)
