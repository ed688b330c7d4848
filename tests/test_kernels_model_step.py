"""A full tiny-model training step with both fused kernels forced through the Triton interpreter
equals the reference step: every loss and the gradient of every parameter.

The kernels are selected the way a user selects them, through ``ModelConfig.kernels`` (the model
passes ``kernels.attention`` to every attention layer and the objectives pass
``kernels.contrastive`` to the ITC loss), not through the global ``backend_scope``.

The pairs stream exercises padded-key text attention, BEiT's relative position bias (which needs
its gradient) in the vision encoder, the 1+N x L cross-attention of the fusion encoder and the
ITC loss with a repeated image id; the regions stream adds the box-restricted image attention.
"""
from dataclasses import replace

import pytest
import torch

from xfm.kernels import attention_triton, contrastive_triton, reference
from xfm.model_config import KernelsConfig
from fixtures_model import make_stream_batch


def _step(model, stream, batch):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # hard-negative sampling draws the same numbers in both runs
    losses = model(stream, batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _model(cfg, attention, contrastive, weights=None):
    from xfm.model import XFM

    torch.manual_seed(0)
    model = XFM(replace(cfg, kernels=KernelsConfig(attention=attention, contrastive=contrastive)))
    if weights is not None:
        model.load_state_dict(weights)
    return model.train()


def _count_calls(monkeypatch, fake: bool):
    """Count the calls that reach the Triton entry points; ``fake`` answers them with the torch
    reference (for wiring tests that need not pay for the interpreter)."""
    calls = {"attention": 0, "contrastive": 0, "dropout_p": set()}
    real_attention, real_contrastive = attention_triton.triton_attention, contrastive_triton.triton_contrastive_loss

    def counting_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, checked=False):
        calls["attention"] += 1
        calls["dropout_p"].add(dropout_p)
        if fake:
            return reference.attention_reference(q, k, v, mask, scale=scale, dropout_p=dropout_p)
        return real_attention(q, k, v, mask, scale=scale, dropout_p=dropout_p, checked=checked)

    def counting_contrastive(*args):
        calls["contrastive"] += 1
        return (reference.contrastive_loss_reference if fake else real_contrastive)(*args)

    monkeypatch.setattr(attention_triton, "triton_attention", counting_attention)
    monkeypatch.setattr(contrastive_triton, "triton_contrastive_loss", counting_contrastive)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("stream", ["pairs", "regions"])
def test_tiny_model_step_with_both_kernels_equals_reference(stream, tiny_config, monkeypatch):
    ref_model = _model(tiny_config, "torch", "torch")
    batch = make_stream_batch(stream, tiny_config)
    ref_losses, ref_grads = _step(ref_model, stream, batch)

    calls = _count_calls(monkeypatch, fake=False)
    model = _model(tiny_config, "triton", "triton", weights=ref_model.state_dict())
    losses, grads = _step(model, stream, batch)

    # every attention layer of the three encoders and every ITC call went through Triton
    layers = tiny_config.text.num_layers + tiny_config.vision.num_layers + 2 * tiny_config.fusion.num_layers
    assert calls["attention"] >= layers, calls
    assert calls["contrastive"] >= 1, calls

    assert losses.keys() == ref_losses.keys()
    for name in ref_losses:
        torch.testing.assert_close(losses[name], ref_losses[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"loss {name}: {m}")
    assert grads.keys() == ref_grads.keys()
    rel_bias = [n for n in grads if "relative_position" in n]
    assert rel_bias, "the vision encoder's relative position bias should receive a gradient"
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("attention,contrastive", [("triton", "torch"), ("torch", "triton"), ("auto", "auto")])
def test_model_config_selects_each_kernel_separately(attention, contrastive, tiny_config, monkeypatch):
    """Wiring only (the Triton entry points answer with the reference): each op follows its own
    switch. With the base config's attention dropout on the text and fusion encoders, training
    calls reach the fused kernel with dropout_p (the fused kernel implements it)."""
    calls = _count_calls(monkeypatch, fake=True)
    cfg = replace(tiny_config, text=replace(tiny_config.text, attention_dropout=0.1),
                  fusion=replace(tiny_config.fusion, attention_dropout=0.1))
    model = _model(cfg, attention, contrastive)
    _step(model, "pairs", make_stream_batch("pairs", cfg))
    assert (calls["attention"] > 0) == (attention == "triton"), calls
    assert (calls["contrastive"] > 0) == (contrastive == "triton"), calls
    if attention == "triton":
        assert calls["dropout_p"] == {0.0, 0.1}, calls  # vision: none; text and fusion: 0.1
