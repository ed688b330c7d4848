"""The X-FM model: encoder semantics (BEiT-v2 pooling, mask token, regions), reference parity
with HF RoBERTa/BERT and timm BEiT-v2 (same weights by key name), the state-dict layout of
docs/INTERFACES.md, the paper's parameter count on the meta device, kernel routing."""
import json
import math
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import xfm.kernels
from fixtures_model import boxes_to_patch_mask, make_images, make_text
from xfm.model import XFM, count_parameters
from xfm.model.text import roberta_position_ids
from xfm.model_config import model_config


def tiny(**kw):
    cfg = model_config("tiny")
    vision = kw.pop("vision", None)
    text = kw.pop("text", None)
    if vision:
        cfg = replace(cfg, vision=replace(cfg.vision, **vision))
    if text:
        cfg = replace(cfg, text=replace(cfg.text, **text))
    torch.manual_seed(0)
    return XFM(replace(cfg, **kw)).eval()


def test_image_token0_is_mean_of_patches_and_cls_is_dropped_but_attends():
    m = tiny()
    px = make_images(m.config, 3, torch.Generator().manual_seed(1))
    out = m.encode_image(px)
    assert out.shape == (3, 1 + m.config.vision.num_patches, m.config.vision.hidden_size)
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(1), rtol=0, atol=1e-6)
    with torch.no_grad():
        m.vision.cls_token.add_(torch.randn_like(m.vision.cls_token))  # CLS is not in the output but every patch attends to it
    assert not torch.allclose(m.encode_image(px), out, atol=1e-4)


