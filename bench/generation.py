"""Decoding speed of the answer/caption decoder: tokens/s with the key/value cache vs without.

    python bench/generation.py [--sizes tiny base] [--batch 2] [--new-tokens 20] [--beams 1 3]
                               [--repeats 3] [--threads 1] [--device cpu]

The decoder is shaped like each size's fusion encoder (``DecoderConfig.from_model_config``: tiny
= 2 layers, width 64, vocabulary 1000; base = 12 layers, width 768, 12 heads, vocabulary 50265),
random weights (speed does not depend on them). It cross-attends to ``1 + patches`` encoder
states (the image tokens of that size: 17 tiny, 197 base). Every run decodes exactly
``--new-tokens`` tokens after a 4-token prompt (no end token, so both paths do the same work).
tokens/s = batch * new tokens / seconds (beams are not counted as extra tokens); the figure is
the best of ``--repeats`` runs. "uncached" re-runs the whole sequence every step (the reference
path, cross-attention keys/values recomputed too); "cached" feeds one token per step.
Prints one JSON line per measurement and a table; also checks both paths gave the same tokens.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from xfm.model.decoder import DecoderConfig, TextDecoder
from xfm.model.generation import generate
from xfm.model_config import model_config


def measure(decoder, states, prompt, new_tokens, beams, use_cache, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        if states.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(decoder, states, None, prompt, num_beams=beams, max_length=len(prompt) + new_tokens,
                       min_length=0, eos_token_id=None, use_cache=use_cache)
        if states.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out.sequences


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    rows = []
    for size in args.sizes:
        mcfg = model_config(size)
        cfg = DecoderConfig.from_model_config(mcfg)
        decoder = TextDecoder(cfg).to(device=args.device, dtype=dtype).eval()
        params = sum(p.numel() for p in decoder.parameters())
        states = torch.randn(args.batch, 1 + mcfg.vision.num_patches, cfg.cross_width, device=args.device, dtype=dtype)
        prompt = [0, 100, 200, 300]
        for beams in args.beams:
            measure(decoder, states, prompt, 2, beams, True, 1)  # warm-up (allocator, kernels)
            t_cached, seq_cached = measure(decoder, states, prompt, args.new_tokens, beams, True, args.repeats)
            t_plain, seq_plain = measure(decoder, states, prompt, args.new_tokens, beams, False, args.repeats)
            tokens = args.batch * args.new_tokens
            rec = {"size": size, "layers": cfg.num_layers, "width": cfg.hidden_size, "params": params,
                   "encoder_states": states.shape[1], "batch": args.batch, "beams": beams,
                   "new_tokens": args.new_tokens, "device": args.device, "dtype": args.dtype,
                   "threads": args.threads, "cached_tok_s": tokens / t_cached, "uncached_tok_s": tokens / t_plain,
                   "speedup": t_plain / t_cached, "same_tokens": bool(torch.equal(seq_cached, seq_plain))}
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    print(f"\n{'size':<6}{'layers':>7}{'params':>10}{'beams':>6}{'cached tok/s':>14}{'uncached tok/s':>16}"
          f"{'speedup':>9}{'same tokens':>13}")
    for r in rows:
        print(f"{r['size']:<6}{r['layers']:>7}{r['params'] / 1e6:>9.1f}M{r['beams']:>6}{r['cached_tok_s']:>14.1f}"
              f"{r['uncached_tok_s']:>16.1f}{r['speedup']:>8.2f}x{str(r['same_tokens']):>13}")


if __name__ == "__main__":
    main()
