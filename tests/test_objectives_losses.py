"""Each objective against a direct computation: ITC (soft targets), ITM rows and labels,
masked LM, GIoU by hand, box loss masking, MIM formula; gather-with-grad at world size 1."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fixtures_model import make_images_batch, make_pairs_batch, make_regions_batch
from xfm.distributed import gather_no_grad, gather_with_grad
from xfm.hard_negatives import sample_hard_negatives
from xfm.model import XFM
from xfm.model_config import model_config
from xfm.objectives import (LossContext, STREAM_LOSSES, bbox_losses, giou_loss, images_losses, itc_loss,
                            itm_loss, masked_lm_loss, mim_loss, pairs_losses)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return XFM(model_config("tiny")).eval()


def test_gather_with_grad_world_size_one_is_identity_without_collectives(monkeypatch):
    import torch.distributed as dist

    def boom(*a, **k):
        raise AssertionError("torch.distributed must not be called at world_size 1")

    for name in ("all_gather", "get_rank", "get_world_size", "is_initialized"):
        monkeypatch.setattr(dist, name, boom)
    x = torch.randn(3, 4, requires_grad=True)
    y = gather_with_grad(x, group=None, world_size=1)
    assert y is x
    assert gather_no_grad(torch.arange(3)).tolist() == [0, 1, 2]


def test_gather_without_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not initialised"):
        gather_with_grad(torch.randn(2, 3), world_size=2, rank=0)


def direct_itc(img, txt, temp, ids):
    """Loop-by-loop symmetric InfoNCE with targets uniform over same-image pairs."""
    n = img.shape[0]
    total_i2t = total_t2i = 0.0
    for i in range(n):
        pos = [j for j in range(n) if ids[j] == ids[i]]
        row = [float(img[i] @ txt[j]) / temp for j in range(n)]
        col = [float(txt[i] @ img[j]) / temp for j in range(n)]
        lse_r = math.log(sum(math.exp(v) for v in row))
        lse_c = math.log(sum(math.exp(v) for v in col))
        total_i2t += -sum(row[j] - lse_r for j in pos) / len(pos)
        total_t2i += -sum(col[j] - lse_c for j in pos) / len(pos)
    return (total_i2t / n + total_t2i / n) / 2


@pytest.mark.parametrize("with_repeats", [True, False])
def test_itc_equals_direct_computation_with_soft_targets(model, with_repeats):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    ids = torch.tensor([5, 5, 7, 8, 8, 8]) if with_repeats else torch.arange(6)
    temp = model.heads.temp()
    got = itc_loss(model, img, txt, temp, LossContext(), ids)
    assert got.item() == pytest.approx(direct_itc(img, txt, temp.item(), ids.tolist()), rel=1e-5)
    if not with_repeats:  # no ids = every row its own picture
        assert itc_loss(model, img, txt, temp, LossContext()).item() == pytest.approx(got.item(), rel=1e-6)


def test_itm_rows_are_positives_then_negative_images_then_negative_texts(model, monkeypatch):
    b = make_pairs_batch(model.config, batch_size=5)
    img = model.encode_image(b["image"])
    txt = model.encode_text(b["text_ids"], b["text_mask"])
    fi, ft = model.features(img, txt)
    temp = model.heads.temp()
    seen = {}
    real_fuse = model.fuse

    def spy(images, atts, texts, masks):
        seen.update(images=images, texts=texts, masks=masks)
        return real_fuse(images, atts, texts, masks)

    monkeypatch.setattr(model, "fuse", spy)
    loss = itm_loss(model, img, None, txt, b["text_mask"], fi, ft, temp,
                    LossContext(generator=torch.Generator().manual_seed(3)), b["image_ids"])
    sim = fi @ ft.t() / temp
    neg_img, neg_txt = sample_hard_negatives(sim, sim.t(), b["image_ids"], torch.Generator().manual_seed(3))
    n = 5
    torch.testing.assert_close(seen["images"], torch.cat((img, img[neg_img], img)))
    torch.testing.assert_close(seen["texts"], torch.cat((txt, txt, txt[neg_txt])))
    assert torch.equal(seen["masks"], torch.cat((b["text_mask"], b["text_mask"], b["text_mask"][neg_txt])))
    ids = b["image_ids"]
    assert not torch.any(ids[neg_img] == ids) and not torch.any(ids[neg_txt] == ids)
    logits = model.itm_logits(real_fuse(seen["images"], None, seen["texts"], seen["masks"]))
    labels = torch.tensor([1] * n + [0] * 2 * n)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_masked_lm_loss_is_cross_entropy_over_masked_positions(model):
    g = torch.Generator().manual_seed(1)
    states = torch.randn(2, 5, 64, generator=g)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 17, 20, 999
    got = masked_lm_loss(model.fusion_mlm_logits, states, labels)
    full = model.fusion_mlm_logits(states)
    torch.testing.assert_close(got, F.cross_entropy(full.view(-1, 1000), labels.view(-1), ignore_index=-100))
    none = masked_lm_loss(model.fusion_mlm_logits, states, torch.full((2, 5), -100))
    assert none.item() == 0.0


def test_giou_against_hand_computation():
    # a = [0,0]-[2,2] (cx 1, cy 1, w 2, h 2), b = [1,1]-[3,3]: inter 1, union 7, hull 9
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    expected_giou = 1 / 7 - (9 - 7) / 9
    assert giou_loss(a, b).item() == pytest.approx(1 - expected_giou, abs=1e-6)
    # disjoint: a = [0,0]-[1,1], c = [2,0]-[3,1]: iou 0, union 2, hull 3 -> giou = -1/3
    a2 = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    c = torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert giou_loss(a2, c).item() == pytest.approx(1 + 1 / 3, abs=1e-6)
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_box_loss_skips_whole_image_rows(model):
    b = make_regions_batch(model.config)
    img = model.encode_image(b["image"])[b["region_image_index"]]
    txt = model.encode_text(b["text_ids"], b["text_mask"])
    l1, giou = bbox_losses(model, img, txt, b["text_mask"], b["region_boxes"], b["is_whole_image"])
    pred = model.predict_bbox(model.fuse(img, None, txt, b["text_mask"]))
    keep = ~b["is_whole_image"]
    torch.testing.assert_close(l1, (pred[keep] - b["region_boxes"][keep]).abs().sum(1).mean())
    torch.testing.assert_close(giou, giou_loss(pred[keep], b["region_boxes"][keep]).mean())
    moved = b["region_boxes"].clone()
    moved[b["is_whole_image"]] = torch.tensor([0.1, 0.1, 0.1, 0.1])
    l1b, gioub = bbox_losses(model, img, txt, b["text_mask"], moved, b["is_whole_image"])
    assert l1b.item() == l1.item() and gioub.item() == giou.item()
    all_whole = torch.ones_like(b["is_whole_image"])
    l1c, giouc = bbox_losses(model, img, txt, b["text_mask"], moved, all_whole)
    assert l1c.item() == 0.0 and giouc.item() == 0.0


def test_mim_loss_formula(model):
    b = make_images_batch(model.config)
    target = model.encode_image(b["image"]).detach()
    got = mim_loss(model, b["image"], b["mim_mask"], target)
    pred = model.encode_image(b["image"], b["mim_mask"])
    m = b["mim_mask"]
    expected = F.mse_loss(pred[:, 1:][m], target[:, 1:][m]) + F.mse_loss(pred[:, 0], target[:, 0])
    torch.testing.assert_close(got, expected)


def test_mim_switch():
    torch.manual_seed(0)
    m = XFM(replace(model_config("tiny"), mim=False))
    b = make_pairs_batch(m.config)
    del b["mim_mask"]  # not needed without MIM
    assert set(pairs_losses(m, b)) == {"itc", "itm", "mlm"}
    with pytest.raises(ValueError, match="config.mim is false"):
        images_losses(m, make_images_batch(m.config))


@pytest.mark.parametrize("stream", sorted(STREAM_LOSSES))
def test_missing_batch_field_is_named(model, stream):
    from fixtures_model import make_stream_batch
    b = make_stream_batch(stream, model.config)
    dropped = sorted(b)[0]
    del b[dropped]
    with pytest.raises(KeyError, match=dropped):
        STREAM_LOSSES[stream](model, b, LossContext())


def test_temperature_is_clamped_before_every_use_with_the_official_gradient(model):
    """The loss sees temp clamped to [0.001, 0.5]; its gradient is the one of the official
    in-place clamp (taken at the clamped value), so a parameter past a bound is not frozen."""
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    grads = {}
    for stored in (-0.3, 0.0001, 0.001, 0.07, 0.5, 0.9):
        with torch.no_grad():
            model.heads.temp.temp.fill_(stored)
        model.zero_grad(set_to_none=True)
        temp = model.heads.temp()
        assert temp.item() == pytest.approx(min(max(stored, 0.001), 0.5))
        itc_loss(model, img, txt, temp, LossContext()).backward()
        grads[stored] = model.heads.temp.temp.grad.item()
    # d loss / d temp evaluated at the clamped value, by hand: d/dt of loss(logits / t)
    for stored, at in ((-0.3, 0.001), (0.0001, 0.001), (0.9, 0.5)):
        t = torch.tensor(at, requires_grad=True)
        itc_loss(model, img, txt, t, LossContext()).backward()
        assert grads[stored] == pytest.approx(t.grad.item(), rel=1e-5) and grads[stored] != 0.0
    assert grads[0.0001] == pytest.approx(grads[0.001], rel=1e-6)
    # the pairs stream uses the clamped value in ITC (and for the ITM hard-negative logits)
    with torch.no_grad():
        model.heads.temp.temp.fill_(5.0)
    b = make_pairs_batch(model.config)
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = pairs_losses(model, b, ctx)["itc"]
        fi, ft = model.features(model.encode_image(b["image"]), model.encode_text(b["text_ids"], b["text_mask"]))
        want = itc_loss(model, fi, ft, torch.tensor(0.5), LossContext(), b["image_ids"])
    torch.testing.assert_close(got, want)


def test_itm_batch_without_any_negative_is_skipped_with_a_warning(model):
    """Every sample of the batch shows the same picture: no negative exists, so ITM contributes
    nothing (instead of a "no match" label on a matching pair, or a crash mid-run)."""
    b = make_pairs_batch(model.config, batch_size=3)
    b["image_ids"][:] = 7
    b["image"][:] = b["image"][0]
    model.train()
    with pytest.warns(RuntimeWarning, match="ITM skipped"):
        losses = pairs_losses(model, b, LossContext(generator=torch.Generator().manual_seed(0)))
    assert losses["itm"].item() == 0.0 and losses["itc"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.itm.parameters())