def test_mask_token_replaces_masked_patch_embeddings():
    m = tiny()
    g = torch.Generator().manual_seed(2)
    px = make_images(m.config, 2, g)
    n = m.config.vision.num_patches
    masked = torch.zeros(2, n, dtype=torch.bool)
    masked[:, : n // 2] = True
    p = m.config.vision.patch_size
    px2 = px.clone()
    px2[:, :, :p, :] = torch.randn(2, 3, p, px.shape[-1], generator=g)  # first row of patches only
    a, b = m.encode_image(px, masked), m.encode_image(px2, masked)
    torch.testing.assert_close(a, b)  # masked patches' pixels are never seen
    assert not torch.allclose(m.encode_image(px), m.encode_image(px2), atol=1e-4)
    assert not torch.allclose(a, m.encode_image(px), atol=1e-4)
    with torch.no_grad():
        m.vision.mask_token.add_(torch.randn_like(m.vision.mask_token))
    assert not torch.allclose(m.encode_image(px, masked), a, atol=1e-4)  # the token is used
    with pytest.raises(ValueError, match="mask_patches"):
        m.encode_image(px, masked[:, :-1])


def test_region_token0_is_box_pooled_and_attention_is_box_restricted():
    m = tiny(vision={"region_attn_depth": 2})  # every block restricted
    g = torch.Generator().manual_seed(3)
    px = make_images(m.config, 2, g)
    boxes = torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.75, 0.5, 0.3, 0.9], [0.5, 0.5, 1.0, 1.0]])
    box = boxes_to_patch_mask(boxes, m.config.vision.grid)
    index = torch.tensor([0, 1, 1])
    image_states, states, atts = m.encode_regions(px, index, box, return_image_states=True)
    assert states.shape == (3, 17, 64) and atts.dtype == torch.long
    assert torch.equal(atts[:, 0], torch.ones(3, dtype=torch.long)) and torch.equal(atts[:, 1:].bool(), box)
    for r in range(3):
        torch.testing.assert_close(states[r, 0], states[r, 1:][box[r]].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(image_states, m.encode_image(px))
    # whole-image box: no restriction -> the full-image output
    torch.testing.assert_close(states[2], image_states[1], rtol=0, atol=1e-5)
    # pixels outside box 0 do not reach its in-box outputs; pixels inside do
    outside = ~box[0].view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    px_out = px.clone()
    px_out[0][:, outside] += 3.0
    s_out, _ = m.encode_regions(px_out, index, box)
    torch.testing.assert_close(s_out[0, 0], states[0, 0], rtol=0, atol=1e-5)
    px_in = px.clone()
    px_in[0][:, ~outside] += 3.0
    s_in, _ = m.encode_regions(px_in, index, box)
    assert not torch.allclose(s_in[0, 0], states[0, 0], atol=1e-4)


def test_region_depth_zero_pools_full_image_outputs():
    m = tiny(vision={"region_attn_depth": 0})
    px = make_images(m.config, 2, torch.Generator().manual_seed(4))
    box = torch.rand(3, 16, generator=torch.Generator().manual_seed(5)) > 0.5
    box[:, 0] = True
    index = torch.tensor([1, 0, 1])
    full = m.encode_image(px)
    states, _ = m.encode_regions(px, index, box)
    torch.testing.assert_close(states[:, 1:], full[index, 1:])
    for r in range(3):
        torch.testing.assert_close(states[r, 0], full[index[r], 1:][box[r]].mean(0), rtol=0, atol=1e-6)


def test_roberta_positions_and_padding_invariance():
    ids = torch.tensor([[0, 7, 8, 2, 1, 1]])
    assert roberta_position_ids(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1]]
    m = tiny()
    short = torch.tensor([[0, 7, 8, 9, 2]])
    padded = torch.tensor([[0, 7, 8, 9, 2, 1, 1, 1]])
    a = m.encode_text(short, torch.ones_like(short))
    b = m.encode_text(padded, (padded != 1).long())
    torch.testing.assert_close(a, b[:, :5], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.encode_text(torch.full((1, 70), 5), torch.ones(1, 70, dtype=torch.long))


def _copy_into(module, state, expect_missing=()):
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert sorted(missing) == sorted(expect_missing), missing
    return unexpected


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_language_encoder_matches_hf(kind):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel
    common = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    if kind == "roberta":
        hf = RobertaModel(RobertaConfig(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, **common),
                          add_pooling_layer=False)
        m = tiny()
        pad = 1
    else:
        hf = BertModel(BertConfig(type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12, **common),
                       add_pooling_layer=False)
        m = tiny(text={"position_style": "bert", "pad_token_id": 0, "type_vocab_size": 2,
                       "layer_norm_eps": 1e-12})
        pad = 0
    hf.eval()
    _copy_into(m.text, hf.state_dict())
    ids, mask, _, _ = make_text(m.config, 3, 9, torch.Generator().manual_seed(6))
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = m.encode_text(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=0, atol=1e-5)


def test_vision_encoder_matches_timm_beitv2():
    from timm.models.beit import Beit
    ref = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0,
               use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="avg", use_fc_norm=True,
               num_classes=0, qkv_bias=True).eval()
    with torch.no_grad():  # non-trivial relative position bias and q/v biases
        for blk in ref.blocks:
            blk.attn.relative_position_bias_table.normal_(std=0.5)
            blk.attn.q_bias.normal_(std=0.5)
            blk.attn.v_bias.normal_(std=0.5)
    m = tiny()
    unexpected = _copy_into(m.vision, ref.state_dict(), expect_missing=["mask_token"])
    assert all(k.startswith(("head", "norm")) for k in unexpected), unexpected
    px = make_images(m.config, 2, torch.Generator().manual_seed(7))
    with torch.no_grad():
        patches = ref.fc_norm(ref.forward_features(px)[:, 1:])  # timm pools before fc_norm
        ours = m.encode_image(px)
    torch.testing.assert_close(ours[:, 1:], patches, rtol=0, atol=1e-5)


def test_state_dict_layout_and_tied_decoder():
    m = tiny()
    sd = m.state_dict()
    assert m.heads.text_mlm.decoder.weight is m.text.embeddings.word_embeddings.weight
    assert m.heads.fusion_mlm.decoder.weight is not m.text.embeddings.word_embeddings.weight
    assert not any("relative_position_index" in k for k in sd)
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"text", "vision", "fusion", "heads"}
    for key in ["text.embeddings.word_embeddings.weight", "text.encoder.layer.1.output.LayerNorm.bias",
                "vision.cls_token", "vision.mask_token", "vision.blocks.1.gamma_2",
                "vision.blocks.0.attn.q_bias", "vision.blocks.0.attn.v_bias",
                "vision.blocks.0.attn.relative_position_bias_table", "vision.blocks.0.attn.qkv.weight",
                "vision.fc_norm.weight", "fusion.encoder.layer.1.crossattention.self.key.weight",
                "fusion.encoder.layer.0.crossattention.output.LayerNorm.weight",
                "heads.temp.temp", "heads.itm.3.weight", "heads.bbox.1.weight", "heads.text_mlm.bias",
                "heads.text_mlm.decoder.weight", "heads.fusion_mlm.decoder.weight"]:
        assert key in sd, key
    assert not any(k.startswith("fusion.embeddings") or "k_bias" in k for k in sd)
    assert sd["vision.blocks.0.attn.relative_position_bias_table"].shape == (52, 4)
    assert m.heads.temp().item() == pytest.approx(0.07)
    with torch.no_grad():
        m.heads.temp.temp.fill_(5.0)
    assert m.heads.temp().item() == pytest.approx(0.5)


