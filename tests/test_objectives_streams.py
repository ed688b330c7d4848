"""Every stream's composer on the tiny model: the named losses, finite, one forward + backward
well under a second (measured and printed; asserted loosely: the CPU is shared)."""
import time

import pytest
import torch

from fixtures_model import (make_images_batch, make_pairs_batch, make_regions_batch, make_stream_batch,
                            make_text_batch)
from xfm.model import XFM
from xfm.model_config import model_config
from xfm.objectives import LossContext, STREAM_LOSSES

EXPECTED = {
    "pairs": {"itc", "itm", "mlm", "mim"},
    "regions": {"region_itc", "region_itm", "region_mlm", "bbox_l1", "bbox_giou"},
    "text": {"text_mlm"},
    "images": {"mim"},
}


# one batch of each stream at the shapes of configs/pretrain/tiny.yaml (pairs 8 x 30 tokens,
# regions 4 images x 3 regions x 30 tokens, text 8 x 48 tokens, images 8)
PRETRAIN_TINY_BATCH = {
    "pairs": lambda cfg: make_pairs_batch(cfg, batch_size=8, length=30),
    "regions": lambda cfg: make_regions_batch(cfg, num_images=4, num_regions=12, length=30),
    "text": lambda cfg: make_text_batch(cfg, batch_size=8, length=48),
    "images": lambda cfg: make_images_batch(cfg, batch_size=8),
}


@pytest.mark.parametrize("stream", sorted(STREAM_LOSSES))
def test_stream_forward_backward_is_fast_and_finite(stream):
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = XFM(cfg).train()
    batch = PRETRAIN_TINY_BATCH[stream](cfg)
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(3):  # the first call pays one-off costs
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        losses = STREAM_LOSSES[stream](model, batch, ctx)
        sum(losses.values()).backward()
        times.append(time.perf_counter() - start)
    rows = (batch["text_mask"] if "text_mask" in batch else batch["image"]).shape[0]
    print(f"{stream} ({rows} rows): forward+backward of all objectives {min(times) * 1e3:.1f} ms "
          f"(tiny, CPU, best of 3); "
          + ", ".join(f"{k}={v.item():.3f}" for k, v in losses.items()))
    assert set(losses) == EXPECTED[stream]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert min(times) < 1.0


def test_model_forward_dispatches_to_the_stream():
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = XFM(cfg).eval()
    batch = make_stream_batch("pairs", cfg)
    a = model("pairs", batch, LossContext(generator=torch.Generator().manual_seed(1)))
    b = STREAM_LOSSES["pairs"](model, batch, LossContext(generator=torch.Generator().manual_seed(1)))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError, match="unknown stream"):
        model("video", batch)


@pytest.mark.parametrize("stream", sorted(STREAM_LOSSES))
def test_stream_runs_under_bf16_autocast(stream):
    """Mixed precision (what the clusters use): masks and biases follow the compute dtype."""
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = XFM(cfg).train()
    batch = make_stream_batch(stream, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = STREAM_LOSSES[stream](model, batch, LossContext(generator=torch.Generator().manual_seed(0)))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
