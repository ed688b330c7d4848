"""Where the time of one small attention call goes on a GPU: host (Python, launches) or device.

    python bench/attention_overhead.py [--batch 96] [--heads 12] [--lq 30] [--lk 30] [--calls 200]

On one H200 (bench/kernels_gpu.py) the Triton attention took about 0.9 ms per forward+backward at
every shape, 30x30 as 197x197, where SDPA took 0.13 ms at 30x30: a fixed cost. This splits each
implementation's forward+backward (key padding mask, bf16) into
- host ms/call: the time to enqueue ``--calls`` calls with no synchronisation, per call;
- wall ms/call: the same loop until the device is done, per call;
- device ms/call: the summed CUDA kernel time per call (torch.profiler);
and prints a cProfile of the Triton calls (top functions by own time), so a host-side cost shows
where it is. Implementations: ``dispatch`` (``xfm.kernels.attention(backend="triton")``, as the model
calls it), ``direct`` (``attention_triton.triton_attention``), ``sdpa``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--lq", type=int, default=30)
    p.add_argument("--lk", type=int, default=30)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("attention_overhead.py: no CUDA device here", file=sys.stderr)
        return 2
    from xfm import kernels
    from xfm.kernels import attention_triton

    dev, dt = torch.device("cuda"), torch.bfloat16
    B, H, D = args.batch, args.heads, args.head_dim
    q = torch.randn(B, H, args.lq, D, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(B, H, args.lk, D, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(B, H, args.lk, D, device=dev, dtype=dt, requires_grad=True)
    mask = torch.zeros(B, 1, 1, args.lk, device=dev, dtype=dt)
    mask[: B // 2, ..., args.lk * 2 // 3:] = -1e4
    grad = torch.randn(B, H, args.lq, D, device=dev, dtype=dt)
    impls = {
        "dispatch": lambda: kernels.attention(q, k, v, mask, backend="triton"),
        "direct": lambda: attention_triton.triton_attention(q, k, v, mask),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    }

    def call(fn):
        out = fn()
        q.grad = k.grad = v.grad = None
        out.backward(grad)

    rows = []
    for name, fn in impls.items():
        for _ in range(10):
            call(fn)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call(fn)
        host = (time.perf_counter() - t0) / args.calls
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.calls
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                call(fn)
            torch.cuda.synchronize()
        kernels_us = sum(e.self_device_time_total for e in prof.key_averages()) / 20
        rows.append((name, host * 1e3, wall * 1e3, kernels_us / 1e3))
        print(f"{name}: host {host * 1e3:.3f} ms/call, wall {wall * 1e3:.3f} ms/call, device {kernels_us / 1e3:.3f} ms/call",
              flush=True)
        if name == "dispatch":
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8), flush=True)

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        call(impls["dispatch"])
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    print("cProfile, 50 dispatch calls (fwd+bwd), by own time:\n" + s.getvalue()[-6000:], flush=True)
    print(f"\n| impl | host ms/call | wall ms/call | device ms/call |\n|---|---|---|---|")
    for name, host, wall, dev_ms in rows:
        print(f"| {name} | {host:.3f} | {wall:.3f} | {dev_ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
