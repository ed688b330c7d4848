"""A full tiny-model training step with both fused kernels forced through the Triton interpreter
equals the reference step: every loss and the gradient of every parameter.

The pairs stream exercises padded-key text attention, BEiT's relative position bias (which needs
its gradient) in the vision encoder, the 1+N x L cross-attention of the fusion encoder and the
ITC loss with a repeated image id; the regions stream adds the box-restricted image attention.
"""
import pytest
import torch

import xfm.kernels as K
from xfm.kernels import attention_triton, contrastive_triton
from fixtures_model import make_stream_batch


def _step(model, stream, batch, counts=None):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # hard-negative sampling draws the same numbers in both runs
    losses = model(stream, batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.slow
@pytest.mark.parametrize("stream", ["pairs", "regions"])
def test_tiny_model_step_with_both_kernels_equals_reference(stream, tiny_config, monkeypatch):
    from xfm.model import XFM

    torch.manual_seed(0)
    model = XFM(tiny_config)
    model.train()
    batch = make_stream_batch(stream, tiny_config)

    with K.backend_scope(attention="torch", contrastive="torch"):
        ref_losses, ref_grads = _step(model, stream, batch)

    calls = {"attention": 0, "contrastive": 0}
    real_attention, real_contrastive = attention_triton.triton_attention, contrastive_triton.triton_contrastive_loss

    def counting_attention(*args, **kwargs):
        calls["attention"] += 1
        return real_attention(*args, **kwargs)

    def counting_contrastive(*args, **kwargs):
        calls["contrastive"] += 1
        return real_contrastive(*args, **kwargs)

    monkeypatch.setattr(attention_triton, "triton_attention", counting_attention)
    monkeypatch.setattr(contrastive_triton, "triton_contrastive_loss", counting_contrastive)
    with K.backend_scope(attention="triton", contrastive="triton"):
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