def test_base_on_meta_has_paper_parameter_count():
    with torch.device("meta"):
        m = XFM(model_config("base"))
    paper = count_parameters(m, paper=True)
    print(f"base: {count_parameters(m) / 1e6:.3f}M stored, {paper / 1e6:.3f}M as the paper counts")
    assert all(p.is_meta for p in m.parameters())
    # docs/METHOD.md: 327M = the official checkpoint's parameters minus the fusion encoder's
    # (unused) embeddings and the two caption heads, counted here from the official base layout
    rows = json.loads((Path(__file__).parent / "data" / "xfm_official_keys_base.json").read_text())
    official = {r[0]: math.prod(r[1]) for r in rows if r[2] == "param" and r[4] is None}
    stored = sum(official.values())
    fusion_embeddings = sum(n for k, n in official.items() if k.startswith("fusion_encoder.roberta.embeddings."))
    caption_heads = sum(n for k, n in official.items() if ".lm_cap_head." in k)
    assert round(stored / 1e6, 1) == 444.8
    assert paper == stored - fusion_embeddings - caption_heads == 327_295_353
    assert count_parameters(m) - paper == 50265 * 768  # the fusion MLM decoder matrix


@pytest.mark.parametrize("abs_pos_embed", ["none", "sincos"])
def test_meta_build_then_materialise_recomputes_buffers(abs_pos_embed):
    cfg = model_config("tiny")
    cfg = replace(cfg, vision=replace(cfg.vision, abs_pos_embed=abs_pos_embed))
    with torch.device("meta"):
        m = XFM(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    ref = XFM(cfg)
    assert m.heads.text_mlm.decoder.weight is m.text.embeddings.word_embeddings.weight
    for a, b in zip(m.vision.blocks, ref.vision.blocks):
        assert torch.equal(a.attn.relative_position_index, b.attn.relative_position_index)
    if abs_pos_embed == "sincos":  # the non-persistent position table, recomputed like the index
        torch.testing.assert_close(m.vision.pos_embed, ref.vision.pos_embed)
    # a state dict assigned onto a meta model: tie and buffers restored by the two calls
    with torch.device("meta"):
        m = XFM(cfg)
    m.load_state_dict(ref.state_dict(), assign=True)
    m.tie_weights()
    m.reset_buffers()
    assert m.heads.text_mlm.decoder.weight is m.text.embeddings.word_embeddings.weight
    px = make_images(cfg, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.eval().encode_image(px), ref.eval().encode_image(px))


def test_all_attention_goes_through_the_kernel_dispatcher(monkeypatch):
    m = tiny()
    calls = []
    real = xfm.kernels.attention

    def counting(q, k, v, mask=None, **kw):
        calls.append(q.shape)
        return real(q, k, v, mask, **kw)

    monkeypatch.setattr(xfm.kernels, "attention", counting)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", None)  # no bypass
    monkeypatch.setattr(xfm.kernels.dispatch, "attention_reference",
                        lambda q, k, v, mask=None, dropout_p=0.0, scale=None:
                        torch.softmax(q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
                                      + (0 if mask is None else mask), -1) @ v)
    px = make_images(m.config, 2, torch.Generator().manual_seed(8))
    ids, mask, _, _ = make_text(m.config, 2, 6, torch.Generator().manual_seed(9))
    m.fuse(m.encode_image(px), None, m.encode_text(ids, mask), mask)
    assert len(calls) == 2 + 2 + 2 * 2  # text layers + vision blocks + fusion (self + cross)


@pytest.mark.parametrize("stream", ["pairs", "regions"])
def test_grad_checkpointing_same_loss_and_grads(stream):
    from fixtures_model import make_stream_batch
    from xfm.objectives import LossContext, STREAM_LOSSES
    cfg = model_config("tiny")
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = XFM(replace(cfg, grad_checkpointing=ckpt)).train()
        ctx = LossContext(generator=torch.Generator().manual_seed(0))
        loss = sum(STREAM_LOSSES[stream](m, make_stream_batch(stream, cfg), ctx).values())
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], atol=1e-6, rtol=1e-4, msg=n)


