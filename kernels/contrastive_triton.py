"""Fused symmetric InfoNCE (the ITC loss) in Triton, memory O(N*d) instead of O(N^2).

S = I T^T / temp for gathered image/text features I, T (N, d). With P the positives (pairs that
share an image id; the diagonal when no ids are given) and c_i the number of positives of row i,

    loss = ( mean_i [lse_j S_ij - mean_{j in P(i)} S_ij] + mean_j [lse_i S_ij - mean_{i in P(j)} S_ij] ) / 2

which is the reference's cross entropy against targets uniform over positives, in both directions.

Forward: one pass over tiles of S per direction (the column pass is the row pass with I and T
swapped, since S^T = T I^T / temp), each keeping a running log-sum-exp and the running positive
sum; only four length-N vectors are kept. Backward: the gradient of the scores is

    G_ij = g / (2N) * ( softmax_row(S)_ij + softmax_col(S)_ij - P_ij (1/c_i + 1/c_j) )

recomputed tile by tile from the saved log-sum-exps; dI = G T / temp, dT = G^T I / temp (the same
kernel with the roles swapped: G^T has the same form) and dtemp = -sum(G * S) / temp, summed
per row in the kernel. Nothing of size N x N is ever allocated.

The features are already gathered from all ranks; the model's gather-with-grad hands each rank
the gradient of its local slice, so this op needs nothing distributed.
"""
from __future__ import annotations

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

MAX_FEATURE_DIM = 512


