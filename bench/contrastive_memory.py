"""Peak memory and time of the fused (Triton) contrastive loss vs the plain torch loss, on CPU.

Each point (implementation, global batch N, feature dim d) runs forward+backward in a fresh
subprocess so its peak RSS (``ru_maxrss``) is its own. The subprocess caps its address space
(``RLIMIT_AS`` = what it has mapped after start-up + ``--mem-limit-gb``), so a point that needs more
than the cap fails with an allocation error ("OOM at the cap") instead of pushing a shared machine
into swap or the OOM killer.

The fused loss runs its Triton kernels in the CPU interpreter (TRITON_INTERPRET=1) up to
``--fused-max-n`` (the interpreter costs a few ms per 128 x 128 tile: 8k takes minutes, 64k would
take hours). Beyond that it is not run: its memory is O(N*d) (gradients and a few length-N
vectors, never N x N), so the table scales the largest measured peak linearly ("linear est.";
that figure includes the interpreter's own copies, an over-estimate for a GPU run) and the JSON
record also gives the op's own allocations analytically. The interpreter's times say nothing
about GPU speed (see bench/kernels_gpu.py). The plain loss is measured; its bytes per N^2 at the
largest measured N predict where it exceeds the machine's memory (``--machine-gb``, 24 GB here).

    OMP_NUM_THREADS=1 python bench/contrastive_memory.py --sizes 1024,2048,4096,8192,16384,32768,65536 \
        --mem-limit-gb 4 --fused-max-n 8192 --out contrastive_memory.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GiB = 1024 ** 3


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(impl: str, n: int, d: int, ids: bool, mem_limit_gb: float) -> dict:
    """One forward+backward in this process; returns the measured figures."""
    import torch
    import torch.nn.functional as F

    import xfm.kernels as K

    # Import the Triton module before capping, so its start-up mappings are not counted.
    if impl == "fused":
        from xfm.kernels import contrastive_triton  # noqa: F401
    torch.manual_seed(0)
    base_rss = _rss_bytes()
    cap = _vm_size_bytes() + int(mem_limit_gb * GiB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    record = {"impl": impl, "n": n, "d": d, "repeated_ids": ids, "mem_limit_gb": mem_limit_gb}
    try:
        img = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
        txt = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
        temp = torch.tensor(0.07, requires_grad=True)
        image_ids = torch.randint(0, max(1, n // 3), (n,)) if ids else None
        start = time.perf_counter()
        backend = "triton" if impl == "fused" else "torch"
        loss = K.contrastive_loss(img, txt, temp, image_ids, backend=backend)
        loss.backward()
        record.update(status="ok", seconds=time.perf_counter() - start, loss=float(loss))
    except (RuntimeError, MemoryError) as e:  # torch: "DefaultCPUAllocator: can't allocate memory"
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        record.update(status="oom_at_cap", error=str(e).splitlines()[0][:200])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record.update(base_rss_gb=base_rss / GiB, peak_rss_gb=peak / GiB, op_peak_gb=(peak - base_rss) / GiB)
    return record


def fused_bytes(n: int, d: int, elt: int = 4) -> int:
    """What the fused loss allocates beyond its inputs: two (N, d) gradients, six stats vectors,
    two row-partial vectors and the ids (the kernels keep tiles in registers / on-chip)."""
    return 2 * n * d * elt + 6 * n * 4 + 2 * n * 4 + n * 8


def run_point(impl, n, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if impl == "fused":
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--n", str(n), "--d", str(args.d),
           "--mem-limit-gb", str(args.mem_limit_gb)] + (["--repeated-ids"] if args.repeated_ids else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        # An allocation past the cap can also kill the process outright (abort in a C++ allocator).
        return {"impl": impl, "n": n, "d": args.d, "status": "failed_at_cap" if res.returncode < 0 or "alloc" in res.stderr.lower() else "error",
                "returncode": res.returncode, "stderr_tail": res.stderr[-300:]}
    return json.loads(lines[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768,65536")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--repeated-ids", action="store_true", help="soft targets (about 3 captions per image id)")
    p.add_argument("--mem-limit-gb", type=float, default=4.0, help="address-space cap per point, beyond start-up")
    p.add_argument("--fused-max-n", type=int, default=8192, help="largest N run in the interpreter")
    p.add_argument("--machine-gb", type=float, default=24.0)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None, help="JSON-lines file for the records")
    p.add_argument("--worker", choices=["plain", "fused"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.repeated_ids, args.mem_limit_gb)), flush=True)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    out = open(args.out, "a") if args.out else None
    records = []
    plain_oom = False
    print(f"d={args.d} repeated_ids={args.repeated_ids} cap={args.mem_limit_gb} GB per point "
          f"(fused run in the Triton interpreter up to N={args.fused_max_n}, scaled linearly beyond)", flush=True)
    print(f"{'N':>7} | {'plain: op peak GB':>18} {'s':>7} | {'fused: op peak GB':>18} {'s':>7}", flush=True)
    for n in sizes:
        # Once the plain loss fails at the cap, larger N only fails later and slower: skip the run.
        plain = run_point("plain", n, args) if not plain_oom else {"impl": "plain", "n": n, "status": "skipped_after_oom"}
        plain_oom = plain_oom or plain["status"] != "ok"
        if n <= args.fused_max_n:
            fused = run_point("fused", n, args)
        else:
            # Not run: the interpreter would take hours. Its memory is O(N*d): scale the largest
            # measured point linearly (that figure includes the interpreter's own copies, so it
            # over-states a GPU run), and give the op's own allocations analytically.
            measured = [r for r in records if r["impl"] == "fused" and r["status"] == "ok"]
            fused = {"impl": "fused", "n": n, "d": args.d, "status": "extrapolated",
                     "analytic_alloc_gb": fused_bytes(n, args.d) / GiB}
            if measured:
                big = max(measured, key=lambda r: r["n"])
                fused["op_peak_gb"] = big["op_peak_gb"] * n / big["n"]
                fused["extrapolated_from_n"] = big["n"]
            else:
                fused["op_peak_gb"] = fused["analytic_alloc_gb"]
        for r in (plain, fused):
            records.append(r)
            if out:
                out.write(json.dumps(r) + "\n")
                out.flush()

        def cell(r):
            if r["status"] == "ok":
                return f"{r['op_peak_gb']:>18.3f} {r['seconds']:>7.2f}"
            if r["status"] == "extrapolated":
                return f"{r['op_peak_gb']:>7.3f} (linear est.) {'-':>7}"
            return f"{r['status']:>18} {'-':>7}"

        print(f"{n:>7} | {cell(plain)} | {cell(fused)}", flush=True)

    ok = [r for r in records if r["impl"] == "plain" and r["status"] == "ok"]
    if ok:
        # the largest measured point: small N is dominated by fixed overheads, not the N^2 terms
        big_plain = max(ok, key=lambda r: r["n"])
        per_n2 = big_plain["op_peak_gb"] * GiB / big_plain["n"] ** 2
        limit_n = int((args.machine_gb * GiB / per_n2) ** 0.5)
        print(f"plain loss: {per_n2:.1f} bytes per N^2 at peak (measured at N={big_plain['n']}) -> exceeds "
              f"{args.machine_gb:g} GB from N ~ {limit_n}; at N=65536 it would need "
              f"{per_n2 * 65536 ** 2 / GiB:.0f} GB", flush=True)
        fused_ok = [r for r in records if r["impl"] == "fused" and r["status"] == "ok"]
        if fused_ok:
            big = max(fused_ok, key=lambda r: r["n"])
            print(f"fused loss: measured {big['op_peak_gb']:.3f} GB at N={big['n']} in the interpreter (its own "
                  f"allocations: {fused_bytes(big['n'], args.d) / GiB:.3f} GB analytic); at N=65536 "
                  f"{big['op_peak_gb'] * 65536 / big['n']:.2f} GB by linear scaling, "
                  f"{fused_bytes(65536, args.d) / GiB:.3f} GB analytic", flush=True)
    if out:
        out.close()


if __name__ == "__main__":
    main()
