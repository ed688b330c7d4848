"""Gradient flow by autograd: stop-gradient (technique 1) keeps the language encoder out of ITM,
fusion MLM and box regression; ITC and text MLM reach it; the MIM target is detached; the full
loss over the four streams reaches every parameter (timm-style, naming the ones it misses)."""
from dataclasses import replace

import pytest
import torch

from fixtures_model import make_images_batch, make_pairs_batch, make_regions_batch, make_text_batch
from xfm.model import XFM
from xfm.model_config import model_config
from xfm.objectives import (LossContext, STREAM_LOSSES, bbox_losses, encode_text_for_fusion,
                            fusion_mlm_loss, itc_loss, itm_loss, mim_loss, text_mlm_loss)


def build(stop_text_grad=True):
    torch.manual_seed(0)
    return XFM(replace(model_config("tiny"), stop_text_grad=stop_text_grad)).train()


def grad_norm(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def run_objective(model, name):
    """Backward of one objective on its own; returns (language encoder, vision encoder) grad mass."""
    cfg = model.config
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    if name in ("itc", "itm", "fusion_mlm"):
        b = make_pairs_batch(cfg)
        img = model.encode_image(b["image"])
        txt = model.encode_text(b["text_ids"], b["text_mask"])
        fi, ft = model.features(img, txt)
        temp = model.heads.temp()
        if name == "itc":
            loss = itc_loss(model, fi, ft, temp, ctx, b["image_ids"])
        elif name == "itm":
            loss = itm_loss(model, img, None, txt, b["text_mask"], fi, ft, temp, ctx, b["image_ids"])
        else:
            masked = encode_text_for_fusion(model, b["text_ids_masked"], b["text_mask"])
            loss = fusion_mlm_loss(model, img, None, masked, b["text_mask"], b["mlm_labels"])
    elif name == "bbox":
        b = make_regions_batch(cfg)
        img = model.encode_image(b["image"])
        txt = model.encode_text(b["text_ids"], b["text_mask"])
        l1, giou = bbox_losses(model, img[b["region_image_index"]], txt, b["text_mask"],
                               b["region_boxes"], b["is_whole_image"])
        loss = l1 + giou
    elif name == "text_mlm":
        b = make_text_batch(cfg)
        loss = text_mlm_loss(model, b["text_ids_masked"], b["text_mask"], b["mlm_labels"])
    else:
        raise ValueError(name)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    return grad_norm(model.text), grad_norm(model.vision)


@pytest.mark.parametrize("name", ["itm", "fusion_mlm", "bbox"])
def test_fusion_objectives_do_not_reach_language_encoder_under_stop_gradient(name):
    text_grad, vision_grad = run_objective(build(stop_text_grad=True), name)
    assert text_grad == 0.0
    assert vision_grad > 0  # the vision encoder learns from everything


@pytest.mark.parametrize("name", ["itm", "fusion_mlm", "bbox"])
def test_fusion_objectives_reach_language_encoder_without_stop_gradient(name):
    text_grad, _ = run_objective(build(stop_text_grad=False), name)
    assert text_grad > 0


@pytest.mark.parametrize("stop", [True, False])
@pytest.mark.parametrize("name", ["itc", "text_mlm"])
def test_itc_and_text_mlm_reach_language_encoder(name, stop):
    text_grad, _ = run_objective(build(stop_text_grad=stop), name)
    assert text_grad > 0


@pytest.mark.parametrize("stream", ["pairs", "regions"])
def test_stream_language_grads_come_from_itc_only_under_stop_gradient(stream):
    """Through the stream composers (what the engine calls): the language encoder's gradient from
    the whole stream equals its gradient from (region) ITC alone."""
    cfg = model_config("tiny")
    b = make_pairs_batch(cfg) if stream == "pairs" else make_regions_batch(cfg)
    m = build(True)
    sum(STREAM_LOSSES[stream](m, b, LossContext(generator=torch.Generator().manual_seed(0))).values()).backward()
    full = {n: p.grad.clone() for n, p in m.text.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    txt = m.encode_text(b["text_ids"], b["text_mask"])
    if stream == "pairs":
        img = m.encode_image(b["image"])
        ids = b["image_ids"]
    else:
        img, _ = m.encode_regions(b["image"], b["region_image_index"], b["region_patch_mask"])
        ids = None
    fi, ft = m.features(img, txt)
    itc_loss(m, fi, ft, m.heads.temp(), LossContext(), ids).backward()
    only_itc = {n: p.grad for n, p in m.text.named_parameters() if p.grad is not None}
    assert full.keys() == only_itc.keys() and full
    for n in full:
        torch.testing.assert_close(full[n], only_itc[n], msg=n)


def test_mim_target_carries_no_gradient():
    m = build()
    b = make_images_batch(m.config)
    target = m.encode_image(b["image"])
    target.retain_grad()
    loss = mim_loss(m, b["image"], b["mim_mask"], target)
    loss.backward()
    assert target.grad is None  # nothing flowed back into the unmasked pass
    assert m.vision.mask_token.grad is not None and m.vision.mask_token.grad.abs().sum() > 0
    # same gradients as with a target that was never part of a graph
    grads = {n: p.grad.clone() for n, p in m.vision.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    mim_loss(m, b["image"], b["mim_mask"], target.detach().clone()).backward()
    for n, p in m.vision.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, msg=n)


@pytest.mark.parametrize("stop", [True, False])
def test_full_loss_over_all_streams_reaches_every_parameter(stop):
    m = build(stop)
    cfg = m.config
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    batches = {"pairs": make_pairs_batch(cfg), "regions": make_regions_batch(cfg),
               "text": make_text_batch(cfg), "images": make_images_batch(cfg)}
    total = sum(sum(STREAM_LOSSES[s](m, batch, ctx).values()) for s, batch in batches.items())
    total.backward()
    missing = [n for n, p in m.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, f"parameters without gradient from the full loss: {missing}"


def test_without_mim_only_the_mask_token_is_left_without_gradient():
    """The check above can fail: switching MIM off leaves exactly the mask token untrained."""
    torch.manual_seed(0)
    m = XFM(replace(model_config("tiny"), mim=False)).train()
    cfg = m.config
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    total = sum(sum(STREAM_LOSSES[s](m, batch, ctx).values())
                for s, batch in {"pairs": make_pairs_batch(cfg), "regions": make_regions_batch(cfg),
                                 "text": make_text_batch(cfg)}.items())
    total.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == ["vision.mask_token"]
