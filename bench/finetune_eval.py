"""Retrieval evaluation time: N images x 5N captions, re-ranking k = 16 and 256.

    python bench/finetune_eval.py [--images 100 200] [--ks 16 256] [--size tiny] [--device cpu]
                                  [--threads 1] [--rerank-batch 256]

Runs the retrieval task's own evaluation (``RetrievalTask.score_matrices`` in one process, the
model wrapped as the loop wraps it) on a generated gallery: N noise pictures, each with 5
captions of 12 random words, written in the X-VLM test layout, and a word-level tokenizer made
for them. Weights are random: timing does not depend on them. Reported per (N, k): seconds
spent encoding every image and text once, on the ITC similarity of all pairs + top-k, and on
the ITM re-ranking (N * min(k, 5N) + 5N * min(k, N) fusion calls), each phase's share, and the
number of re-scored pairs. Prints one JSON line per measurement and a table.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

WORDS = [f"w{i}" for i in range(300)]


def make_gallery(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        caps = [" ".join(rng.choice(WORDS, 12)) for _ in range(5)]
        rows.append({"image": f"images/{i}.png", "caption": caps})
    path = root / "test.json"
    path.write_text(json.dumps(rows))
    return path


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def measure(n_images: int, k: int, size: str, device: torch.device, rerank_batch: int, work: Path) -> dict:
    from xfm.finetune.config import FinetuneConfig
    from xfm.finetune.loop import Runner
    from xfm.finetune.tasks.retrieval import RetrievalConfig, RetrievalTask
    from xfm.model import XFM
    from xfm.model_config import model_config

    mcfg = model_config(size)
    gallery = work / f"gallery_{n_images}"
    test = gallery / "test.json"
    if not test.is_file():
        make_gallery(gallery, n_images, mcfg.vision.image_size)
    cfg = FinetuneConfig()
    cfg.train.num_workers, cfg.train.eval_batch_size, cfg.logging.progress = 0, 64, False
    tcfg = RetrievalConfig(train_files=[str(test)], val_file=str(test), test_file=str(test),
                           image_root=str(gallery), k_test=k, rerank_batch_size=rerank_batch)
    task = RetrievalTask(cfg, tcfg, mcfg, make_tokenizer())
    torch.manual_seed(0)
    model = task.build_model(XFM(mcfg)).to(device)
    runner = Runner(cfg, task, model, model, SimpleNamespace(rank=0, world_size=1), device, torch.float32, work)
    runner.dataset("test")  # reading the file is not part of the evaluation time
    timings: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    task.score_matrices(runner, "test", timings)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    n_txt = 5 * n_images
    pairs = n_images * min(k, n_txt) + n_txt * min(k, n_images)
    # shares of CPU time on a CPU run (robust on a shared machine), of wall time on a GPU
    base, key = (total_cpu, "_cpu_s") if device.type == "cpu" else (total, "_s")
    return {"images": n_images, "texts": n_txt, "k": k, "device": str(device), "total_s": round(total, 3),
            "total_cpu_s": round(total_cpu, 3), **{name: round(v, 3) for name, v in timings.items()},
            "share_of": "cpu time" if key == "_cpu_s" else "wall time",
            "encode_share": round(timings["encode" + key] / base, 4),
            "itc_share": round(timings["itc" + key] / base, 4), "itm_share": round(timings["itm" + key] / base, 4),
            "rescored_pairs": pairs, "itm_pairs_per_s": round(pairs / timings["itm" + key], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[100, 200])
    p.add_argument("--ks", type=int, nargs="+", default=[16, 256])
    p.add_argument("--size", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rerank-batch", type=int, default=256)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.images:
            for k in args.ks:
                row = measure(n, k, args.size, torch.device(args.device), args.rerank_batch, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    key = "_cpu_s" if args.device == "cpu" else "_s"
    print(f"seconds ({'process CPU' if key == '_cpu_s' else 'wall'}) per phase")
    print(f"{'images':>6} {'texts':>6} {'k':>4} {'total':>8} {'encode':>8} {'ITC':>7} {'ITM':>8} "
          f"{'enc %':>6} {'ITC %':>6} {'ITM %':>6} {'pairs':>7} {'pairs/s':>8}")
    for r in rows:
        total = r["total_cpu_s"] if key == "_cpu_s" else r["total_s"]
        print(f"{r['images']:>6} {r['texts']:>6} {r['k']:>4} {total:>8.2f} {r['encode' + key]:>8.2f} "
              f"{r['itc' + key]:>7.3f} {r['itm' + key]:>8.2f} {100 * r['encode_share']:>6.1f} "
              f"{100 * r['itc_share']:>6.1f} {100 * r['itm_share']:>6.1f} {r['rescored_pairs']:>7} "
              f"{r['itm_pairs_per_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
