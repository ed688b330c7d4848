"""The fused Triton attention equals the torch reference, forward and backward.

conftest.py sets TRITON_INTERPRET=1 before triton is imported, so ``backend="triton"`` runs the
Triton kernels themselves on CPU; every test checks that the fused autograd function was taken.
Shapes stay small: the interpreter costs a few ms per program instance.
"""
import pytest
import torch

import xfm.kernels as K
from xfm.kernels import attention_triton, reference


def _fused(out):
    return type(out.grad_fn).__name__ == "_TritonAttentionBackward"


def _inputs(B, H, Lq, Lk, D, mask_kind, dtype=torch.float64, seed=0):
    """q, k, v and an additive mask of the kinds the model passes, in fp64 (cast by the caller)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, Lk, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, Lk, D, generator=g, dtype=dtype)
    mask = None
    if mask_kind in ("pad", "bias+pad", "box"):
        # key padding: every batch row keeps a different number of keys (at least one)
        keep = torch.randint(1, Lk + 1, (B,), generator=g)
        mask = torch.zeros(B, 1, 1, Lk, dtype=dtype)
        for b in range(B):
            mask[b, ..., keep[b]:] = -10000.0
    if mask_kind == "box":
        # box-restricted keys: a contiguous window of keys per batch row (others large negative)
        mask = torch.full((B, 1, 1, Lk), torch.finfo(torch.float32).min, dtype=dtype)
        for b in range(B):
            lo = int(torch.randint(0, Lk, (1,), generator=g))
            mask[b, ..., lo:lo + 5] = 0.0
    if mask_kind in ("bias", "bias+pad"):
        bias = torch.randn(1, H, Lq, Lk, generator=g, dtype=dtype)
        mask = bias if mask is None else bias + mask
    return q, k, v, mask


def _run(q, k, v, mask, dout, backend, mask_grad):
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    m = None
    if mask is not None:
        m = mask.detach().clone().requires_grad_(mask_grad)
    out = K.attention(*xs, m, backend=backend)
    wrt = xs + ([m] if mask_grad else [])
    grads = torch.autograd.grad(out, wrt, dout)
    return out, grads


@pytest.mark.parametrize(
    "B,H,Lq,Lk,D,mask_kind,mask_grad",
    [
        (1, 2, 30, 30, 32, None, False),        # text self-attention
        (2, 1, 30, 197, 64, "pad", False),      # cross-attention 30 x 197, padded keys
        (1, 1, 17, 23, 128, "pad", False),      # odd lengths, head dim 128
        (1, 2, 33, 33, 64, "bias", True),       # BEiT relative position bias, with its gradient
        (2, 2, 13, 13, 32, "bias+pad", True),   # bias + padding, gradient reduced over the batch
        (3, 1, 9, 40, 32, "box", False),        # box-restricted image keys
    ],
)
def test_attention_matches_reference_fp32(B, H, Lq, Lk, D, mask_kind, mask_grad):
    q, k, v, mask = [t.float() if t is not None else None for t in _inputs(B, H, Lq, Lk, D, mask_kind)]
    dout = torch.randn(B, H, Lq, D)
    out, grads = _run(q, k, v, mask, dout, "triton", mask_grad)
    assert _fused(out)
    ref, ref_grads = _run(q, k, v, mask, dout, "torch", mask_grad)
    assert not _fused(ref)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for name, g, r in zip(["dq", "dk", "dv", "dmask"], grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_attention_mask_gradient_is_reduced_over_broadcast_dims():
    q, k, v, mask = _inputs(2, 2, 5, 7, 16, "bias")
    mask = mask.float().requires_grad_()
    out = K.attention(q.float(), k.float(), v.float(), mask, backend="triton")
    assert _fused(out)
    (g,) = torch.autograd.grad(out.square().sum(), [mask])
    assert g.shape == mask.shape == (1, 2, 5, 7)
    (r,) = torch.autograd.grad(K.attention(q.float(), k.float(), v.float(), mask, backend="torch").square().sum(), [mask])
    torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4)


def test_attention_non_contiguous_inputs_and_2d_mask():
    # the model's heads are a (B, L, H, D) view transposed to (B, H, L, D)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 11, 3, 32, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 19, 3, 32, generator=g).transpose(1, 2)
    v = torch.randn(2, 19, 3, 32, generator=g).transpose(1, 2)
    mask = torch.randn(11, 19, generator=g)
    out = K.attention(q, k, v, mask, scale=0.3, backend="triton")
    assert _fused(out)
    torch.testing.assert_close(out, K.attention(q, k, v, mask, scale=0.3, backend="torch"), atol=2e-5, rtol=1e-4)


def test_attention_fully_masked_row_matches_reference():
    q, k, v, _ = _inputs(1, 1, 4, 6, 16, None)
    mask = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    mask[0, 0, 1] = float("-inf")
    dout = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    out, grads = _run(q, k, v, mask, dout, "triton", False)
    ref, ref_grads = _run(q, k, v, mask, dout, "torch", False)
    assert _fused(out) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_attention_fp64_gradcheck():
    q, k, v, mask = _inputs(1, 2, 3, 5, 4, "bias")
    xs = [t.requires_grad_() for t in (q, k, v, mask)]

    def fn(q, k, v, m):
        out = K.attention(q, k, v, m, backend="triton")
        assert _fused(out)
        return out

    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("Lq,Lk,D,mask_kind", [(30, 197, 64, "bias"), (33, 33, 128, "bias"), (30, 197, 32, "box")])
def test_attention_half_precision_close_to_fp64(dtype, tol, Lq, Lk, D, mask_kind):
    """Half inputs with fp32 accumulation: the error against the exact (fp64) result stays within a
    few units of the half type's rounding, relative to the largest value. The box mask's fp32-min
    entries become -inf in fp16 (as the model's -1e9 does): those keys must still count as zero."""
    q, k, v, mask = _inputs(2, 2, Lq, Lk, D, mask_kind)
    mask_grad = mask_kind == "bias"
    dout = torch.randn(2, 2, Lq, D, dtype=torch.float64)
    exact, exact_grads = _run(q, k, v, mask, dout, "torch", mask_grad)
    out, grads = _run(q.to(dtype), k.to(dtype), v.to(dtype), mask.to(dtype), dout.to(dtype), "triton", mask_grad)
    assert _fused(out) and out.dtype == dtype
    for got, want in zip([out, *grads], [exact, *exact_grads]):
        assert got.dtype == dtype
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < tol, f"relative error {err:.4f} >= {tol}"


def test_attention_ineligible_reasons():
    q, k, v, mask = [t.float() for t in _inputs(1, 1, 4, 4, 16, "bias")]
    reason = attention_triton.ineligible_reason
    assert "dropout_p" in reason(q, k, v, None, 1.0, allow_interpret=True)
    assert reason(q, k, v, None, 0.1, allow_interpret=True) is None
    assert "float" in reason(q, k, v, mask < 0, 0.0, allow_interpret=True)
    assert "shapes do not match" in reason(q, k[..., :8], v, None, 0.0, allow_interpret=True)
    assert "head dim" in reason(*(torch.zeros(1, 1, 2, 256) for _ in range(3)), None, 0.0, allow_interpret=True)
    assert "broadcast" in reason(q, k, v, torch.zeros(1, 1, 3, 4), 0.0, allow_interpret=True)
    assert "dtype" in reason(q.int(), k.int(), v.int(), None, 0.0, allow_interpret=True)
    assert "TRITON_INTERPRET" in reason(q, k, v, None, 0.0, allow_interpret=False)
    assert reason(q, k, v, mask, 0.0, allow_interpret=True) is None


def test_inputs_are_validated_once_per_call(monkeypatch):
    """The dispatcher validates (to choose the path) and tells the kernel so: one
    ``ineligible_reason`` per call through ``K.attention``, while a direct call still validates
    and rejects bad input with the reason."""
    q, k, v, mask = [t.float() for t in _inputs(1, 1, 4, 4, 16, "bias")]
    real, seen = attention_triton.ineligible_reason, []

    def counting(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_triton, "ineligible_reason", counting)
    monkeypatch.setenv("XFM_KERNEL_SELFCHECK", "0")
    assert _fused(K.attention(q.requires_grad_(), k, v, mask, backend="triton"))
    assert len(seen) == 1
    attention_triton.triton_attention(q, k, v, mask)
    assert len(seen) == 2
    with pytest.raises(ValueError, match="triton_attention: shapes do not match"):
        attention_triton.triton_attention(q, k[..., :8], v)


def _padding_fraction(cfg, Lq, Lk):
    padded_q = -(-Lq // cfg["BLOCK_M"]) * cfg["BLOCK_M"]
    padded_k = -(-Lk // cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    return 1 - Lq * Lk / (padded_q * padded_k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_tiles_for_the_paper_shapes_do_not_waste_most_work_on_padding(dtype, D):
    """The GPU launch configs (the ones the compile test builds for sm_90) for text 30x30, image
    197x197 and cross 30x197: the share of score-tile work spent on padded rows/columns.
    Measured: 12.1%, 40.8% (22.7% for fp32 at D=128) and 27.9% (17.6%); a 128 tile would waste 94.5% at 30."""
    limits = {(30, 30): 0.15, (197, 197): 0.45, (30, 197): 0.30}
    for (Lq, Lk), limit in limits.items():
        frac = _padding_fraction(attention_triton.launch_config(dtype, Lq, Lk, D), Lq, Lk)
        assert frac < limit, f"{Lq}x{Lk} {dtype} D={D}: {frac:.1%} of the tile work is padding"



@pytest.mark.parametrize(
    "B,H,Lq,Lk,D,mask_kind,mask_grad",
    [
        (2, 1, 30, 197, 64, "pad", False),      # cross-attention 30 x 197 with padded keys
        (1, 2, 33, 33, 32, "bias", True),       # relative position bias with its gradient
    ],
)
def test_attention_dropout_matches_reference_with_the_same_mask(B, H, Lq, Lk, D, mask_kind, mask_grad):
    """Fused Philox dropout: forward and every gradient equal softmax(...) * keep / (1-p) @ v with
    the keep-mask the kernels draw for that seed (written out by ``dropout_keep_mask``)."""
    p, seed = 0.25, 1234
    q, k, v, mask = [t.float() if t is not None else None for t in _inputs(B, H, Lq, Lk, D, mask_kind)]
    dout = torch.randn(B, H, Lq, D)
    keep = attention_triton.dropout_keep_mask((B, H, Lq, Lk), p, seed)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    m = mask.clone().requires_grad_(mask_grad)
    out = attention_triton.triton_attention(*xs, m, dropout_p=p, seed=seed)
    assert _fused(out)
    ref = reference.attention_with_keep_mask(*xs, m, keep, p)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    wrt = xs + ([m] if mask_grad else [])
    for name, g, r in zip(["dq", "dk", "dv", "dmask"], torch.autograd.grad(out, wrt, dout), torch.autograd.grad(ref, wrt, dout)):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4, msg=lambda msg: f"{name}: {msg}")
    # the mask really is applied: without dropout the output differs
    assert (out - attention_triton.triton_attention(q, k, v, mask)).abs().max() > 1e-2


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_attention_dropout_half_precision_close_to_fp64(dtype, tol):
    p, seed = 0.1, 99
    q, k, v, mask = _inputs(2, 2, 30, 197, 64, "pad")
    dout = torch.randn(2, 2, 30, 64, dtype=torch.float64)
    keep = attention_triton.dropout_keep_mask((2, 2, 30, 197), p, seed)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    exact = reference.attention_with_keep_mask(*xs, mask, keep, p)
    exact_grads = torch.autograd.grad(exact, xs, dout)
    hs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention_triton.triton_attention(*hs, mask.to(dtype), dropout_p=p, seed=seed)
    grads = torch.autograd.grad(out, hs, dout.to(dtype))
    for got, want in zip([out, *grads], [exact, *exact_grads]):
        assert got.dtype == dtype
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < tol, f"relative error {err:.4f} >= {tol}"


def test_attention_dropout_mask_statistics():
    """About 1-p of the scores kept, independently per batch row, head and position; one seed is
    one mask, another seed another."""
    p = 0.1
    keep = attention_triton.dropout_keep_mask((2, 3, 64, 64), p, 42)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01  # 24576 draws: sd 0.002
    flat = keep.reshape(6, -1).float()
    for a in range(6):
        for b in range(a + 1, 6):  # two independent masks agree on p^2 + (1-p)^2 = 82% of positions
            assert abs((flat[a] == flat[b]).float().mean().item() - 0.82) < 0.03
    assert torch.equal(keep, attention_triton.dropout_keep_mask((2, 3, 64, 64), p, 42))
    assert not torch.equal(keep, attention_triton.dropout_keep_mask((2, 3, 64, 64), p, 43))


def test_attention_dropout_fp64_gradcheck():
    # fast_mode (random projections of the Jacobian): the interpreter's Philox makes each of the
    # full check's ~100 forward calls slow; the fixed seed makes the function deterministic.
    q, k, v, mask = _inputs(1, 2, 3, 6, 4, "bias")
    xs = [t.requires_grad_() for t in (q, k, v, mask)]
    assert torch.autograd.gradcheck(lambda *a: attention_triton.triton_attention(*a, dropout_p=0.3, seed=7), xs,
                                    eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_attention_dropout_seed_comes_from_torch_rng_and_survives_checkpointing():
    """Through the dispatcher (as the model calls it): torch.manual_seed reproduces the mask, a new
    draw gives another mask, and activation checkpointing recomputes the same mask in backward."""
    q, k, v, _ = [t.float() if t is not None else None for t in _inputs(1, 2, 9, 11, 16, None)]
    q.requires_grad_()  # so the output records which autograd function made it

    def attn(q, k, v):
        return K.attention(q, k, v, dropout_p=0.5, backend="triton")

    torch.manual_seed(5)
    first, second = attn(q, k, v), attn(q, k, v)
    torch.manual_seed(5)
    again = attn(q, k, v)
    assert _fused(first)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - second).abs().max() > 1e-2

    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(6)
    plain = torch.autograd.grad(attn(*xs).square().sum(), xs)
    torch.manual_seed(6)
    out = torch.utils.checkpoint.checkpoint(attn, *xs, use_reentrant=False)
    torch.manual_seed(99)  # the recompute must not depend on the RNG state at backward time
    ckpt = torch.autograd.grad(out.square().sum(), xs)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mask_shape_check_agrees_with_torch_broadcasting():
    """The eligibility check tests mask shapes by hand (host time per call); it must accept exactly
    the masks that broadcast to (B, H, Lq, Lk) without enlarging it, as torch.broadcast_shapes says."""
    import itertools

    B, H, Lq, Lk = 2, 3, 4, 5
    q = torch.randn(B, H, Lq, 8)
    k = v = torch.randn(B, H, Lk, 8)
    sizes = {0: (1, 2, 7), 1: (1, 3, 2), 2: (1, 4, 3), 3: (1, 5, 4)}
    for dims in (2, 3, 4):
        for shape in itertools.product(*[sizes[4 - dims + i] for i in range(dims)]):
            try:
                ok = torch.broadcast_shapes(shape, (B, H, Lq, Lk)) == (B, H, Lq, Lk)
            except RuntimeError:
                ok = False
            reason = attention_triton.ineligible_reason(q, k, v, torch.zeros(shape), 0.0, allow_interpret=True)
            assert (reason is None) == ok, (shape, reason)
            if not ok:
                assert "mask shape" in reason and str(tuple(shape)) in reason
