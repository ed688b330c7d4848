"""A first-use self-check of the fused kernels, per compiled configuration.

Triton compiles a kernel once per configuration: dtype, tile sizes (which follow the head dim and
the sequence lengths, see ``launch_config``), the mask and dropout switches, and the integer
specialisations Triton applies to lengths and strides (divisible by 16 or not, broadcast strides).
The CPU tests run the same kernels in the interpreter; the compiled GPU form (half-precision dot
products, GPU tiles) can still disagree on hardware nobody has tested. So the first time the
dispatcher takes the Triton path for a configuration, the fused op runs on small inputs of that
configuration, forward and backward, next to the torch reference computed in float64 from the same
inputs, and the two are compared. The verdict is cached per configuration for the process.

When the check runs: ``XFM_KERNEL_SELFCHECK=1`` always (the CPU tests, through the interpreter),
``0`` never, unset or ``auto`` on CUDA tensors only. What the dispatcher does with a failed check
(fall back to the reference with one warning, or raise) is ``dispatch``'s business; this module
only checks and remembers.

What is not covered: the check's inputs are contiguous, so a caller's unusual strides with the
same divisibility pattern are not checked separately; and a configuration is checked at its first
call's lengths, not at every length that maps to the same tiles.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .reference import attention_reference, attention_with_keep_mask, contrastive_loss_reference

log = logging.getLogger("xfm.kernels")

ENV = "XFM_KERNEL_SELFCHECK"

# Allowed max |fused - reference| relative to max |reference|, per input dtype. A kernel that is
# really broken (wrong tile bounds, garbage from an unsupported instruction) is off by O(1) or NaN;
# these bounds leave room for half-precision rounding (bf16 keeps 8 mantissa bits) and nothing more.
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-3, torch.float64: 1e-6}

_SEED = 1234  # inputs and the dropout seed: fixed, drawn from private generators
_MAX_ROWS = 256  # the contrastive check's largest N (its reference materialises N x N)


class KernelSelfCheckWarning(RuntimeWarning):
    """A fused kernel disagreed with the torch reference; the reference is used instead."""


@dataclass(frozen=True)
class KernelConfig:
    """What selects a distinct compiled kernel: the cache key of the check."""

    op: str
    device: str
    dtype: str
    fields: tuple[tuple[str, object], ...]

    def __str__(self) -> str:
        return f"{self.op} [{self.dtype}, " + ", ".join(f"{k} {v}" for k, v in self.fields) + f", {self.device}]"


@dataclass
class CheckResult:
    config: KernelConfig
    passed: bool
    errors: dict[str, float] = field(default_factory=dict)  # quantity -> relative max error
    tolerance: float = 0.0
    problem: str | None = None  # what disagreed (or what the fused op raised)
    shapes: str = ""  # the inputs the check ran on
    seconds: float = 0.0
    warned: bool = False  # set by the dispatcher once it has warned about this configuration

    def describe(self) -> str:
        what = "max |fused - reference| / max |reference|"
        if self.passed:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items())
            return (f"fused {self.config} agrees with the torch reference on {self.shapes} "
                    f"({what}: {errs}; tolerance {self.tolerance:.0e})")
        return (f"fused {self.config} DISAGREES with the torch reference on {self.shapes}: {self.problem}"
                + (f" ({what}, tolerance {self.tolerance:.0e})" if self.errors else ""))


_results: dict[KernelConfig, CheckResult] = {}


def enabled(device: torch.device) -> bool:
    """Whether calls on ``device`` are checked (see the module docstring)."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("1", "true", "yes", "on"):
        return True
    if mode in ("0", "false", "no", "off"):
        return False
    return device.type == "cuda"


def results() -> list[CheckResult]:
    """Every configuration checked so far in this process, in order."""
    return list(_results.values())


def clear() -> None:
    """Forget every verdict (the next call of each configuration is checked again)."""
    _results.clear()


def _relative_error(got: torch.Tensor | None, ref: torch.Tensor) -> float:
    if got is None:
        return math.inf
    got = got.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    if got.shape != ref.shape:
        return math.inf
    if not torch.isfinite(got).all():
        return math.inf
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _compare(dtype, got, ref, names) -> tuple[dict, str | None]:
    tol = TOLERANCE[dtype]
    errors = {n: _relative_error(g, r) for n, g, r in zip(names, got, ref)}
    bad = [f"{n} {e:.1e} > {tol:.0e}" if math.isfinite(e) else f"{n} not finite or wrong shape"
           for n, e in errors.items() if not e <= tol]
    return errors, ("; ".join(bad) or None)


