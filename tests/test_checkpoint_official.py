"""Official X-FM checkpoints: layout from tests/data, config inference, parity, round trip.

The official-layout checkpoints are built here from the key tables in
``tests/data/xfm_official_keys_{tiny,base}.json`` (rows ``[key, shape, kind, dtype,
tied_to]``): tiny with random tensors written to a real ``.th`` file, base on the meta device
(shapes only, nothing allocated). Parity is checked against independent references: HF
``RobertaModel`` for the language encoder, timm ``Beit`` for the vision encoder, and a small
functional transcription of the official fusion encoder + ITM head written from the spec.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.models.beit import gen_relative_position_index

from xfm.checkpoint import (CheckpointError, load_official_state_dict, official_config,
                            save_pretrained)
from xfm.model import XFM
from xfm.model_config import model_config

# the key tables: $XFM_REFDATA (another copy), else the one in tests/data/
_REFDATA_DIRS = [os.environ.get("XFM_REFDATA", ""), Path(__file__).parent / "data"]

# what the adapter may leave out of an official checkpoint, and nothing else (docs/METHOD.md)
DOCUMENTED_UNUSED = (
    lambda k: ".lm_cap_head." in k,
    lambda k: k.startswith("fusion_encoder.roberta.embeddings.") and "word_embeddings" not in k,
    lambda k: k.endswith(".position_ids"),
    lambda k: k.endswith(".relative_position_index"),
    # tied duplicates: the same tensors as the word embeddings / lm_head.bias
    lambda k: k.endswith(".lm_head.decoder.weight") or k.endswith(".lm_head.decoder.bias"),
)


def layout(size: str) -> list:
    name = f"xfm_official_keys_{size}.json"
    for d in _REFDATA_DIRS:
        if d and (Path(d) / name).is_file():
            return json.loads((Path(d) / name).read_text())
    raise FileNotFoundError(f"{name} not found in {[str(d) for d in _REFDATA_DIRS if d]} (set XFM_REFDATA)")


def official_state_dict(rows, *, meta: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-layout state dict: tied rows share the tensor object, as in a real one.

    Random values are chosen non-trivial where it matters for parity (LayerNorm weights around 1,
    layer scale around 0.1-0.3, relative position tables with visible structure)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape, kind, dtype, tied in rows:
        if tied:
            continue
        if meta:
            sd[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        elif key.endswith("relative_position_index"):
            grid = math.isqrt(shape[0] - 1)
            sd[key] = gen_relative_position_index((grid, grid))
        elif key.endswith("position_ids"):
            sd[key] = torch.arange(shape[1]).unsqueeze(0)
        elif key == "temp":
            sd[key] = torch.tensor(0.05)
        elif "norm" in key.lower() and key.endswith("weight"):
            sd[key] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif "gamma" in key:
            sd[key] = 0.1 + 0.2 * torch.rand(shape, generator=g)
        elif "relative_position_bias_table" in key:
            sd[key] = 0.5 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.05 * torch.randn(shape, generator=g)
    for key, shape, kind, dtype, tied in rows:
        if tied:
            sd[key] = sd[tied]
    return sd


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    sd = official_state_dict(layout("tiny"))
    path = tmp_path_factory.mktemp("official") / "xfm_tiny.th"
    torch.save({"model": sd, "epoch": 3, "config": {"note": "written by the test"}}, path)
    return path, sd


@pytest.fixture(scope="module")
def tiny_loaded(tiny_official):
    path, _ = tiny_official
    return XFM.from_pretrained(path, num_heads=4)


def sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def inputs(seed=0, batch=3, length=9, vocab=1000, image=32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0  # padding in the batch
    mask[2, 4:] = 0
    ids[mask == 0] = 1  # <pad>
    pixels = torch.randn(batch, 3, image, image, generator=g)
    return ids, mask, pixels


# ----------------------------------------------------------------------------- layout + config
def test_tiny_layout_loads_with_only_documented_unused_keys(tiny_official, tiny_loaded):
    _, sd = tiny_official
    report = tiny_loaded.load_report
    assert report.format == "official-xfm"
    assert report.missing == [] and report.unused == [], report.summary()
    assert set(report.ignored) == {k for k in sd if any(rule(k) for rule in DOCUMENTED_UNUSED)}
    # every parameter of ours was filled, by name or as the alias of a tied one
    assert set(report.loaded) == set(tiny_loaded.state_dict())


def test_tiny_config_inferred_from_shapes(tiny_official, tiny_loaded):
    path, sd = tiny_official
    assert tiny_loaded.config == model_config("tiny")
    # without num_heads the text/fusion heads default to width / 64; vision heads come from the
    # relative position tables (4 columns)
    cfg = official_config(sd, source=str(path))
    assert (cfg.text.num_heads, cfg.fusion.num_heads, cfg.vision.num_heads) == (1, 1, 4)
    assert cfg.size == "custom"
    # any other field by keyword, nested ones too
    cfg = official_config(sd, num_heads=4, stop_text_grad=False, vision__drop_path=0.2,
                          **{"text.hidden_dropout": 0.3})
    assert (cfg.stop_text_grad, cfg.vision.drop_path, cfg.text.hidden_dropout) == (False, 0.2, 0.3)
    assert cfg.vision.image_size == 32 and cfg.embed_dim == 32


def test_base_layout_on_meta_device():
    """The paper's base layout (771 keys): config inference and a full key/shape check, all on
    the meta device, so no 445M floats are allocated."""
    rows = layout("base")
    sd = official_state_dict(rows, meta=True)
    cfg = official_config(sd, source="base layout")
    assert cfg == model_config("base")
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.text.hidden_size, cfg.embed_dim) == (224, 16, 768, 256)
    assert (cfg.text.num_layers, cfg.vision.num_layers, cfg.fusion.num_layers) == (12, 12, 12)
    assert (cfg.text.vocab_size, cfg.text.max_position_embeddings, cfg.text.num_heads) == (50265, 514, 12)
    with torch.device("meta"):
        model = XFM(cfg)
    report = load_official_state_dict(model, sd, "base layout")
    assert report.missing == [] and report.unused == [], report.summary()
    assert set(report.ignored) == {k for k in sd if any(rule(k) for rule in DOCUMENTED_UNUSED)}
    # the documented unused parameters are the ones the paper's 327M leaves out (+ tied copies)
    params = {r[0]: math.prod(r[1]) for r in rows if r[2] == "param" and r[4] is None}
    dropped = sum(n for k, n in params.items() if k in report.ignored)
    fusion_emb = sum(n for k, n in params.items() if k.startswith("fusion_encoder.roberta.embeddings."))
    caption = sum(n for k, n in params.items() if ".lm_cap_head." in k)
    assert round(fusion_emb / 1e6, 1) == 39.0 and round(caption / 1e6, 1) == 78.5
    assert dropped == fusion_emb + caption - params["fusion_encoder.roberta.embeddings.word_embeddings.weight"]


# ----------------------------------------------------------------------------- parity
def test_language_encoder_matches_hf_roberta(tiny_official, tiny_loaded):
    from transformers import RobertaConfig, RobertaModel
    _, sd = tiny_official
    cfg = RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=64, type_vocab_size=1,
                        pad_token_id=1, layer_norm_eps=1e-5, attn_implementation="eager")
    ref = RobertaModel(cfg, add_pooling_layer=False).eval()
    missing, unexpected = ref.load_state_dict(sub(sd, "text_encoder.roberta."), strict=False)
    assert not missing and set(unexpected) <= {"embeddings.position_ids"}
    ids, mask, _ = inputs()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = tiny_loaded.encode_text(ids, mask)
        logits = tiny_loaded.text_mlm_logits(got)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # padded rows included
    # the RoBERTa LM head, written out: dense -> GELU -> LayerNorm -> tied decoder + bias
    h = F.gelu(F.linear(want, sd["text_encoder.lm_head.dense.weight"], sd["text_encoder.lm_head.dense.bias"]))
    h = F.layer_norm(h, (64,), sd["text_encoder.lm_head.layer_norm.weight"],
                     sd["text_encoder.lm_head.layer_norm.bias"], eps=1e-5)
    want_logits = h @ sd["text_encoder.roberta.embeddings.word_embeddings.weight"].T + sd["text_encoder.lm_head.bias"]
    torch.testing.assert_close(logits[mask.bool()], want_logits[mask.bool()], atol=1e-5, rtol=0)


def test_vision_encoder_matches_timm_beit(tiny_official, tiny_loaded):
    from timm.models.beit import Beit
    _, sd = tiny_official
    ref = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
               use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1).eval()
    vision = {k: v for k, v in sub(sd, "vision_encoder.").items()
              if k != "mask_token" and not k.endswith("relative_position_index")}
    ref.load_state_dict(vision, strict=True)
    _, _, pixels = inputs()
    with torch.no_grad():
        patches = ref.fc_norm(ref.forward_features(pixels)[:, 1:])  # official: fc_norm on patches
        got = tiny_loaded.encode_image(pixels)
    torch.testing.assert_close(got[:, 1:], patches, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, 0], patches.mean(1), atol=1e-5, rtol=0)
    # MIM: the official mask token replaces the chosen patch embeddings before CLS is prepended
    masked = torch.zeros(3, 16, dtype=torch.bool)
    masked[0, :5], masked[1, 3::2], masked[2, 10:] = True, True, True
    with torch.no_grad():
        x = ref.patch_embed(pixels)
        x = torch.where(masked[..., None], sd["vision_encoder.mask_token"].expand_as(x), x)
        x = torch.cat((ref.cls_token.expand(3, -1, -1), x), dim=1)
        for blk in ref.blocks:
            x = blk(x)
        want = ref.fc_norm(x[:, 1:])
        got = tiny_loaded.encode_image(pixels, mask_patches=masked)
    torch.testing.assert_close(got[:, 1:], want, atol=1e-5, rtol=0)


def official_fusion_reference(sd, text_states, text_mask, image_states, image_mask, heads=4):
    """The official fusion encoder + ITM head, transcribed from docs/METHOD.md: text states enter
    as they are (no embeddings); per layer post-LN self-attention (mask (1-m)*-10000),
    cross-attention to the image tokens (mask (1-m)*-1e9), GELU FFN; ITM = Linear -> LayerNorm
    -> GELU -> Linear on token 0."""
    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def ln(x, name, eps=1e-5):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=eps)

    def attention(x, ctx, mask_add, p):
        b, lq, d = x.shape
        dh = d // heads
        q = lin(x, p + ".self.query").view(b, lq, heads, dh).transpose(1, 2)
        k = lin(ctx, p + ".self.key").view(b, ctx.shape[1], heads, dh).transpose(1, 2)
        v = lin(ctx, p + ".self.value").view(b, ctx.shape[1], heads, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + mask_add[:, None, None, :]
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, d)
        return ln(lin(out, p + ".output.dense") + x, p + ".output.LayerNorm")

    self_mask = (1.0 - text_mask.float()) * -10000.0
    cross_mask = (1.0 - image_mask.float()) * -1e9
    x = text_states
    n = len({k.split(".")[4] for k in sd if k.startswith("fusion_encoder.roberta.encoder.layer.")})
    for i in range(n):
        p = f"fusion_encoder.roberta.encoder.layer.{i}"
        x = attention(x, x, self_mask, p + ".attention")
        x = attention(x, image_states, cross_mask, p + ".crossattention")
        h = F.gelu(lin(x, p + ".intermediate.dense"))
        x = ln(lin(h, p + ".output.dense") + x, p + ".output.LayerNorm")
    h = F.gelu(ln(lin(x[:, 0], "itm_head.0"), "itm_head.1"))
    return x, lin(h, "itm_head.3")


def test_fusion_and_itm_match_official_reference(tiny_official, tiny_loaded):
    _, sd = tiny_official
    ids, mask, pixels = inputs(seed=1)
    image_mask = torch.ones(3, 17, dtype=torch.long)
    image_mask[1, 9:] = 0  # restricted image keys (as for a region)
    with torch.no_grad():
        text_states = tiny_loaded.encode_text(ids, mask)
        image_states = tiny_loaded.encode_image(pixels)
        fused = tiny_loaded.fuse(image_states, image_mask, text_states, mask)
        logits = tiny_loaded.itm_logits(fused)
        want_fused, want_logits = official_fusion_reference(sd, text_states, mask, image_states, image_mask)
    torch.testing.assert_close(fused, want_fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
    # the contrastive features and the temperature
    img, txt = tiny_loaded.features(image_states, text_states)
    torch.testing.assert_close(img, F.normalize(F.linear(image_states[:, 0], sd["vision_proj.weight"], sd["vision_proj.bias"]), dim=-1))
    torch.testing.assert_close(txt, F.normalize(F.linear(text_states[:, 0], sd["text_proj.weight"], sd["text_proj.bias"]), dim=-1))
    assert tiny_loaded.heads.temp().item() == pytest.approx(0.05)
    # the fusion MLM head decodes with the official fusion word-embedding table
    h = F.gelu(F.linear(fused, sd["fusion_encoder.lm_head.dense.weight"], sd["fusion_encoder.lm_head.dense.bias"]))
    h = F.layer_norm(h, (64,), sd["fusion_encoder.lm_head.layer_norm.weight"], sd["fusion_encoder.lm_head.layer_norm.bias"], eps=1e-5)
    want = h @ sd["fusion_encoder.roberta.embeddings.word_embeddings.weight"].T + sd["fusion_encoder.lm_head.bias"]
    torch.testing.assert_close(tiny_loaded.fusion_mlm_logits(fused), want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- round trip
def test_round_trip_official_ours_identical(tiny_loaded, tmp_path):
    save_pretrained(tiny_loaded, tmp_path / "ours")
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
        meta = f.metadata()
    # the tied text decoder is stored once (under the word-embedding name)
    assert "heads.text_mlm.decoder.weight" not in stored
    assert "text.embeddings.word_embeddings.weight" in stored
    assert json.loads(meta["tied"]) == {"heads.text_mlm.decoder.weight": "text.embeddings.word_embeddings.weight"}
    again = XFM.from_pretrained(tmp_path / "ours")
    assert again.config == tiny_loaded.config
    assert again.load_report.format == "xfm" and again.load_report.clean
    assert again.heads.text_mlm.decoder.weight is again.text.embeddings.word_embeddings.weight
    for k, v in tiny_loaded.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    ids, mask, pixels = inputs(seed=2)
    outs = []
    for m in (tiny_loaded, again):
        with torch.no_grad():
            t, i = m.encode_text(ids, mask), m.encode_image(pixels)
            fused = m.fuse(i, torch.ones(i.shape[:2], dtype=torch.long), t, mask)
            outs.append([t, i, fused, m.itm_logits(fused), m.predict_bbox(fused), *m.features(i, t),
                         m.text_mlm_logits(t), m.fusion_mlm_logits(fused)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    # save -> load -> save gives the same file content
    save_pretrained(again, tmp_path / "again")
    with safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == stored
    assert (tmp_path / "again" / "config.yaml").read_text() == (tmp_path / "ours" / "config.yaml").read_text()


def test_overrides_apply_when_loading_ours(tiny_loaded, tmp_path):
    tiny_loaded.save_pretrained(tmp_path / "ours")
    m = XFM.from_pretrained(tmp_path / "ours", stop_text_grad=False, text__hidden_dropout=0.25)
    assert m.config.stop_text_grad is False and m.config.text.hidden_dropout == 0.25
    assert m.config.text.hidden_size == 64


def test_untied_lm_decoder_in_official_file_is_an_error(tiny_official, tmp_path):
    _, sd = tiny_official
    bad = dict(sd)
    bad["text_encoder.lm_head.decoder.weight"] = sd["text_encoder.lm_head.decoder.weight"] + 1.0
    path = tmp_path / "untied.th"
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match=r"untied\.th.*text_encoder\.lm_head\.decoder\.weight should be tied"):
        XFM.from_pretrained(path, num_heads=4)
