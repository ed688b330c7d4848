"""Inference throughput of ``xfm.Pipeline`` on CPU or a GPU: pictures and captions embedded per
second, ITM match probabilities per second, and one caption searched over every picture with the
ITM re-rank of its top 16.

    python bench/pipeline_speed.py [--size tiny|demo|base] [--device cpu|cuda] [--batch-size 32]
                                   [--repeats 3] [--out pipeline.jsonl]

The model is randomly initialised at the size asked for (speed does not depend on the weights),
written with ``save_pretrained`` and loaded with ``Pipeline.from_pretrained`` as a user loads an
export. Pictures (96 JPEG files of 64 px, resized by the pipeline to the model's size) and
captions (192) come from a synthetic world of size ``test`` made in a temporary directory, with
its tokenizer. Each figure is the median of ``--repeats`` timed calls after one untimed call
(CUDA synchronised before the clock is read). Prints one JSON line per measurement and a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(fn, repeats: int, cuda: bool) -> float:
    import torch

    fn()  # warm-up: first-call allocations, cuDNN/cuBLAS choices
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", help="model size preset (tiny, demo is configs/model/demo.yaml, base, large)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the JSON lines here")
    args = p.parse_args(argv)
    import torch

    from xfm import Pipeline
    from xfm.data_prep.synth import prepare_world
    from xfm.model import XFM
    from xfm.model_config import model_config

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("pipeline_speed.py: --device cuda asked for, but no CUDA device is here", file=sys.stderr)
        return 2
    if args.size == "demo":
        from xfm.config import load_config
        from xfm.model_config import ModelConfig

        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "model" / "demo.yaml", ModelConfig)
    else:
        cfg = model_config(args.size)
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="xfm_pipeline_bench_") as tmp:
        world = Path(tmp) / "world"
        prepare_world(world, seed=0, size="test")
        torch.manual_seed(0)
        XFM(cfg).save_pretrained(Path(tmp) / "model")
        pipe = Pipeline.from_pretrained(Path(tmp) / "model", tokenizer=world / "tokenizer", device=args.device,
                                        batch_size=args.batch_size)
        pictures = sorted((world / "images").glob("*.jpg"))
        # the retrieval training file: one {image, caption, image_id} row per caption
        captions = [row["caption"] for row in json.loads((world / "retrieval" / "train.json").read_text())]
        n = min(len(pictures), len(captions))
        measures = {
            "embed_images": (len(pictures), lambda: pipe.embed_images(pictures)),
            "embed_texts": (len(captions), lambda: pipe.embed_texts(captions)),
            "match": (n, lambda: pipe.match(pictures[:n], captions[:n])),
            "retrieve_rerank16": (1, lambda: pipe.retrieve(captions[0], pictures, k=5, rerank=True, rerank_k=16)),
        }
        rows = []
        for name, (items, fn) in measures.items():
            with torch.inference_mode():
                sec = timed(fn, args.repeats, cuda)
            rec = {"what": name, "size": cfg.size, "device": args.device, "batch_size": args.batch_size,
                   "items": items, "seconds": round(sec, 4), "items_per_s": round(items / sec, 1)}
            if name.startswith("retrieve"):
                rec["gallery"] = len(pictures)
            rows.append(rec)
            print(json.dumps(rec), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(f"\n| {cfg.size} on {args.device}, batch {args.batch_size} | items | s (median) | items/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['items']} | {r['seconds']} | {r['items_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
