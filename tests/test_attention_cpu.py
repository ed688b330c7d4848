"""The reference attention's CPU forms equal ``F.scaled_dot_product_attention`` (the previous
reference) forward and backward, dropout included: same dropout mask under the same seed, and the
random stream left where SDPA leaves it (later draws unchanged)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xfm.kernels import reference
from xfm.kernels.reference import attention_reference

# (B, H, Lq, Lk, D, mask kind): the model's shape classes at tiny (D 16) and base (D 64) head dims
CASES = [
    (4, 4, 16, 16, 16, "keypad"),       # text self-attention
    (6, 4, 10, 17, 16, None),           # fusion cross-attention, every image token visible
    (6, 4, 10, 17, 16, "keypad"),       # fusion cross-attention to region tokens
    (3, 4, 17, 17, 16, "bias"),         # vision: relative position bias
    (3, 4, 17, 17, 16, "bias+keys"),    # vision region pass: bias + box key mask
    (2, 2, 30, 30, 64, "keypad"),
    (2, 2, 12, 50, 64, None),
    (2, 2, 50, 50, 64, "bias+keys"),
]


def _inputs(b, h, lq, lk, d, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, requires_grad=True) for n in (lq, lk, lk))
    if kind is None:
        mask = None
    elif kind == "keypad":
        keep = torch.rand(b, lk, generator=g) < 0.7
        keep[:, 0] = True
        mask = ((~keep).float() * -10000.0)[:, None, None, :]
    else:
        mask = torch.randn(1, h, lq, lk, generator=g)
        if kind == "bias+keys":
            keep = torch.rand(b, lk, generator=g) < 0.6
            keep[:, 0] = True
            mask = mask + ((~keep).float() * -1e9)[:, None, None, :]
    return q, k, v, mask


def _run(fn, q, k, v, mask, p, seed):
    torch.manual_seed(seed)
    out = fn(q, k, v, mask, p)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), (q, k, v))
    after = torch.rand(4)  # where the random stream was left
    return out, grads, after


def _sdpa(q, k, v, mask, p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


def _ours(q, k, v, mask, p):
    return attention_reference(q, k, v, mask, dropout_p=p)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[5]}")
def test_reference_equals_sdpa_forward_backward_and_rng(case, p):
    q, k, v, mask = _inputs(*case)
    ref_out, ref_grads, ref_after = _run(_sdpa, q, k, v, mask, p, seed=7)
    out, grads, after = _run(_ours, q, k, v, mask, p, seed=7)
    # fp32; the forms round alike (same sqrt(scale) on q and k); measured: bit-identical here
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
    assert torch.equal(after, ref_after), "the dropout path consumed the random stream differently"


def test_dropout_takes_the_plain_form_and_draws_a_real_mask(monkeypatch):
    q, k, v, mask = _inputs(4, 4, 16, 16, 16, "keypad")

    def no_sdpa(*a, **kw):
        raise AssertionError("SDPA called for dropout on CPU")

    monkeypatch.setattr(reference.F, "scaled_dot_product_attention", no_sdpa)
    torch.manual_seed(1)
    a = attention_reference(q, k, v, mask, dropout_p=0.3)
    torch.manual_seed(1)
    b = attention_reference(q, k, v, mask, dropout_p=0.3)
    torch.manual_seed(2)
    c = attention_reference(q, k, v, mask, dropout_p=0.3)
    no_drop = reference._attention_with_dropout(q, k, v, mask, 1e-12, None)
    assert torch.equal(a, b)  # reproducible under the seed
    assert not torch.allclose(a, c)  # control: another seed draws another mask
    assert not torch.allclose(a, no_drop)  # control: the mask is applied at all


def test_no_dropout_keeps_sdpa():
    q, k, v, mask = _inputs(3, 4, 17, 17, 16, "bias")
    with torch.no_grad():
        assert torch.equal(attention_reference(q, k, v, mask), _sdpa(q, k, v, mask, 0.0))