@triton.jit
def _row_lse_pos(
    A, B, IDA, IDB, TEMP, LSE, POS, CNT,
    N, d, sa0, sa1, sb0, sb1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Rows of A against all rows of B: log-sum-exp over j of S_ij = <a_i, b_j>/temp, the mean of
    S_ij over positives j (same id) and the positive count."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    d_ok = offs_d < d
    a = tl.load(A + rows[:, None] * sa0 + offs_d[None, :] * sa1, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    ida = tl.load(IDA + rows, mask=row_ok, other=0)
    inv_t = 1.0 / tl.load(TEMP).to(ACC)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l_i = tl.zeros((BLOCK_M,), dtype=ACC)
    pos = tl.zeros((BLOCK_M,), dtype=ACC)
    cnt = tl.zeros((BLOCK_M,), dtype=ACC)
    for start in range(0, N, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < N
        bt = tl.load(B + cols[None, :] * sb0 + offs_d[:, None] * sb1, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        s = mm(a, bt, ACC, UPCAST) * inv_t
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
        idb = tl.load(IDB + cols, mask=col_ok, other=0)
        hit = (ida[:, None] == idb[None, :]) & col_ok[None, :]
        pos += tl.sum(tl.where(hit, s, 0.0), 1)
        cnt += tl.sum(hit.to(ACC), 1)

    tl.store(LSE + rows, m_i + tl.log(l_i), mask=row_ok)
    tl.store(POS + rows, pos / tl.where(cnt > 0, cnt, 1.0), mask=row_ok)
    tl.store(CNT + rows, cnt, mask=row_ok)


@triton.jit
def _row_grad(
    A, B, IDA, IDB, TEMP, LSE_A, LSE_B, CNT_A, CNT_B, DA, GS,
    N, d, sa0, sa1, sb0, sb1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """dA_i = sum_j G'_ij b_j / temp with G' = G * 2N / g recomputed from the saved log-sum-exps;
    GS_i = sum_j G'_ij S_ij (the temperature's gradient, summed over rows by the caller)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    d_ok = offs_d < d
    a = tl.load(A + rows[:, None] * sa0 + offs_d[None, :] * sa1, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    ida = tl.load(IDA + rows, mask=row_ok, other=0)
    lse_a = tl.load(LSE_A + rows, mask=row_ok, other=float("inf"))
    inv_ca = 1.0 / tl.load(CNT_A + rows, mask=row_ok, other=1.0)
    inv_t = 1.0 / tl.load(TEMP).to(ACC)

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    gs = tl.zeros((BLOCK_M,), dtype=ACC)
    for start in range(0, N, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < N
        b = tl.load(B + cols[:, None] * sb0 + offs_d[None, :] * sb1, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        s = mm(a, tl.trans(b), ACC, UPCAST) * inv_t
        lse_b = tl.load(LSE_B + cols, mask=col_ok, other=float("inf"))
        inv_cb = 1.0 / tl.load(CNT_B + cols, mask=col_ok, other=1.0)
        idb = tl.load(IDB + cols, mask=col_ok, other=0)
        valid = row_ok[:, None] & col_ok[None, :]
        hit = (ida[:, None] == idb[None, :]) & valid
        g = tl.exp(s - lse_a[:, None]) + tl.exp(s - lse_b[None, :])
        g -= tl.where(hit, inv_ca[:, None] + inv_cb[None, :], 0.0)
        g = tl.where(valid, g, 0.0)
        acc += mm(g.to(b.dtype), b, ACC, UPCAST)
        gs += tl.sum(g * s, 1)

    tl.store(DA + rows[:, None] * d + offs_d[None, :], acc * inv_t, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(GS + rows, gs, mask=row_ok)


def launch_config(dtype: torch.dtype, n: int, d: int) -> dict:
    """Fixed tile sizes and launch options (no autotuning without a GPU). Each program holds a
    (BLOCK_M, d) row tile and streams (BLOCK_N, d) tiles; fp32 (IEEE products, 4-byte operands)
    uses 32-row tiles at d >= 256 and two pipeline stages to stay under ~100 KB of shared memory
    (checked by tests/test_kernels_compile.py)."""
    block_d = max(16, triton.next_power_of_2(d))
    if INTERPRETED:
        # Few, large tiles: the interpreter's cost is per tile, not per element.
        cap = 128
    elif dtype in (torch.float32, torch.float64):
        cap = 32 if block_d >= 256 else 64
    else:
        cap = 64 if block_d <= 256 else 32
    block = pick_block(n, cap)
    return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d, ACC=acc_dtype(dtype), UPCAST=upcast_dot(dtype),
                num_warps=8 if block_d >= 256 else 4, num_stages=2 if dtype in (torch.float32, torch.float64) or block_d > 256 else 3)


class _TritonContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image_feat, text_feat, temp, ids):
        n, d = image_feat.shape
        acc_t = torch.float64 if image_feat.dtype == torch.float64 else torch.float32
        meta = launch_config(image_feat.dtype, n, d)
        grid = (triton.cdiv(n, meta["BLOCK_M"]),)
        stats = torch.empty((6, n), device=image_feat.device, dtype=acc_t)
        lse_r, pos_r, cnt, lse_c, pos_c, cnt_c = stats.unbind(0)
        with launch_device(image_feat):
            _row_lse_pos[grid](image_feat, text_feat, ids, ids, temp, lse_r, pos_r, cnt, n, d,
                               *image_feat.stride(), *text_feat.stride(), **meta)
            _row_lse_pos[grid](text_feat, image_feat, ids, ids, temp, lse_c, pos_c, cnt_c, n, d,
                               *text_feat.stride(), *image_feat.stride(), **meta)
        loss = ((lse_r - pos_r).mean() + (lse_c - pos_c).mean()) / 2
        ctx.save_for_backward(image_feat, text_feat, temp, ids, lse_r, lse_c, cnt)
        ctx.meta = meta
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        image_feat, text_feat, temp, ids, lse_r, lse_c, cnt = ctx.saved_tensors
        meta = ctx.meta
        n, d = image_feat.shape
        acc_t = lse_r.dtype
        grid = (triton.cdiv(n, meta["BLOCK_M"]),)
        d_img = torch.empty((n, d), device=image_feat.device, dtype=acc_t)
        d_txt = torch.empty((n, d), device=image_feat.device, dtype=acc_t)
        gs = torch.empty((2, n), device=image_feat.device, dtype=acc_t)
        with launch_device(image_feat):
            _row_grad[grid](image_feat, text_feat, ids, ids, temp, lse_r, lse_c, cnt, cnt, d_img, gs[0], n, d,
                            *image_feat.stride(), *text_feat.stride(), **meta)
            _row_grad[grid](text_feat, image_feat, ids, ids, temp, lse_c, lse_r, cnt, cnt, d_txt, gs[1], n, d,
                            *text_feat.stride(), *image_feat.stride(), **meta)
        # G = g/(2N) * G'; the kernels computed with G'.
        factor = grad_loss.to(acc_t) / (2 * n)
        d_img = (d_img * factor).to(image_feat.dtype) if ctx.needs_input_grad[0] else None
        d_txt = (d_txt * factor).to(text_feat.dtype) if ctx.needs_input_grad[1] else None
        d_temp = None
        if ctx.needs_input_grad[2]:
            d_temp = (-(gs[0].sum() * factor) / temp.to(acc_t)).to(temp.dtype).reshape(temp.shape)
        return d_img, d_txt, d_temp, None


def triton_contrastive_loss(image_feat, text_feat, temp, image_ids=None):
    """Fused ITC loss; same contract as ``reference.contrastive_loss_reference``. Returns an fp32
    scalar (fp64 for fp64 inputs, so gradcheck can run)."""
    reason = ineligible_reason(image_feat, text_feat, temp, image_ids, allow_interpret=True)
    if reason is not None:
        raise ValueError(f"triton_contrastive_loss: {reason}")
    if not isinstance(temp, torch.Tensor):
        temp = torch.tensor(float(temp), device=image_feat.device, dtype=torch.float32)
    if image_ids is None:
        # The diagonal pairing is the special case "every row its own id".
        ids = torch.arange(image_feat.shape[0], device=image_feat.device)
    else:
        ids = image_ids.reshape(-1).to(torch.int64).contiguous()
    return _TritonContrastive.apply(image_feat, text_feat, temp.reshape(()), ids)


def ineligible_reason(image_feat, text_feat, temp, image_ids, allow_interpret: bool) -> str | None:
    """None when the fused loss can compute this call, else a sentence saying why not."""
    if not isinstance(image_feat, torch.Tensor) or not isinstance(text_feat, torch.Tensor):
        return "image_feat and text_feat must be torch tensors"
    if image_feat.dim() != 2 or image_feat.shape != text_feat.shape:
        return (f"image_feat and text_feat must both be (N, d), got {tuple(image_feat.shape)} and "
                f"{tuple(text_feat.shape)}")
    n, d = image_feat.shape
    if n == 0 or d == 0:
        return "empty features"
    if d > MAX_FEATURE_DIM:
        return f"feature dim {d} > {MAX_FEATURE_DIM} is not supported"
    tensors = [image_feat, text_feat]
    if isinstance(temp, torch.Tensor):
        if temp.numel() != 1:
            return f"temp must be a scalar, got shape {tuple(temp.shape)}"
        if not temp.is_floating_point():
            return f"temp must be a float tensor, got {temp.dtype}"
        tensors.append(temp)
    elif not isinstance(temp, (float, int)):
        return f"temp must be a scalar tensor or a number, got {type(temp).__name__}"
    if image_ids is not None:
        if not isinstance(image_ids, torch.Tensor) or image_ids.numel() != n:
            return f"image_ids must be a tensor of {n} ids"
        if image_ids.is_floating_point() or image_ids.is_complex():
            return f"image_ids must be integers, got {image_ids.dtype}"
        tensors.append(image_ids)
    return device_reason(tensors, allow_interpret) or dtype_reason([image_feat, text_feat], ["image_feat", "text_feat"])


__all__ = ["triton_contrastive_loss", "ineligible_reason"]
