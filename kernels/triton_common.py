"""Small pieces shared by the Triton kernels: whether they run in the interpreter, dtype maps,
the matmul helper that keeps the interpreter's arithmetic in fp32/fp64, and the eligibility
checks both ops share.

Why the interpreter flag is read here, once: ``triton.jit`` decides at decoration time (when the
kernel modules are imported) whether a kernel is compiled or interpreted, so what matters is the
environment when this package imported triton, not the environment at call time.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# fp32 accumulation for fp32 and the half types; fp64 keeps fp64 end to end (gradcheck).
_ACC = {torch.float16: tl.float32, torch.bfloat16: tl.float32, torch.float32: tl.float32, torch.float64: tl.float64}


def acc_dtype(dtype: torch.dtype):
    return _ACC[dtype]


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands are cast to the accumulation type first.

    On a GPU, half inputs go to the tensor cores as they are (fp32 accumulation); fp32/fp64 use
    IEEE products (no TF32) so the fused op matches the fp32 reference. Under the interpreter
    everything is upcast: its bf16 arithmetic is wrong (docs/DESIGN.md, Kernels).
    """
    return INTERPRETED or dtype in (torch.float32, torch.float64)


@triton.jit
def mm(a, b, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in ACC (see ``upcast_dot``)."""
    if UPCAST:
        out = tl.dot(a.to(ACC), b.to(ACC), input_precision="ieee", out_dtype=ACC)
    else:
        out = tl.dot(a, b, out_dtype=ACC)
    return out


def device_reason(tensors, allow_interpret: bool) -> str | None:
    """None when the tensors can run the Triton kernels on their device, else why not."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"inputs are on different devices ({sorted(str(d) for d in devices)})"
    device = devices.pop()
    if device.type == "cuda":
        if INTERPRETED:
            return ("TRITON_INTERPRET=1 was set when the kernels were imported, so they run in the "
                    "CPU interpreter and cannot take CUDA tensors")
        return None
    if device.type == "cpu":
        if not allow_interpret:
            return ("CPU tensors run the Triton kernels only in the interpreter (backend 'triton' with "
                    "TRITON_INTERPRET=1 set before triton is imported); otherwise use CUDA tensors or "
                    "backend 'torch'/'auto'")
        if not INTERPRETED:
            return ("TRITON_INTERPRET=1 was not set when triton/the kernels were imported, so CPU tensors "
                    "cannot run them; set it before anything imports triton")
        return None
    return f"device {device} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)"


def dtype_reason(tensors, names) -> str | None:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        return f"{'/'.join(names)} must share one dtype, got {[str(t.dtype) for t in tensors]}"
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64)"
    if dtype == torch.float64 and tensors[0].device.type == "cuda":
        # Triton's fp64 dot is not exercised on a GPU by this project's tests; take the reference.
        return "float64 on CUDA is not supported by the fused kernels (it runs only in the interpreter tests)"
    return None


def pick_block(length: int, cap: int) -> int:
    """The power-of-two tile (16..cap) that wastes least work on short sequences: padded length
    plus a per-tile overhead of 16 rows, so 30 tokens -> 32, 197 tokens -> 64 (not 128)."""
    candidates = [b for b in (16, 32, 64, 128) if b <= cap]
    return min(candidates, key=lambda b: (triton.cdiv(length, b) * (b + 16), -b))


def launch_device(t: torch.Tensor):
    """Triton launches on the current CUDA device and stream: make that the tensor's device."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
