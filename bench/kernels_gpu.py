"""Time the fused Triton ops against torch (and FlashAttention if installed) on a CUDA GPU.

Attention, forward+backward, on the X-FM shapes (batch 96, 12 heads, head dim 64):
  text self-attention 30x30 with key padding, image self-attention 197x197 with BEiT's relative
  position bias (a parameter: its gradient is computed), cross-attention 30x197 with key padding;
  against ``torch.nn.functional.scaled_dot_product_attention`` with the same mask, and against
  ``flash_attn.flash_attn_func`` when installed (it takes no additive mask, so it runs unmasked:
  a lower bound for what a masked call would cost).
The text and cross cases are also timed with attention dropout 0.1 (fused Philox mask vs SDPA's
dropout), as the base config trains the text and fusion encoders.
Contrastive loss, forward+backward, global batch N (d = 256), against the plain torch loss
(``reference.contrastive_loss_reference``), with peak CUDA memory of each.

First, before anything is timed, the kernels' first-use self-check (``xfm.kernels.selfcheck``) runs
for every kernel configuration the run uses and prints its verdicts: fused vs the torch reference
in float64 on small inputs of that configuration, forward and backward. A configuration that fails
it is what ``kernels: auto`` would replace by the reference; its timings are skipped.
Every shape is then checked against its baseline (output and every gradient), then timed.
Prints achieved TFLOP/s (attention: 4*B*H*Lq*Lk*D forward, 2.5x that backward; contrastive: the
plain algorithm's 6*N^2*d) and the speed ratio of each baseline over the fused op, and ends with
one SUMMARY table (markdown, ready for BENCHMARKS.md; ``--out`` also writes it as JSON lines).
On one H200 the default run should take about a minute or two, most of it Triton's first compile
of each kernel configuration and the plain loss at N = 32768 (8.6 GB of fp32 logits and copies).

    python bench/kernels_gpu.py [--dtype bf16] [--itc-sizes 4096,16384,32768] [--out gpu.jsonl]

Exits with a message (status 2) on a machine without CUDA, or where TRITON_INTERPRET=1 is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--itc-sizes", default="4096,16384,32768")
    p.add_argument("--itc-dim", type=int, default=256)
    p.add_argument("--rep-ms", type=int, default=200, help="timing window per measurement (triton.testing.do_bench)")
    p.add_argument("--out", default=None, help="also write the summary rows as JSON lines here")
    p.add_argument("--smoke-cpu", action="store_true",
                   help="run the script's code path on CPU through the Triton interpreter (needs "
                        "TRITON_INTERPRET=1 and tiny --batch/--heads/--itc-sizes); times mean nothing")
    args = p.parse_args(argv)

    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreting and not args.smoke_cpu:
        sys.exit("kernels_gpu.py: TRITON_INTERPRET=1 is set; unset it to time compiled kernels on a GPU")
    if args.smoke_cpu and not interpreting:
        sys.exit("kernels_gpu.py --smoke-cpu needs TRITON_INTERPRET=1")
    import torch

    if not args.smoke_cpu and not torch.cuda.is_available():
        print("kernels_gpu.py: no CUDA device on this machine (torch.cuda.is_available() is False); "
              "nothing to time. Run it on a GPU node.", file=sys.stderr)
        sys.exit(2)
    import torch.nn.functional as F

    import xfm.kernels as K
    from xfm.kernels import attention_triton, reference, selfcheck

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device("cpu" if args.smoke_cpu else "cuda")
    cuda = dev.type == "cuda"

    def bench(fn) -> float:
        """Milliseconds per call: triton's do_bench on a GPU, one timed call in the CPU smoke run."""
        if cuda:
            from triton.testing import do_bench
            return do_bench(fn, rep=args.rep_ms)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    device_name = torch.cuda.get_device_name(dev) if cuda else "CPU (interpreter smoke run)"
    print(f"device: {device_name}  torch {torch.__version__}  dtype {args.dtype}")
    flash_attn_func = None
    if cuda:
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            print("flash_attn not installed: comparing with SDPA only")

    summary = []  # one row per (case, implementation): the table printed at the end
    t_start = time.perf_counter()
    B, H, D = args.batch, args.heads, args.head_dim
    # (label, Lq, Lk, mask kind, attention dropout): the last two are the training calls of the
    # text/fusion encoders (attention_dropout 0.1 in the base config)
    cases = [("text self 30x30 + key padding", 30, 30, "pad", 0.0),
             ("image self 197x197 + rel-pos bias (grad)", 197, 197, "bias", 0.0),
             ("cross 30x197 + key padding", 30, 197, "pad", 0.0),
             ("text self 30x30 + padding + dropout 0.1", 30, 30, "pad", 0.1),
             ("cross 30x197 + padding + dropout 0.1", 30, 197, "pad", 0.1)]
    itc_sizes = [int(s) for s in args.itc_sizes.split(",")]
    checks = run_selfchecks(selfcheck, cases, itc_sizes, args, dev, dtype)
    failed = [r for r in checks if not r.passed]
    print(f"\nattention fwd+bwd, B={B} H={H} D={D}")
    print(f"{'case':<42} {'impl':<12} {'ms':>8} {'TFLOP/s':>8} {'fused speed-up':>15}")
    for name, Lq, Lk, kind, drop in cases:
        torch.manual_seed(0)
        q = torch.randn(B, H, Lq, D, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(B, H, Lk, D, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(B, H, Lk, D, device=dev, dtype=dtype, requires_grad=True)
        if kind == "pad":
            keep = torch.randint(Lk // 2, Lk + 1, (B,), device=dev)
            mask = torch.where(torch.arange(Lk, device=dev)[None, :] < keep[:, None], 0.0, -10000.0)
            mask = mask.to(dtype).view(B, 1, 1, Lk)
        else:
            mask = (0.1 * torch.randn(1, H, Lq, Lk, device=dev, dtype=dtype)).requires_grad_()
        dout = torch.randn(B, H, Lq, D, device=dev, dtype=dtype)
        wrt = [q, k, v] + ([mask] if mask.requires_grad else [])

        def step(fn):
            def run():
                out = fn()
                torch.autograd.grad(out, wrt, dout)
            return run

        impls = {
            "triton": step(lambda: K.attention(q, k, v, mask, dropout_p=drop, backend="triton")),
            "sdpa": step(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)),
        }
        if flash_attn_func is not None and dtype != torch.float32 and drop == 0:
            qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
            dt = dout.transpose(1, 2).contiguous()

            def fa():
                out = flash_attn_func(qt, kt, vt)
                torch.autograd.grad(out, [qt, kt, vt], dt)
            impls["flash_attn*"] = fa
        verdict = selfcheck.check_attention(q, k, v, mask, drop)  # cached: printed above
        if not verdict.passed:
            print(f"{name:<42} skipped: the fused kernel failed its self-check")
            continue
        # correctness on this shape before timing: output and every gradient against SDPA (with
        # dropout: against the reference formula with the keep-mask the kernels draw for a seed)
        if drop:
            keep = attention_triton.dropout_keep_mask((B, H, Lq, Lk), drop, 1234, device=dev)
            ref = reference.attention_with_keep_mask(q, k, v, mask, keep, drop)
            got = attention_triton.triton_attention(q, k, v, mask, dropout_p=drop, seed=1234)
        else:
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            got = K.attention(q, k, v, mask, backend="triton")
        errs = [(got.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-6)]
        for g, r in zip(torch.autograd.grad(got, wrt, dout), torch.autograd.grad(ref, wrt, dout)):
            errs.append((g.float() - r.float()).abs().max().item() / max(r.float().abs().max().item(), 1e-6))
        labels = ["out", "dq", "dk", "dv", "dbias"][: len(errs)]
        against = "keep-mask ref" if drop else "sdpa"
        print(f"{name:<42} |triton - {against}| rel. to max: "
              + ", ".join(f"{n} {e:.1e}" for n, e in zip(labels, errs)))
        flops = 4 * B * H * Lq * Lk * D * 3.5
        times = {n: bench(f) for n, f in impls.items()}
        for n, ms in times.items():
            ratio = "" if n == "triton" else f"{ms / times['triton']:>14.2f}x"
            print(f"{'':<42} {n:<12} {ms:>8.3f} {flops / ms / 1e9:>8.1f} {ratio:>15}")
            summary.append(dict(op="attention", case=f"{Lq}x{Lk} {kind}" + (f" drop{drop:g}" if drop else ""), impl=n, ms=ms, tflops=flops / ms / 1e9,
                                speedup=None if n == "triton" else ms / times["triton"],
                                max_err=max(errs) if n == "triton" else None))
    if flash_attn_func is not None:
        print("* flash_attn_func takes no additive mask: timed unmasked")

    print(f"\ncontrastive loss fwd+bwd, d={args.itc_dim}, features {args.dtype}")
    print(f"{'N':>7} {'impl':<8} {'ms':>9} {'TFLOP/s':>8} {'peak GB':>8} {'fused speed-up':>15}")
    for n in itc_sizes:
        torch.manual_seed(0)
        img = F.normalize(torch.randn(n, args.itc_dim, device=dev), dim=-1).to(dtype).requires_grad_()
        txt = F.normalize(torch.randn(n, args.itc_dim, device=dev), dim=-1).to(dtype).requires_grad_()
        temp = torch.tensor(0.07, device=dev, requires_grad=True)
        ids = torch.randint(0, max(1, n // 3), (n,), device=dev)
        if not selfcheck.check_contrastive(img, txt, temp, ids).passed:
            print(f"{n:>7} skipped: the fused loss failed its self-check")
            continue
        flops = 6 * n * n * args.itc_dim
        res = {}
        if n <= 16384:  # the plain loss fits: check loss and gradients before timing
            outs = []
            for backend in ("triton", "torch"):
                loss = K.contrastive_loss(img, txt, temp, ids, backend=backend)
                outs.append([loss, *torch.autograd.grad(loss, [img, txt, temp])])
            errs = [(a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-12)
                    for a, b in zip(*outs)]
            print(f"{n:>7} check: |fused - plain| rel. to max: loss {errs[0]:.1e}, d_image {errs[1]:.1e}, "
                  f"d_text {errs[2]:.1e}, d_temp {errs[3]:.1e}")
        for impl, backend in (("triton", "triton"), ("plain", "torch")):
            def run():
                loss = K.contrastive_loss(img, txt, temp, ids, backend=backend)
                torch.autograd.grad(loss, [img, txt, temp])
            try:
                peak = float("nan")
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                run()
                if cuda:
                    peak = torch.cuda.max_memory_allocated() / 1024 ** 3
                res[impl] = (bench(run), peak)
            except torch.OutOfMemoryError:
                res[impl] = None
        for impl, r in res.items():
            if r is None:
                print(f"{n:>7} {impl:<8} {'out of memory':>9}")
                continue
            ms, peak = r
            ratio = f"{ms / res['triton'][0]:>14.2f}x" if impl != "triton" and res.get("triton") else ""
            print(f"{n:>7} {impl:<8} {ms:>9.3f} {flops / ms / 1e9:>8.1f} {peak:>8.2f} {ratio:>15}")
            summary.append(dict(op="contrastive", case=f"N={n} d={args.itc_dim}", impl=impl, ms=ms,
                                tflops=flops / ms / 1e9, peak_gb=peak,
                                speedup=ms / res["triton"][0] if impl != "triton" and res.get("triton") else None,
                                max_err=max(errs) if impl == "triton" and n <= 16384 else None))
        for impl, r in res.items():
            if r is None:
                summary.append(dict(op="contrastive", case=f"N={n} d={args.itc_dim}", impl=impl, ms=None,
                                    tflops=None, peak_gb=None, speedup=None, max_err=None, oom=True))

    print_summary(summary, device_name, args, time.perf_counter() - t_start)
    print(f"self-check: {len(checks) - len(failed)} of {len(checks)} kernel configurations agree with the reference"
          + "".join(f"\n  FAILED {r.config}: {r.problem}" for r in failed))
    if args.out:
        with open(args.out, "w") as f:
            for row in summary:
                f.write(json.dumps(dict(row, device=device_name, dtype=args.dtype)) + "\n")


def run_selfchecks(selfcheck, cases, itc_sizes, args, dev, dtype):
    """The dispatcher's first-use check for every kernel configuration this run times, printed
    before anything else. Shapes only matter through the configuration, so the probes are small
    (at most batch 2 x 2 heads; the contrastive check picks its own small N)."""
    import torch

    print("\nself-check (first use of each kernel configuration: fused vs torch reference in float64, "
          "small inputs, forward and backward)")
    b, h = min(args.batch, 2), min(args.heads, 2)
    results = []
    for name, Lq, Lk, kind, drop in cases:
        q = torch.zeros(b, h, Lq, args.head_dim, device=dev, dtype=dtype)
        k = torch.zeros(b, h, Lk, args.head_dim, device=dev, dtype=dtype)
        mask = (torch.zeros(b, 1, 1, Lk, device=dev, dtype=dtype) if kind == "pad"
                else torch.zeros(1, h, Lq, Lk, device=dev, dtype=dtype, requires_grad=True))
        results.append(selfcheck.check_attention(q, k, k, mask, drop))
    for n in itc_sizes:
        feat = torch.zeros(n, args.itc_dim, device=dev, dtype=dtype)
        results.append(selfcheck.check_contrastive(feat, feat, torch.tensor(0.07, device=dev),
                                                   torch.zeros(n, dtype=torch.long, device=dev)))
    seen = set()
    for r in results:
        if r.config in seen:  # two cases on one compiled configuration: one check
            continue
        seen.add(r.config)
        errs = ", ".join(f"{q} {e:.1e}" for q, e in r.errors.items())
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.config}\n        on {r.shapes}: {errs or '-'}"
              f" (tolerance {r.tolerance:.0e}, {r.seconds:.1f} s)" + ("" if r.passed else f"\n        {r.problem}"))
    unique = {r.config: r for r in results}
    return list(unique.values())


def print_summary(rows, device, args, seconds):
    """One table with every measurement: the figures to copy into BENCHMARKS.md."""
    print(f"\nSUMMARY  {device}  {args.dtype}  attention B={args.batch} H={args.heads} D={args.head_dim}"
          f"  ({seconds:.0f} s)")
    print("speed-up = baseline ms / triton ms (> 1: the fused op is faster); err = max |triton - baseline| "
          "relative to max, over output and gradients")
    head = f"| {'op':<11} | {'case':<22} | {'impl':<11} | {'ms':>9} | {'TFLOP/s':>7} | {'peak GB':>7} | {'speed-up':>8} | {'err':>7} |"
    print(head)
    print("|" + "|".join("-" * len(cell) for cell in head.strip("|").split("|")) + "|")
    fmt = lambda v, spec: "-" if v is None or v != v else format(v, spec)  # noqa: E731 (None / NaN -> "-")
    for r in rows:
        ms = "OOM" if r.get("oom") else fmt(r["ms"], ".3f")
        print(f"| {r['op']:<11} | {r['case']:<22} | {r['impl']:<11} | {ms:>9} | {fmt(r['tflops'], '.1f'):>7} | "
              f"{fmt(r.get('peak_gb'), '.2f'):>7} | {fmt(r['speedup'], '.2f'):>8} | {fmt(r['max_err'], '.1e'):>7} |")


if __name__ == "__main__":
    main()