def _run(config: KernelConfig, dtype: torch.dtype, body) -> CheckResult:
    """Run ``body`` (returns errors, problem, shapes) isolated from the caller's state and cache it."""
    start = time.perf_counter()
    device_type = config.device.split(":")[0]
    # The caller may be in no_grad / inference mode / autocast (an eval forward, a checkpointed
    # recompute): the check needs gradients and the inputs' own dtype. It draws from private
    # generators only, so the caller's RNG streams (dropout, resume equality) are untouched.
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
            errors, problem, shapes = body()
    except Exception as e:  # a compile or launch failure of the fused path is a failed check too
        errors, problem, shapes = {}, f"the check raised {type(e).__name__}: {e}", "small inputs"
    result = CheckResult(config, passed=problem is None, errors=errors, tolerance=TOLERANCE[dtype],
                         problem=problem, shapes=shapes, seconds=time.perf_counter() - start)
    _results[config] = result
    # logged, not warned: what a failure means (fallback or error) is the dispatcher's to say
    log.info("kernel self-check: %s", result.describe())
    return result


# --------------------------------------------------------------------------------------- attention
def _mask_layout(mask) -> str:
    if mask is None:
        return "none"
    # size-1 dims are read through a zero stride: what changes the compiled code is which dims
    # are broadcast, not the batch or head count
    dims = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    return "(" + ",".join("1" if d == 1 else n for d, n in zip(dims, ("B", "H", "Lq", "Lk"))) + ")"


