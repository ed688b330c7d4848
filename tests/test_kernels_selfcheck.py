"""The first-use self-check of the fused kernels: a configuration whose fused op disagrees with the
reference falls back (``auto``, one warning) or raises (``triton``), once per configuration.

On CUDA ``auto`` takes the Triton path and the check runs by default. Here, on CPU, the check is
forced with XFM_KERNEL_SELFCHECK=1 and ``auto`` is let onto the interpreted Triton path (the
dispatcher's ``_interpreter_allowed``), so the GPU's decision path runs; a broken kernel is
simulated by wrapping the real one so it returns wrong values.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import xfm.kernels as K
from xfm.kernels import attention_triton, contrastive_triton, dispatch, selfcheck
from xfm.kernels.reference import attention_reference, contrastive_loss_reference


@pytest.fixture
def gpu_like(monkeypatch):
    """``auto`` behaves as on CUDA with every op sent to Triton: Triton path taken, every first use
    checked (the attention's ``auto`` policy is SDPA on CUDA; the mechanism is tested on it too)."""
    monkeypatch.setenv(selfcheck.ENV, "1")
    monkeypatch.setitem(dispatch.AUTO_TAKES_TRITON, "attention", True)
    monkeypatch.setattr(dispatch, "_interpreter_allowed", lambda choice: dispatch.interpret_mode())
    selfcheck.clear()
    yield
    selfcheck.clear()


class Calls:
    """Wraps a fused op, counting calls; ``corrupt`` turns its output wrong (or raising)."""

    def __init__(self, fn, corrupt=None):
        self.fn, self.corrupt, self.n = fn, corrupt, 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        out = self.fn(*args, **kwargs)
        return self.corrupt(out) if self.corrupt else out


def _attn(D=16, L=7, seed=0, bias_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, L, D, generator=g).requires_grad_() for _ in range(3))
    mask = torch.zeros(2, 1, 1, L)
    mask[1, ..., L - 2:] = -10000.0
    if bias_grad:
        mask = (0.3 * torch.randn(1, 3, L, L, generator=g)).requires_grad_()
    return q, k, v, mask


def _itc(n=12, d=8):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    return img, txt, torch.tensor(0.07, requires_grad=True), torch.arange(n) // 2


def _fused(out):
    return type(out.grad_fn).__name__.startswith("_Triton")


def _selfcheck_warnings(record):
    return [w for w in record if issubclass(w.category, K.KernelSelfCheckWarning)]


def test_agreeing_kernel_is_checked_once_then_used(gpu_like, monkeypatch):
    calls = Calls(attention_triton.triton_attention)
    monkeypatch.setattr(attention_triton, "triton_attention", calls)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = K.attention(*_attn())
        assert _fused(out) and calls.n == 2  # the check's call, then the real one
        out = K.attention(*_attn(seed=1))
        assert _fused(out) and calls.n == 3  # cached: no second check
    assert not _selfcheck_warnings(record)
    (result,) = selfcheck.results()
    assert result.passed and set(result.errors) == {"out", "dq", "dk", "dv"}
    assert max(result.errors.values()) < 1e-5
    # the same configuration at another head count is the same compiled code: no new check
    q, k, v, mask = _attn()
    K.attention(q[:, :1], k[:, :1], v[:, :1], mask)
    assert calls.n == 4 and len(selfcheck.results()) == 1


def test_disagreeing_kernel_falls_back_with_one_warning_per_configuration(gpu_like, monkeypatch):
    calls = Calls(attention_triton.triton_attention, corrupt=lambda out: out * 1.5)
    monkeypatch.setattr(attention_triton, "triton_attention", calls)
    q, k, v, mask = _attn()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = K.attention(q, k, v, mask)
        first = _selfcheck_warnings(record)
        again = K.attention(q, k, v, mask)
        after_second = _selfcheck_warnings(record)
        other = K.attention(*_attn(D=32))  # another head dim: another compiled kernel, checked
        after_other = _selfcheck_warnings(record)
    assert len(first) == 1 and len(after_second) == 1 and len(after_other) == 2
    msg = str(first[0].message)
    assert "kernels.attention" in msg and "DISAGREES" in msg and "head dim 16" in msg
    assert "out " in msg and "using the torch reference" in msg
    assert "head dim 32" in str(after_other[1].message)
    # the reference's output, exactly, and its gradients; the broken kernel ran only in the checks
    want = attention_reference(q, k, v, mask)
    assert not _fused(out) and torch.equal(out, want) and torch.equal(again, want)
    assert not _fused(other)
    assert calls.n == 2
    dq, = torch.autograd.grad(out.sum(), [q])
    assert torch.equal(dq, torch.autograd.grad(want.sum(), [q])[0])


def test_disagreeing_kernel_with_explicit_triton_raises_every_time(gpu_like, monkeypatch):
    calls = Calls(attention_triton.triton_attention, corrupt=lambda out: out + 0.1)
    monkeypatch.setattr(attention_triton, "triton_attention", calls)
    for _ in range(2):
        with pytest.raises(K.KernelSelfCheckError, match=r"kernels\.attention=triton: fused attention .*DISAGREES"
                                                         r".*out .*kernels\.attention=auto"):
            K.attention(*_attn(), backend="triton")
    assert calls.n == 1  # the verdict is cached; the error repeats without a new check
    assert isinstance(K.KernelSelfCheckError("x"), K.KernelUnavailableError)


