"""One training step of a full-size X-FM on one CUDA GPU: the torch kernels against the Triton ones,
eager and with the repeated blocks compiled.

    python bench/gpu_step.py [--size base] [--variants torch,triton,torch+compile,triton+compile] [--steps 12]
                             [--groups "text|regions,images,pairs"] [--out gpu_step.jsonl]

One step follows the pretraining recipe's step groups (configs/pretrain/base_4m.yaml): by default
the text stream is one optimizer step and the regions, images and pairs streams together are the
other, at the recipe's per-GPU batches (96 pairs, 96 regions on 48 pictures, 96 images, 256 texts of
128 tokens; captions of 30 tokens), 224 px. Batches are random tensors of the right shapes
(``tests/fixtures_model.py``), made on the host and copied as the trainer copies them; no loader is
involved, so the figure is the model's. One process, bf16 autocast over fp32 weights, torch's fused
AdamW. This is not the DeepSpeed engine: ``bench/pretrain_step.py`` measures that, loader included.

Variants: ``torch`` (every fused op takes the torch reference: SDPA for attention, the plain
contrastive loss), ``triton`` (the Triton kernels, asked for by name: a configuration they cannot
run raises), ``auto`` (the default policy: SDPA attention, fused contrastive loss), each optionally
``+compile`` (``XFM.compile_blocks``: each repeated block through torch.compile). All
variants start from the same weights and see the same batches and seeds. Reports the median step
time over the steps after ``--warmup``, samples/s (all streams), peak CUDA memory, and the first
steps' losses (dropout masks differ between the torch and Triton attention, so losses agree to
rounding only on the first step's dropout-free parts; they are printed to show both train alike).

``--smoke-cpu`` runs the same code on CPU with the tiny model (TRITON_INTERPRET=1 for the Triton
variants): times mean nothing there, it only proves the script's path.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic batch builders

# per-GPU batches of configs/pretrain/base_4m.yaml: (rows, caption/text length)
RECIPE = {"pairs": (96, 30), "regions": (96, 30), "images": (96, 0), "text": (256, 128)}


def make_batch(stream: str, cfg, rows: int, length: int, seed: int) -> dict:
    import fixtures_model as fm

    if stream == "pairs":
        return fm.make_pairs_batch(cfg, batch_size=rows, length=length, seed=seed)
    if stream == "regions":  # two region captions per picture: a choice; real corpora vary
        return fm.make_regions_batch(cfg, num_images=max(1, rows // 2), num_regions=rows, length=length, seed=seed)
    if stream == "images":
        return fm.make_images_batch(cfg, batch_size=rows, seed=seed)
    return fm.make_text_batch(cfg, batch_size=rows, length=length, seed=seed)


def run_variant(name: str, cfg, groups, batches, rows: dict, device, steps: int, warmup: int, dtype) -> dict:
    import torch
    from xfm import kernels
    from xfm.model import XFM
    from xfm.objectives import STREAM_LOSSES, LossContext
    from xfm.runtime.process import to_device

    backend = name.split("+")[0]
    if backend not in ("torch", "triton", "auto"):
        raise ValueError(f"variant {name!r}: the kernels part must be torch, triton or auto")
    torch.manual_seed(0)
    model = XFM(cfg).to(device)
    if "compile" in name:
        model.compile_blocks()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    with kernels.backend_scope(attention=backend, contrastive=backend):
        for s in range(steps):
            torch.manual_seed(s)
            t = time.perf_counter()
            total = 0.0
            for group in groups:
                ctx = LossContext(generator=torch.Generator(device=device).manual_seed(s))
                loss = 0.0
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    for stream in group:
                        batch = to_device(batches[s % len(batches)][stream], device)
                        loss = loss + sum(STREAM_LOSSES[stream](model, batch, ctx).values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            total = float(total)  # one sync per step, as the trainer's log lines do
            times.append(time.perf_counter() - t)
            losses.append(total)
            print(f"  {name} step {s}: {times[-1] * 1e3:.1f} ms loss {total:.5f}", file=sys.stderr, flush=True)
    med = statistics.median(times[warmup:])
    samples = sum(rows[st] for g in groups for st in g)
    rec = {"variant": name, "steps_measured": steps - warmup, "statistic": "median",
           "step_ms": round(med * 1e3, 1), "samples_per_s": round(samples / med, 1),
           "first_step_ms": round(times[0] * 1e3, 1), "losses": [round(x, 5) for x in losses[:4]]}
    if cuda:
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--variants", default="torch,triton,torch+compile,triton+compile")
    p.add_argument("--groups", default="text|regions,images,pairs",
                   help="optimizer steps separated by |, streams of one step by commas")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the median")
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--out", default=None, help="also write one JSON line per variant here")
    p.add_argument("--smoke-cpu", action="store_true", help="tiny model on CPU; proves the path only")
    args = p.parse_args(argv)

    import torch
    from xfm.model_config import model_config

    if args.smoke_cpu:
        device, cfg, scale = torch.device("cpu"), model_config("tiny"), 16
    else:
        if not torch.cuda.is_available():
            print("gpu_step.py: no CUDA device here; run it on a GPU node (or --smoke-cpu)", file=sys.stderr)
            return 2
        device, cfg, scale = torch.device("cuda"), model_config(args.size), 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    groups = [g.split(",") for g in args.groups.split("|")]
    streams = [s for g in groups for s in g]
    rows = {s: max(2, RECIPE[s][0] // scale) for s in streams}
    # text lengths as the recipe's, within the model's positions (the images stream has none: 0)
    lengths = {s: min(RECIPE[s][1], cfg.text.max_position_embeddings - 2) for s in streams}
    batches = [{s: make_batch(s, cfg, rows[s], lengths[s], seed=1000 * i + j) for j, s in enumerate(streams)}
               for i in range(args.batches)]
    print(f"gpu_step: {cfg.size} model, {'cpu' if args.smoke_cpu else torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, groups {groups}, rows {rows}", flush=True)
    recs = []
    for name in args.variants.split(","):
        try:
            rec = run_variant(name, cfg, groups, batches, rows, device, args.steps, min(args.warmup, args.steps - 1), dtype)
        except Exception as e:  # one variant failing (a kernel that cannot compile) must not hide the others
            import traceback

            traceback.print_exc()
            rec = {"variant": name, "error": f"{type(e).__name__}: {e}"[:500]}
        rec.update(size=cfg.size, dtype=args.dtype, groups=args.groups, rows=rows)
        recs.append(rec)
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    base = next((r for r in recs if r["variant"] == "torch" and "step_ms" in r), None)
    print(f"\n| variant | step (ms, median) | samples/s | vs torch | peak memory (GiB) |\n|---|---|---|---|---|")
    for r in recs:
        if "step_ms" not in r:
            print(f"| {r['variant']} | failed: {r['error'].splitlines()[0][:100]} | | | |")
            continue
        ratio = f"{base['step_ms'] / r['step_ms']:.2f}x" if base else "-"
        print(f"| {r['variant']} | {r['step_ms']} | {r['samples_per_s']} | {ratio} | {r.get('peak_mem_gib', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
