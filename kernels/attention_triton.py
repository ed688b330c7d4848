"""Fused scaled-dot-product attention in Triton (FlashAttention-2 style), forward and backward.

softmax(q k^T * scale + mask) v for q (B, H, Lq, D), k/v (B, H, Lk, D): self- and cross-attention,
any lengths, head dims up to 128 (32/64/128 in the model), fp16/bf16/fp32 (fp32 accumulation) and
fp64 (interpreter only). The forward streams key tiles through an online softmax and saves only the
output and the per-row log-sum-exp; the backward recomputes the probabilities tile by tile from the
log-sum-exp (one kernel for dK/dV, one for dQ, so no atomics and deterministic results).

The additive mask is anything broadcastable to (B, H, Lq, Lk): key padding (B, 1, 1, Lk), box-
restricted keys, BEiT's relative position bias (1, H, L, L), or their sum. It is read through
broadcast (zero) strides, never expanded in memory. When the mask requires grad (the relative
position bias is a parameter), its gradient is produced: dS, the gradient of the pre-softmax
scores, is written in fp32 at (B, H, Lq, Lk) and summed over the broadcast dimensions. That buffer
is O(B*H*Lq*Lk), like the reference's attention matrix, and is only allocated when the mask needs
a gradient.

Attention dropout (``dropout_p`` in [0, 1)) is fused too: the keep/drop decision of score (b, h, i, j)
is one Philox draw, ``tl.rand(seed, (b*H + h)*Lq*Lk + i*Lk + j) >= p``, so the forward and both
backward kernels recompute the same mask from (seed, position) and nothing of size Lq x Lk is
stored. Kept probabilities are scaled by 1/(1-p) after the softmax, as in
``F.scaled_dot_product_attention``; the log-sum-exp is that of the undropped scores. The seed is
drawn from torch's CPU generator at each call, so ``torch.manual_seed`` reproduces a run and
activation checkpointing (which restores the RNG state before recomputing) recomputes the same
mask. ``dropout_keep_mask`` writes the mask out, for the tests' reference
(``reference.attention_with_keep_mask``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_common import (
    INTERPRETED,
    acc_dtype,
    device_reason,
    dtype_reason,
    launch_device,
    mm,
    pick_block,
    upcast_dot,
)

MAX_HEAD_DIM = 128
SEED_BOUND = 2 ** 31 - 1  # seeds stay int32 kernel arguments


@triton.jit
def _keep(seed, pid_bh, rows, cols, Lq, Lk, dropout_p):
    """Dropout keep-mask of the score tile (rows, cols) of head ``pid_bh``: one Philox draw per
    (batch*head, query, key) position (int64 offsets: unique for any tensor size)."""
    offs = (pid_bh.to(tl.int64) * Lq + rows[:, None]) * Lk + cols[None, :]
    return tl.rand(seed, offs) >= dropout_p


@triton.jit
def _scores(q, kt, M, b, h, rows, cols, row_ok, col_ok, smb, smh, smm, smn, scale,
            HAS_MASK: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """Pre-softmax score tile q k^T * scale + mask: the forward and both backward kernels
    recompute it the same way (the mask is read through its broadcast strides)."""
    s = mm(q, kt, ACC, UPCAST) * scale
    if HAS_MASK:
        s += tl.load(M + b * smb + h * smh + rows[:, None] * smm + cols[None, :] * smn,
                     mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)
    return s


@triton.jit
def _bwd_tile(q, kt, vt, do, lse, delta, M, b, h, pid_bh, rows, cols, row_ok, col_ok,
              smb, smh, smm, smn, Lq, Lk, scale, seed, dropout_p, dropout_scale,
              HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """Backward of one (query tile, key tile): returns (P as it multiplied V in the forward, dS).

    P is recomputed from the log-sum-exp. With dropout, O = (P * Z / (1-p)) V: dV takes the
    dropped, rescaled P, and dP gets the same mask and scale before dS = P (dP - delta)."""
    s = _scores(q, kt, M, b, h, rows, cols, row_ok, col_ok, smb, smh, smm, smn, scale,
                HAS_MASK, ACC, UPCAST)
    p = tl.exp(s - lse[:, None])
    p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
    dp = mm(do, vt, ACC, UPCAST)
    p_used = p
    if DROPOUT:
        keep = _keep(seed, pid_bh, rows, cols, Lq, Lk, dropout_p)
        p_used = tl.where(keep, p * dropout_scale, 0.0)
        dp = tl.where(keep, dp * dropout_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return p_used, ds


@triton.jit(do_not_specialize=["seed"])  # a new seed per call must not recompile
def _attn_fwd(
    Q, K, V, M, O, LSE,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smh, smm, smn,
    sob, soh, som, sod,
    H, Lq, Lk, D, scale, seed, dropout_p, dropout_scale,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Lq
    d_ok = offs_d < D

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l_i = tl.zeros((BLOCK_M,), dtype=ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)

    for start_n in range(0, Lk, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < Lk
        kt = tl.load(K + b * skb + h * skh + cols[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        s = _scores(q, kt, M, b, h, offs_m, cols, row_ok, col_ok, smb, smh, smm, smn, scale,
                    HAS_MASK, ACC, UPCAST)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row whose keys so far are all -inf keeps m = -inf; shift by 0 then to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_shift)
        p = tl.exp(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts every key, dropped or not
        if DROPOUT:
            p = tl.where(_keep(seed, pid_bh, offs_m, cols, Lq, Lk, dropout_p), p, 0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :] * svd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, ACC, UPCAST)
        m_i = m_new

    # A fully masked row (every key -inf) gets output 0 and lse +inf, so its gradients are 0.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if DROPOUT:
        out = out * dropout_scale
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
    lse = tl.where(empty, float("inf"), m_fin + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh * Lq + offs_m, lse, mask=row_ok)


@triton.jit(do_not_specialize=["seed"])  # a new seed per call must not recompile
def _attn_bwd_dkdv(
    Q, K, V, M, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smh, smm, smn,
    sdob, sdoh, sdom, sdod,
    H, Lq, Lk, D, scale, seed, dropout_p, dropout_scale,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """One program per key tile: loops over query tiles, accumulates dV = P^T dO, dK = dS^T Q."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = cols < Lk
    d_ok = offs_d < D

    k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + offs_d[None, :] * skd,
                mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :] * svd,
                mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    kt = tl.trans(k)
    vt = tl.trans(v)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)

    for start_m in range(0, Lq, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < Lq
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + b * sdob + h * sdoh + rows[:, None] * sdom + offs_d[None, :] * sdod,
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh * Lq + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * Lq + rows, mask=row_ok, other=0.0)
        p_used, ds = _bwd_tile(q, kt, vt, do, lse, delta, M, b, h, pid_bh, rows, cols, row_ok, col_ok,
                               smb, smh, smm, smn, Lq, Lk, scale, seed, dropout_p, dropout_scale,
                               HAS_MASK, DROPOUT, ACC, UPCAST)
        dv += mm(tl.trans(p_used.to(do.dtype)), do, ACC, UPCAST)
        dk += mm(tl.trans(ds.to(q.dtype)), q, ACC, UPCAST)

    dk = dk * scale
    # DK/DV are contiguous (B, H, Lk, D) buffers allocated by the wrapper.
    base = pid_bh * Lk * D
    tl.store(DK + base + cols[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=col_ok[:, None] & d_ok[None, :])
    tl.store(DV + base + cols[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=col_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["seed"])  # a new seed per call must not recompile
def _attn_bwd_dq(
    Q, K, V, M, DO, LSE, DELTA, DQ, DS,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smh, smm, smn,
    sdob, sdoh, sdom, sdod,
    H, Lq, Lk, D, scale, seed, dropout_p, dropout_scale,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, STORE_DS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """One program per query tile: loops over key tiles, accumulates dQ = dS K (and, when the
    mask needs a gradient, writes dS itself, which is that gradient before broadcast reduction)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < Lq
    d_ok = offs_d < D

    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + rows[:, None] * sdom + offs_d[None, :] * sdod,
                 mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * Lq + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * Lq + rows, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)

    for start_n in range(0, Lk, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < Lk
        kt = tl.load(K + b * skb + h * skh + cols[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        vt = tl.load(V + b * svb + h * svh + cols[None, :] * svn + offs_d[:, None] * svd,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        _, ds = _bwd_tile(q, kt, vt, do, lse, delta, M, b, h, pid_bh, rows, cols, row_ok, col_ok,
                          smb, smh, smm, smn, Lq, Lk, scale, seed, dropout_p, dropout_scale,
                          HAS_MASK, DROPOUT, ACC, UPCAST)
        if STORE_DS:
            tl.store(DS + pid_bh * Lq * Lk + rows[:, None] * Lk + cols[None, :], ds,
                     mask=row_ok[:, None] & col_ok[None, :])
        dq += mm(ds.to(kt.dtype), tl.trans(kt), ACC, UPCAST)

    dq = dq * scale
    tl.store(DQ + pid_bh * Lq * D + rows[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


def launch_config(dtype: torch.dtype, Lq: int, Lk: int, D: int) -> dict:
    """Fixed tile sizes and launch options (no autotuning: it cannot run without a GPU).

    Tiles follow the sequence lengths (30 -> 32, 197 -> 64; see ``pick_block``). fp32 takes IEEE
    products without tensor cores, whose operand tiles are twice as large: fewer pipeline stages
    (and 32-wide tiles at head dim 128) keep shared memory at or under ~100 KB per program on sm_80/90,
    which tests/test_kernels_compile.py checks by compiling for sm_90 without a GPU.
    """
    block_d = max(16, triton.next_power_of_2(D))
    wide = dtype == torch.float64 or (dtype == torch.float32 and block_d > 64)
    cap = 32 if wide else 64
    return dict(BLOCK_M=pick_block(Lq, cap), BLOCK_N=pick_block(Lk, cap), BLOCK_D=block_d,
                ACC=acc_dtype(dtype), UPCAST=upcast_dot(dtype), num_warps=4,
                num_stages=2 if dtype in (torch.float32, torch.float64) else 3)


def _mask_strides(mask, shape):
    if mask is None:
        return (0, 0, 0, 0)
    return mask.expand(shape).stride()


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, dropout_p, seed):
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        cfg = launch_config(q.dtype, Lq, Lk, D)
        block_m = cfg["BLOCK_M"]
        out = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
        acc_t = torch.float64 if q.dtype == torch.float64 else torch.float32
        lse = torch.empty((B * H, Lq), device=q.device, dtype=acc_t)
        m_arg = mask if mask is not None else q  # any pointer; never read without HAS_MASK
        grid = (triton.cdiv(Lq, block_m), B * H)
        with launch_device(q):
            _attn_fwd[grid](
                q, k, v, m_arg, out, lse,
                *q.stride(), *k.stride(), *v.stride(), *_mask_strides(mask, (B, H, Lq, Lk)), *out.stride(),
                H, Lq, Lk, D, scale, *_dropout_args(dropout_p, seed),
                HAS_MASK=mask is not None, DROPOUT=dropout_p > 0, **cfg,
            )
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale = scale
        ctx.dropout = (dropout_p, seed)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, lse = ctx.saved_tensors
        scale = ctx.scale
        cfg = ctx.cfg
        block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        acc_t = lse.dtype
        # delta_i = sum_d dO_id O_id, the row term of the softmax backward.
        delta = (dout.to(acc_t) * out.to(acc_t)).sum(-1).reshape(B * H, Lq).contiguous()
        dq = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
        dk = torch.empty((B, H, Lk, D), device=q.device, dtype=k.dtype)
        dv = torch.empty((B, H, Lk, D), device=q.device, dtype=v.dtype)
        mask_grad = mask is not None and ctx.needs_input_grad[3]
        ds = torch.empty((B, H, Lq, Lk), device=q.device, dtype=acc_t) if mask_grad else lse
        m_arg = mask if mask is not None else q
        common = (
            *q.stride(), *k.stride(), *v.stride(), *_mask_strides(mask, (B, H, Lq, Lk)), *dout.stride(),
            H, Lq, Lk, D, scale, *_dropout_args(*ctx.dropout),
        )
        meta = dict(HAS_MASK=mask is not None, DROPOUT=ctx.dropout[0] > 0, **cfg)
        with launch_device(q):
            _attn_bwd_dkdv[(triton.cdiv(Lk, block_n), B * H)](q, k, v, m_arg, dout, lse, delta, dk, dv, *common, **meta)
            _attn_bwd_dq[(triton.cdiv(Lq, block_m), B * H)](q, k, v, m_arg, dout, lse, delta, dq, ds, *common,
                                                           STORE_DS=mask_grad, **meta)
        dmask = ds.sum_to_size(mask.shape).to(mask.dtype) if mask_grad else None
        return dq, dk, dv, dmask, None, None, None


def _dropout_args(dropout_p: float, seed: int):
    return (int(seed), float(dropout_p), 1.0 / (1.0 - dropout_p))


@triton.jit
def _dropout_mask_kernel(KEEP, seed, dropout_p, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_bh = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, pid_bh, rows, cols, Lq, Lk, dropout_p)
    tl.store(KEEP + pid_bh.to(tl.int64) * Lq * Lk + rows[:, None] * Lk + cols[None, :], keep.to(tl.int8),
             mask=(rows < Lq)[:, None] & (cols < Lk)[None, :])


def dropout_keep_mask(shape, dropout_p: float, seed: int, device="cpu") -> torch.Tensor:
    """The (B, H, Lq, Lk) boolean keep-mask the fused kernels draw for ``seed`` (True = kept)."""
    B, H, Lq, Lk = shape
    keep = torch.empty((B, H, Lq, Lk), dtype=torch.int8, device=device)
    grid = (triton.cdiv(Lq, 32), triton.cdiv(Lk, 32), B * H)
    with launch_device(keep):
        _dropout_mask_kernel[grid](keep, int(seed), float(dropout_p), Lq, Lk, BLOCK_M=32, BLOCK_N=32)
    return keep.bool()


def triton_attention(q, k, v, mask=None, scale=None, dropout_p: float = 0.0, seed: int | None = None,
                     checked: bool = False):
    """Fused dropout(softmax(q k^T * scale + mask)) v; same contract as
    ``reference.attention_reference``. ``seed`` fixes the dropout mask (see
    ``dropout_keep_mask``); by default it is drawn from torch's CPU generator. The inputs are
    validated with ``ineligible_reason`` unless ``checked`` says the caller already did (the
    dispatcher, whose per-call host time is what the fused attention loses to SDPA on a GPU)."""
    if not checked:
        reason = ineligible_reason(q, k, v, mask, dropout_p, allow_interpret=True)
        if reason is not None:
            raise ValueError(f"triton_attention: {reason}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if mask is not None:
        # Same rounding as the reference (the mask is cast to the inputs' dtype), and 4-D so one
        # stride set covers every broadcast layout; both steps are differentiable views/casts.
        if mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        if mask.dim() < 4:
            mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    dropout_p = float(dropout_p or 0.0)
    if dropout_p > 0 and seed is None:
        # torch's CPU generator: seeded by torch.manual_seed, saved/restored by checkpointing, and
        # drawing from it needs no GPU synchronisation.
        seed = int(torch.randint(0, SEED_BOUND, (1,)).item())
    elif dropout_p > 0 and not 0 <= int(seed) < SEED_BOUND:
        raise ValueError(f"triton_attention: seed must be in [0, {SEED_BOUND}), got {seed}")
    return _TritonAttention.apply(q, k, v, mask, float(scale), dropout_p, 0 if dropout_p == 0 else int(seed))


def ineligible_reason(q, k, v, mask, dropout_p, allow_interpret: bool) -> str | None:
    """None when the fused kernel can compute this call, else a sentence saying why not."""
    if not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        return f"attention dropout_p must be a number in [0, 1), got {dropout_p!r}"
    tensors = [q, k, v] + ([mask] if mask is not None else [])
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "q, k, v (and mask) must be torch tensors"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v must be 4-D (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    B, H, Lq, D = q.shape
    if k.shape[:2] != (B, H) or k.shape != v.shape or k.shape[3] != D:
        return (f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                "(need k, v = (B, H, Lk, D) with q's B, H, D)")
    if min(B, H, Lq, k.shape[2], D) == 0:
        return "empty inputs"
    if D > MAX_HEAD_DIM:
        return f"head dim {D} > {MAX_HEAD_DIM} is not supported"
    reason = device_reason(tensors, allow_interpret) or dtype_reason([q, k, v], ["q", "k", "v"])
    if reason:
        return reason
    if mask is not None:
        if not mask.is_floating_point():
            return f"mask must be an additive float tensor, got {mask.dtype}"
        if mask.dim() > 4:
            return f"mask has {mask.dim()} dims; it must broadcast to (B, H, Lq, Lk)"
        # by hand, not torch.broadcast_shapes: this runs on every call, and on a GPU the host time
        # of each call is what the fused attention loses to SDPA (BENCHMARKS.md, "GPU")
        target = (B, H, Lq, k.shape[2])
        for m, t in zip(reversed(mask.shape), reversed(target)):
            if m != t and m != 1:
                return (f"mask shape {tuple(mask.shape)} does not broadcast to {target}" if t != 1 else
                        f"mask shape {tuple(mask.shape)} would enlarge the output beyond {target}")
    return None


__all__ = ["triton_attention", "ineligible_reason", "dropout_keep_mask", "INTERPRETED"]