def test_fused_op_that_raises_is_a_failed_check(gpu_like, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")
    monkeypatch.setattr(attention_triton, "triton_attention", broken)
    with pytest.warns(K.KernelSelfCheckWarning, match="raised RuntimeError: no kernel image"):
        out = K.attention(*_attn())
    assert not _fused(out)


def test_mask_gradient_and_dropout_are_checked_as_their_own_configurations(gpu_like):
    K.attention(*_attn(bias_grad=True))
    K.attention(*_attn(bias_grad=True), dropout_p=0.2)
    no_drop, drop = selfcheck.results()
    assert no_drop.passed and drop.passed, (no_drop.describe(), drop.describe())
    assert "dmask" in no_drop.errors and "dmask" in drop.errors
    assert dict(drop.config.fields)["dropout"] and not dict(no_drop.config.fields)["dropout"]
    assert dict(drop.config.fields)["mask grad"]


def test_contrastive_fallback_and_cache(gpu_like, monkeypatch):
    calls = Calls(contrastive_triton.triton_contrastive_loss, corrupt=lambda loss: loss * 0.5)
    monkeypatch.setattr(contrastive_triton, "triton_contrastive_loss", calls)
    img, txt, temp, ids = _itc()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss = K.contrastive_loss(img, txt, temp, ids)
        loss2 = K.contrastive_loss(img, txt, temp, ids)
    (w,) = _selfcheck_warnings(record)
    assert "kernels.contrastive" in str(w.message) and "loss " in str(w.message)
    want = contrastive_loss_reference(img, txt, temp, ids)
    assert torch.equal(loss, want) and torch.equal(loss2, want) and calls.n == 1
    with pytest.raises(K.KernelSelfCheckError, match="kernels.contrastive=triton"):
        K.contrastive_loss(img, txt, temp, ids, backend="triton")
    assert calls.n == 1


def test_contrastive_check_at_large_n_runs_small_with_the_same_kernel(gpu_like):
    n, d = 3000, 16
    img = F.normalize(torch.randn(n, d), dim=-1)
    result = selfcheck.check_contrastive(img, img, torch.tensor(0.07), torch.arange(n))
    assert result.passed, result.describe()
    rows = int(result.shapes.split("(")[1].split(",")[0])
    assert rows <= 256 and (rows % 16 == 0) == (n % 16 == 0)
    assert contrastive_triton.launch_config(img.dtype, rows, d) == contrastive_triton.launch_config(img.dtype, n, d)


def test_check_leaves_the_callers_state_alone(gpu_like):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with torch.no_grad():
        out = K.attention(*_attn())
    assert torch.equal(torch.get_rng_state(), before)  # dropout streams and resume unaffected
    assert out.grad_fn is None and selfcheck.results()[0].passed  # checked with gradients anyway


def test_switch(monkeypatch):
    selfcheck.clear()
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    assert selfcheck.enabled(torch.device("cuda", 0)) and not selfcheck.enabled(torch.device("cpu"))
    monkeypatch.setenv(selfcheck.ENV, "0")
    assert not selfcheck.enabled(torch.device("cuda", 0))
    # off: even a broken kernel is used as asked (the explicit triton path on the interpreter)
    calls = Calls(attention_triton.triton_attention, corrupt=lambda out: out * 1.5)
    monkeypatch.setattr(attention_triton, "triton_attention", calls)
    out = K.attention(*_attn(), backend="triton")
    assert calls.n == 1 and not selfcheck.results()
    assert not torch.allclose(out, attention_reference(*_attn()))


def test_configuration_key_follows_the_compiled_code():
    meta = dict(device="meta")

    def key(B, H, Lq, Lk, D, mask_shape=None, dtype=torch.bfloat16, grad=False, drop=0.0):
        q = torch.empty(B, H, Lq, D, dtype=dtype, **meta)
        k = torch.empty(B, H, Lk, D, dtype=dtype, **meta)
        m = None if mask_shape is None else torch.empty(mask_shape, dtype=dtype, **meta).requires_grad_(grad)
        return selfcheck.attention_config(q, k, k, m, drop)

    pad = key(96, 12, 30, 197, 64, (96, 1, 1, 197))
    assert pad == key(2, 2, 30, 197, 64, (2, 1, 1, 197))  # batch and heads: same kernel
    assert pad == key(2, 2, 31, 190, 64, (2, 1, 1, 190))  # same tiles and divisibility
    assert "mask (B,1,1,Lk)" in str(pad) and "tiles 32x64x64" in str(pad)
    for other in (key(96, 12, 30, 197, 64, (96, 1, 1, 197), dtype=torch.float16),
                  key(96, 12, 30, 197, 32, (96, 1, 1, 197)),
                  key(96, 12, 32, 197, 64, (96, 1, 1, 197)),  # Lq divisible by 16
                  key(96, 12, 30, 197, 64, (1, 12, 30, 197)),
                  key(96, 12, 30, 197, 64, (96, 1, 1, 197), grad=True),
                  key(96, 12, 30, 197, 64, (96, 1, 1, 197), drop=0.1),
                  key(96, 12, 30, 197, 64)):
        assert other != pad
