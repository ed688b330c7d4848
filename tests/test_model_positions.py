"""``vision.abs_pos_embed``: the optional fixed 2-D sine-cosine position table of the vision encoder.

BEiT-v2 (and so the official X-FM) gives patches their positions only through the relative
position bias, which starts at zero: until it has learned something, the encoder is blind to where
a patch is, and a small one never learns to localise. These tests pin down what the option changes
(positions reach the outputs, masked patches keep theirs, no new checkpoint key) and that a box
head learns to find an object with it and does not without it (the control).
"""
from dataclasses import replace

import pytest
import torch

from fixtures_model import make_images
from xfm.finetune.tasks.grounding import box_loss, predict_boxes
from xfm.model import XFM
from xfm.model_config import model_config


def tiny_config(pos: str):
    cfg = model_config("tiny")
    return replace(cfg, vision=replace(cfg.vision, abs_pos_embed=pos))


def rearranged_patches(px: torch.Tensor, patch: int) -> torch.Tensor:
    """The same patches in another order (grid rows reversed, then transposed)."""
    b, c, s, _ = px.shape
    g = s // patch
    tiles = px.reshape(b, c, g, patch, g, patch).permute(0, 1, 2, 4, 3, 5)  # (b, c, row, col, p, p)
    tiles = tiles.flip(2).transpose(2, 3)
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, c, s, s)


def test_presets_keep_beit_without_absolute_positions():
    for size in ("tiny", "base", "large"):
        assert model_config(size).vision.abs_pos_embed == "none"


def test_without_positions_a_fresh_encoder_cannot_tell_where_patches_are_and_with_sincos_it_can():
    px = make_images(model_config("tiny"), 2, torch.Generator().manual_seed(0))
    moved = rearranged_patches(px, model_config("tiny").vision.patch_size)
    assert not torch.equal(px, moved)
    outs = {}
    for pos in ("none", "sincos"):
        torch.manual_seed(0)
        m = XFM(tiny_config(pos)).eval()
        with torch.no_grad():
            outs[pos] = (m.encode_image(px)[:, 0], m.encode_image(moved)[:, 0])
    # zero relative bias at init: the pooled token is the same for any order of the patches
    torch.testing.assert_close(*outs["none"], rtol=0, atol=1e-5)
    assert (outs["sincos"][0] - outs["sincos"][1]).abs().max() > 1e-2


def test_sincos_table_is_timms_added_after_masking_and_not_saved(tmp_path):
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    cfg = tiny_config("sincos")
    torch.manual_seed(0)
    m = XFM(cfg).eval()
    grid = cfg.vision.grid
    torch.testing.assert_close(m.vision.pos_embed[0], build_sincos2d_pos_embed([grid, grid], cfg.vision.hidden_size))
    # a masked patch keeps its position: two patches masked in the same picture differ
    n = cfg.vision.num_patches
    masked = torch.ones(1, n, dtype=torch.bool)
    px = make_images(cfg, 1, torch.Generator().manual_seed(1))
    emb = m.vision._embed(px, masked)[0, 1:]
    torch.testing.assert_close(emb, m.vision.mask_token[0].expand(n, -1) + m.vision.pos_embed[0])
    # no new key: the official layout is unchanged, and the option travels in the config
    assert "vision.pos_embed" not in m.state_dict()
    assert set(m.state_dict()) == set(XFM(model_config("tiny")).state_dict())
    m.save_pretrained(tmp_path / "export")
    back = XFM.from_pretrained(tmp_path / "export").eval()
    assert back.config.vision.abs_pos_embed == "sincos"
    torch.testing.assert_close(back.encode_image(px), m.encode_image(px))


def test_bad_position_option_is_rejected():
    cfg = model_config("tiny")
    with pytest.raises(ValueError, match="vision.abs_pos_embed"):
        replace(cfg.vision, abs_pos_embed="learned")
    with pytest.raises(ValueError, match="divisible by 4"):
        replace(cfg.vision, abs_pos_embed="sincos", hidden_size=66, num_heads=2)


def squares(n: int, g: torch.Generator, size: int = 32):
    """Grey noise pictures with one red square of side 8-12 anywhere -> (pixels, (cx, cy, w, h))."""
    side = torch.randint(8, 13, (n,), generator=g)
    x0 = (torch.rand(n, generator=g) * (size - side)).long()
    y0 = (torch.rand(n, generator=g) * (size - side)).long()
    px = torch.full((n, 3, size, size), -0.5) + 0.1 * torch.randn(n, 3, size, size, generator=g)
    for i in range(n):
        px[i, 0, y0[i]:y0[i] + side[i], x0[i]:x0[i] + side[i]] = 1.0
    return px, torch.stack([(x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size], 1).float()


def centre_error_after_training(pos: str, steps: int = 150) -> float:
    """Train the whole model's box path (fusion token 0 of picture + a fixed phrase) on fresh
    squares, then the mean |predicted - true| centre coordinate on 200 new ones."""
    torch.manual_seed(0)
    m = XFM(tiny_config(pos))
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[0, 5, 6, 2]]).expand(32, -1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(steps):
        px, box = squares(32, g)
        loss = box_loss(predict_boxes(m, px, ids, torch.ones_like(ids)), box)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    px, box = squares(200, torch.Generator().manual_seed(99))
    m.eval()
    with torch.no_grad():
        pred = predict_boxes(m, px, ids[:1].expand(200, -1), torch.ones(200, 4, dtype=torch.long))
    return float((pred[:, :2] - box[:, :2]).abs().mean())


def test_box_head_localises_with_sincos_and_not_without():
    # measured: 0.024 with sincos (under a pixel), 0.170 without (the constant centre's error)
    with_positions, without = centre_error_after_training("sincos"), centre_error_after_training("none")
    assert with_positions < 0.06, with_positions
    assert without > 0.12, without
