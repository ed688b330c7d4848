"""The dispatcher picks the path it is asked for, per op, and never falls back silently."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import xfm.kernels as K
from xfm.kernels.dispatch import KernelUnavailableError


def _attn_inputs():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 16, generator=g).requires_grad_() for _ in range(3))
    return q, k, v


def _itc_inputs():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1).requires_grad_()
    return img, txt, torch.tensor(0.07, requires_grad=True)


def _path(out):
    name = type(out.grad_fn).__name__
    return "triton" if name.startswith("_Triton") else "torch"


def test_auto_on_cpu_takes_the_reference_even_when_interpreting():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert _path(K.attention(*_attn_inputs())) == "torch"
    assert _path(K.contrastive_loss(*_itc_inputs())) == "torch"
    assert _path(K.attention(*_attn_inputs(), backend="auto")) == "torch"


def test_triton_backend_runs_the_triton_kernels_in_the_interpreter():
    assert _path(K.attention(*_attn_inputs(), backend="triton")) == "triton"
    assert _path(K.contrastive_loss(*_itc_inputs(), backend="triton")) == "triton"


def test_triton_where_it_cannot_run_is_a_clear_error():
    with pytest.raises(KernelUnavailableError, match="attention=triton cannot run here: attention dropout_p"):
        K.attention(*_attn_inputs(), dropout_p=1.0, backend="triton")
    with pytest.raises(KernelUnavailableError, match="attention=triton cannot run here: head dim 256"):
        K.attention(*(torch.zeros(1, 1, 2, 256) for _ in range(3)), backend="triton")
    # dropout runs fused; on CPU auto still takes the reference
    assert _path(K.attention(*_attn_inputs(), dropout_p=0.1, backend="triton")) == "triton"
    assert _path(K.attention(*_attn_inputs(), dropout_p=0.1, backend="auto")) == "torch"
    img, txt, temp = _itc_inputs()
    with pytest.raises(KernelUnavailableError, match="contrastive=triton cannot run here: image_feat and text_feat"):
        K.contrastive_loss(img, txt[:3], temp, backend="triton")


def test_set_backend_and_backend_scope_select_per_op():
    assert K.get_backend("attention") == "auto" and K.get_backend("contrastive") == "auto"
    with K.backend_scope(attention="triton"):
        assert _path(K.attention(*_attn_inputs())) == "triton"
        assert _path(K.contrastive_loss(*_itc_inputs())) == "torch"
    with K.backend_scope(contrastive="triton"):
        assert _path(K.attention(*_attn_inputs())) == "torch"
        assert _path(K.contrastive_loss(*_itc_inputs())) == "triton"
        # an explicit backend= on the call wins over the scope
        assert _path(K.contrastive_loss(*_itc_inputs(), backend="torch")) == "torch"
    assert K.get_backend("attention") == "auto" and K.get_backend("contrastive") == "auto"
    K.set_backend(attention="triton", contrastive="torch")
    try:
        assert _path(K.attention(*_attn_inputs())) == "triton"
        assert _path(K.contrastive_loss(*_itc_inputs())) == "torch"
    finally:
        K.set_backend(attention="auto", contrastive="auto")
    with pytest.raises(ValueError, match="backend must be one of"):
        K.set_backend(attention="cuda")


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    # A fresh process without TRITON_INTERPRET: triton compiles for a GPU, so CPU tensors cannot run.
    code = textwrap.dedent(
        """
        import torch, xfm.kernels as K
        from xfm.kernels.dispatch import KernelUnavailableError
        q = torch.randn(1, 1, 4, 16)
        assert type(K.attention(q, q, q).grad_fn).__name__ != "_TritonAttentionBackward"
        for call in (lambda: K.attention(q, q, q, backend="triton"),
                     lambda: K.contrastive_loss(q[0, 0], q[0, 0], torch.tensor(0.1), backend="triton")):
            try:
                call()
            except KernelUnavailableError as e:
                print("ERROR:", e)
            else:
                raise SystemExit("no error")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 2
    assert "attention=triton cannot run here" in lines[0] and "TRITON_INTERPRET=1" in lines[0]
    assert "contrastive=triton cannot run here" in lines[1] and "TRITON_INTERPRET=1" in lines[1]


def test_auto_on_eligible_inputs_takes_triton_for_the_contrastive_loss_only(monkeypatch):
    """The measured policy: on a GPU ``auto`` runs the fused contrastive loss but SDPA for
    attention (host overhead per call, BENCHMARKS.md "GPU"). The interpreter stands in for CUDA."""
    from xfm.kernels import dispatch, selfcheck

    monkeypatch.setattr(dispatch, "_interpreter_allowed", lambda choice: dispatch.interpret_mode())
    monkeypatch.setenv(selfcheck.ENV, "0")  # the path alone is under test, not the first-use check
    assert _path(K.attention(*_attn_inputs(), backend="auto")) == "torch"
    assert _path(K.contrastive_loss(*_itc_inputs(), backend="auto")) == "triton"
    assert _path(K.attention(*_attn_inputs(), backend="triton")) == "triton"  # still selectable
    # control: the policy table is the switch; turned on, auto takes the fused attention too
    monkeypatch.setitem(dispatch.AUTO_TAKES_TRITON, "attention", True)
    assert _path(K.attention(*_attn_inputs(), backend="auto")) == "triton"