def test_from_pretrained_and_save_pretrained_delegate_to_checkpoint(monkeypatch, tmp_path):
    seen = {}
    fake = types.ModuleType("xfm.checkpoint.load")
    fake.load_pretrained = lambda path, num_heads=None, **ov: seen.setdefault("load", (path, num_heads, ov))
    fake.save_pretrained = lambda model, d: seen.setdefault("save", (model, d))
    monkeypatch.setitem(sys.modules, "xfm.checkpoint.load", fake)
    assert XFM.from_pretrained("p", num_heads=3, mim=False) == ("p", 3, {"mim": False})
    m = tiny()
    m.save_pretrained(tmp_path)
    assert seen["save"] == (m, tmp_path)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="region_attn_depth"):
        tiny(vision={"region_attn_depth": 5})
    with pytest.raises(ValueError, match="temp_min"):
        tiny(temp_min=0.0)
    with pytest.raises(TypeError, match="ModelConfig"):
        XFM(42)


def test_attention_masks_use_the_official_constants(monkeypatch):
    """Text self-attention (language and fusion encoders) masks padding with (1-m)*-10000, the
    fusion cross-attention and box-restricted vision attention with (1-m)*-1e9 (docs/METHOD.md)."""
    m = tiny()
    seen = []
    real = xfm.kernels.attention

    def spy(q, k, v, mask=None, **kw):
        seen.append((q.shape[-2], k.shape[-2], None if mask is None else mask.detach().clone()))
        return real(q, k, v, mask, **kw)

    monkeypatch.setattr(xfm.kernels, "attention", spy)
    ids = torch.tensor([[0, 7, 8, 9, 2], [0, 7, 2, 1, 1]])
    text_mask = (ids != 1).long()
    px = make_images(m.config, 2, torch.Generator().manual_seed(3))
    image_mask = torch.ones(2, 17, dtype=torch.long)
    image_mask[1, 5:] = 0
    with torch.no_grad():
        text = m.encode_text(ids, text_mask)
        image = m.encode_image(px)
        seen.clear()
        m.fuse(image, image_mask, text, text_mask)
    want_self = torch.tensor([[0.0] * 5, [0.0] * 3 + [-10000.0] * 2])[:, None, None, :]
    want_cross = ((1.0 - image_mask.float()) * -1e9)[:, None, None, :]
    assert len(seen) == 4
    for lq, lk, mask in seen:
        assert torch.equal(mask, want_self if lk == 5 else want_cross), (lq, lk)
    seen.clear()
    with torch.no_grad():
        m.encode_text(ids, text_mask)
    assert len(seen) == 2 and all(torch.equal(mask, want_self) for _, _, mask in seen)
    # region pass (tiny: the last block is box-restricted): bias + (1 - [cls, box]) * -1e9
    box = torch.zeros(1, 16, dtype=torch.bool)
    box[0, :6] = True
    seen.clear()
    with torch.no_grad():
        m.encode_regions(px, torch.tensor([0]), box)
    full, restricted = seen[1][2], seen[2][2]  # block 1 on the image, block 1 on the region
    extra = restricted - full
    keys = torch.cat((torch.ones(1, 1, dtype=torch.bool), box), 1)[0]
    assert torch.all(extra[..., keys] == 0)
    torch.testing.assert_close(extra[..., ~keys], torch.full_like(extra[..., ~keys], -1e9), rtol=1e-6, atol=0)


def test_layer_norm_eps_match_official():
    """RoBERTa LayerNorms (language, fusion, LM heads) 1e-5, BEiT-v2 1e-6, ITM/box MLPs torch's
    default 1e-5 (official ``nn.LayerNorm(2d)``), as in the base config."""
    with torch.device("meta"):
        m = XFM(model_config("base"))
    eps = {name: mod.eps for name, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    assert eps and all(v == 1e-6 for k, v in eps.items() if k.startswith("vision."))
    assert all(v == 1e-5 for k, v in eps.items() if not k.startswith("vision."))
    assert {k.split(".")[0] for k in eps} == {"text", "vision", "fusion", "heads"}
    assert eps["heads.itm.1"] == eps["heads.bbox.1"] == eps["heads.text_mlm.layer_norm"] == 1e-5
