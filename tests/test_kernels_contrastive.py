"""The fused Triton contrastive (ITC) loss equals the torch reference: loss and the gradients of
both feature sets and of the temperature, with and without repeated image ids.

Runs the Triton kernels in the interpreter (TRITON_INTERPRET=1 from conftest.py) on small N.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import xfm.kernels as K
from xfm.kernels import contrastive_triton


def _fused(loss):
    return type(loss.grad_fn).__name__ == "_TritonContrastiveBackward"


def _inputs(n, d, repeated_ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    # a region/caption batch repeats images: about three captions per image id, unsorted
    ids = torch.randint(0, max(1, n // 3), (n,), generator=g) if repeated_ids else None
    return img, txt, ids


def _run(img, txt, temp, ids, backend, dtype):
    i = img.to(dtype).requires_grad_()
    t = txt.to(dtype).requires_grad_()
    tp = torch.tensor(temp, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=True)
    loss = K.contrastive_loss(i, t, tp, ids, backend=backend)
    grads = torch.autograd.grad(loss, [i, t, tp])
    return loss, grads


@pytest.mark.parametrize(
    "n,d,repeated_ids",
    [
        (37, 32, False),    # N not a multiple of the tile
        (37, 32, True),     # soft targets over repeated ids
        (130, 256, False),  # the model's embed dim, three tiles, last one partial
        (130, 256, True),
        (5, 20, True),      # a single partial tile, d not a power of two
    ],
)
def test_contrastive_matches_reference_fp32(n, d, repeated_ids):
    img, txt, ids = _inputs(n, d, repeated_ids)
    loss, grads = _run(img, txt, 0.07, ids, "triton", torch.float32)
    assert _fused(loss)
    ref, ref_grads = _run(img, txt, 0.07, ids, "torch", torch.float32)
    assert not _fused(ref)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for name, g, r in zip(["d_image", "d_text", "d_temp"], grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_contrastive_repeated_ids_change_the_loss():
    # the soft targets are really used: all-distinct ids equal the diagonal loss, shared ids differ
    img, txt, _ = _inputs(12, 16, False)
    distinct = torch.arange(100, 112)
    shared = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 7])
    diag, _ = _run(img, txt, 0.1, None, "triton", torch.float32)
    with_distinct, _ = _run(img, txt, 0.1, distinct, "triton", torch.float32)
    with_shared, _ = _run(img, txt, 0.1, shared, "triton", torch.float32)
    ref_shared, _ = _run(img, txt, 0.1, shared, "torch", torch.float32)
    torch.testing.assert_close(diag, with_distinct)
    assert (diag - with_shared).abs() > 1e-3
    torch.testing.assert_close(with_shared, ref_shared)


def test_contrastive_fp64_gradcheck():
    img, txt, ids = _inputs(6, 4, True, seed=3)
    temp = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    xs = [img.requires_grad_(), txt.requires_grad_(), temp]

    def fn(i, t, tp):
        loss = K.contrastive_loss(i, t, tp, ids, backend="triton")
        assert _fused(loss) and loss.dtype == torch.float64
        return loss

    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_contrastive_fp64_matches_exact_reference():
    # The reference upcasts logits to fp32 only; the fused path keeps fp64 throughout, so compare
    # against the reference's formula evaluated in fp64 by hand.
    img, txt, ids = _inputs(21, 8, True, seed=4)
    loss, grads = _run(img, txt, 0.05, ids, "triton", torch.float64)
    i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    tp = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    logits = i @ t.t() / tp
    pos = (ids.view(-1, 1) == ids.view(1, -1)).double()
    targets = pos / pos.sum(1, keepdim=True)
    exact = (-(logits.log_softmax(1) * targets).sum(1).mean() - (logits.t().log_softmax(1) * targets).sum(1).mean()) / 2
    exact_grads = torch.autograd.grad(exact, [i, t, tp])
    torch.testing.assert_close(loss, exact, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, exact_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_contrastive_half_precision_close_to_fp64(dtype, tol):
    img, txt, ids = _inputs(70, 64, True)
    exact, exact_grads = _run(img, txt, 0.07, ids, "torch", torch.float64)
    loss, grads = _run(img, txt, 0.07, ids, "triton", dtype)
    assert _fused(loss) and loss.dtype == torch.float32
    for got, want in zip([loss, *grads], [exact, *exact_grads]):
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < tol, f"relative error {err:.4f} >= {tol}"
    assert grads[0].dtype == grads[1].dtype == dtype and grads[2].dtype == torch.float32


def test_contrastive_float_temperature_and_no_temp_grad():
    img, txt, _ = _inputs(9, 8, False)
    i = img.float().requires_grad_()
    loss = contrastive_triton.triton_contrastive_loss(i, txt.float(), 0.07)
    ref = K.contrastive_loss(i, txt.float(), torch.tensor(0.07), backend="torch")
    torch.testing.assert_close(loss, ref)
    (g,) = torch.autograd.grad(loss, [i])
    (r,) = torch.autograd.grad(ref, [i])
    torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


def test_contrastive_ineligible_reasons():
    img, txt, ids = [x.float() if x.is_floating_point() else x for x in _inputs(8, 4, True)]
    temp = torch.tensor(0.07)
    reason = contrastive_triton.ineligible_reason
    assert "(N, d)" in reason(img, txt[:5], temp, None, allow_interpret=True)
    assert "scalar" in reason(img, txt, torch.ones(2), None, allow_interpret=True)
    assert "ids" in reason(img, txt, temp, ids[:3], allow_interpret=True)
    assert "integers" in reason(img, txt, temp, ids.float(), allow_interpret=True)
    assert "dtype" in reason(img, txt.double(), temp, None, allow_interpret=True)
    assert "TRITON_INTERPRET" in reason(img, txt, temp, None, allow_interpret=False)
    assert reason(img, txt, temp, ids, allow_interpret=True) is None


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor, in bytes, any torch op creates while active (the interpreter's
    launches included: it views each argument as bytes)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_contrastive_never_allocates_n_by_n():
    """Memory O(N*d): no tensor of N x N elements in forward or backward (the tiles live inside the
    kernels). The same probe sees the reference's N x N logits, so it can tell the two apart."""
    n, d = 300, 8
    img, txt, ids = _inputs(n, d, True)
    for backend in ("triton", "torch"):
        i, t = img.float().requires_grad_(), txt.float().requires_grad_()
        temp = torch.tensor(0.07, requires_grad=True)
        with _LargestTensor() as fwd:
            loss = K.contrastive_loss(i, t, temp, ids, backend=backend)
        with _LargestTensor() as bwd:
            loss.backward()
        if backend == "triton":
            assert _fused(loss)
            # nothing bigger than one fp32 (N, d) feature gradient (N x N fp32 would be 37x more)
            assert fwd.largest <= 4 * n * d and bwd.largest <= 4 * n * d, (fwd.largest, bwd.largest)
        else:
            assert fwd.largest >= 4 * n * n and bwd.largest >= 4 * n * n