def attention_config(q, k, v, mask=None, dropout_p: float = 0.0) -> KernelConfig:
    """The compiled configuration an ``attention`` call would run (inputs already eligible)."""
    from .attention_triton import launch_config

    _, _, Lq, D = q.shape
    Lk = k.shape[2]
    cfg = launch_config(q.dtype, Lq, Lk, D)
    fields = (
        ("head dim", D),
        ("tiles", f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_D']}"),
        ("mask", _mask_layout(mask)),
        ("mask grad", bool(mask is not None and mask.requires_grad)),
        ("dropout", bool(dropout_p > 0)),
        # Triton specialises integer arguments divisible by 16 (lengths, and through them strides)
        ("Lq%16", Lq % 16 == 0),
        ("Lk%16", Lk % 16 == 0),
    )
    return KernelConfig("attention", str(q.device), str(q.dtype).replace("torch.", ""), fields)


def check_attention(q, k, v, mask=None, dropout_p: float = 0.0) -> CheckResult:
    """Check (once per configuration) the fused attention of a call like ``attention(q, k, v, mask,
    dropout_p=...)`` on inputs of at most batch 2 x 2 heads, at the call's lengths and head dim."""
    config = attention_config(q, k, v, mask, dropout_p)
    if config in _results:
        return _results[config]
    return _run(config, q.dtype, lambda: _attention_body(q, k, v, mask, float(dropout_p)))


def _attention_body(q, k, v, mask, dropout_p):
    from . import attention_triton

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    b, h = min(B, 2), min(H, 2)
    device, dtype = q.device, q.dtype
    g = torch.Generator().manual_seed(_SEED)
    xs = [torch.randn(b, h, L, D, generator=g) for L in (Lq, Lk, Lk)]
    m = None
    if mask is not None:
        dims = (1,) * (4 - mask.dim()) + tuple(mask.shape)
        shape = [1 if d == 1 else n for d, n in zip(dims, (b, h, Lq, Lk))]
        m = 0.5 * torch.randn(shape, generator=g)
        if shape[3] > 1:
            # some keys masked out as the model's padding does, never all of a row's keys
            dropped = torch.rand(shape, generator=g) < 0.25
            dropped[..., 0] = False
            m = m.masked_fill(dropped, -10000.0)
    dout = torch.randn(b, h, Lq, D, generator=g)
    mask_grad = mask is not None and mask.requires_grad

    fq, fk, fv = (t.to(device, dtype).requires_grad_() for t in xs)
    fm = None if m is None else m.to(device, dtype).requires_grad_(mask_grad)
    fused = attention_triton.triton_attention(fq, fk, fv, fm, dropout_p=dropout_p, seed=_SEED)
    # the reference sees exactly the fused op's (rounded) inputs, in float64
    rq, rk, rv = (t.detach().double().requires_grad_() for t in (fq, fk, fv))
    rm = None if fm is None else fm.detach().double().requires_grad_(mask_grad)
    problem = None
    if dropout_p > 0:
        keep = attention_triton.dropout_keep_mask((b, h, Lq, Lk), dropout_p, _SEED, device=device)
        ref = attention_with_keep_mask(rq, rk, rv, rm, keep, dropout_p)
        # the keep-mask itself: about (1 - p) of the scores kept (6 sigma)
        n = keep.numel()
        kept = keep.double().mean().item()
        if abs(kept - (1 - dropout_p)) > 6 * math.sqrt(dropout_p * (1 - dropout_p) / n) + 1 / n:
            problem = f"the dropout keep-mask keeps {kept:.3f} of the scores, expected {1 - dropout_p:.3f}"
    else:
        ref = attention_reference(rq, rk, rv, rm)
    wrt_f = [fq, fk, fv] + ([fm] if mask_grad else [])
    wrt_r = [rq, rk, rv] + ([rm] if mask_grad else [])
    dout_d = dout.to(device)
    got = [fused, *torch.autograd.grad(fused, wrt_f, dout_d.to(dtype), allow_unused=True)]
    want = [ref, *torch.autograd.grad(ref, wrt_r, dout_d.double())]
    names = ["out", "dq", "dk", "dv", "dmask"][: len(got)]
    errors, disagree = _compare(dtype, got, want, names)
    problem = "; ".join(p for p in (disagree, problem) if p) or None
    shapes = f"q {tuple(fq.shape)}, k/v {tuple(fk.shape)}" + (f", mask {tuple(fm.shape)}" if fm is not None else "")
    return errors, problem, shapes


# ------------------------------------------------------------------------------------- contrastive
def contrastive_config(image_feat, text_feat, temp, image_ids=None) -> KernelConfig:
    """The compiled configuration a ``contrastive_loss`` call would run (inputs already eligible)."""
    from .contrastive_triton import launch_config

    n, d = image_feat.shape
    cfg = launch_config(image_feat.dtype, n, d)
    fields = (
        ("feature dim", d),
        ("tiles", f"{cfg['BLOCK_M']}x{cfg['BLOCK_D']}"),
        ("image ids", image_ids is not None),
        ("temp", str(temp.dtype).replace("torch.", "") if isinstance(temp, torch.Tensor) else "number"),
        ("N%16", n % 16 == 0),
    )
    return KernelConfig("contrastive", str(image_feat.device), str(image_feat.dtype).replace("torch.", ""), fields)


def _check_rows(n: int, d: int, dtype: torch.dtype) -> int:
    """A small N that runs the same compiled kernels as ``n`` (same tiles, same divisibility)."""
    from .contrastive_triton import launch_config

    if n <= _MAX_ROWS:
        return n
    target = launch_config(dtype, n, d)
    for m in range(_MAX_ROWS, 16, -1):
        if (m % 16 == 0) == (n % 16 == 0) and launch_config(dtype, m, d) == target:
            return m
    return n


def check_contrastive(image_feat, text_feat, temp, image_ids=None) -> CheckResult:
    """Check (once per configuration) the fused ITC loss of a call like ``contrastive_loss(...)``
    on at most 256 rows with the same tiles, feature dim and id handling."""
    config = contrastive_config(image_feat, text_feat, temp, image_ids)
    if config in _results:
        return _results[config]
    return _run(config, image_feat.dtype, lambda: _contrastive_body(image_feat, temp, image_ids))


def _contrastive_body(image_feat, temp, image_ids):
    from . import contrastive_triton

    n, d = image_feat.shape
    m = _check_rows(n, d, image_feat.dtype)
    device, dtype = image_feat.device, image_feat.dtype
    temp_dtype = temp.dtype if isinstance(temp, torch.Tensor) else torch.float32
    g = torch.Generator().manual_seed(_SEED)
    img = F.normalize(torch.randn(m, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(m, d, generator=g), dim=-1)  # positives resemble
    ids = torch.randint(0, max(1, m // 2), (m,), generator=g).to(device) if image_ids is not None else None

    fi, ft = img.to(device, dtype).requires_grad_(), txt.to(device, dtype).requires_grad_()
    fT = torch.tensor(0.07, device=device, dtype=temp_dtype, requires_grad=True)
    fused = contrastive_triton.triton_contrastive_loss(fi, ft, fT, ids)
    ri, rt, rT = (t.detach().double().requires_grad_() for t in (fi, ft, fT))
    ref = contrastive_loss_reference(ri, rt, rT, ids)
    got = [fused, *torch.autograd.grad(fused, [fi, ft, fT], allow_unused=True)]
    want = [ref, *torch.autograd.grad(ref, [ri, rt, rT])]
    errors, problem = _compare(dtype, got, want, ["loss", "d_image", "d_text", "d_temp"])
    return errors, problem, f"features ({m}, {d})" + (", repeated image ids" if ids is not None else "")
