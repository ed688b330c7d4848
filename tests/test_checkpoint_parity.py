"""Parity with the field's own implementations after conversion: HF BERT/RoBERTa -> our language
encoder, timm BEiT-v2 -> our vision encoder (fp32, atol 1e-5, padding in the batch).

Comparing with timm's BEiT: timm's ``forward_features`` returns the block outputs; official X-FM
(and we) then apply ``fc_norm`` to the patch tokens and output their mean as token 0, whereas
timm's avg-pool head takes the mean first and applies ``fc_norm`` after it. So the comparable
quantities are the patch tokens through timm's own ``fc_norm`` (and their mean); timm's pooled
vector is a different function of the same weights, checked here to differ.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from xfm.checkpoint import CheckpointError, load_hf_text, load_pretrained, load_timm_beit
from xfm.model import XFM
from xfm.model_config import model_config

TINY_TEXT = dict(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=40)


def text_batch(pad_id: int, vocab: int = 120, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A randomly initialised BertForMaskedLM (keys under ``bert.`` + ``cls.predictions``)."""
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    cfg = BertConfig(**TINY_TEXT, type_vocab_size=2, pad_token_id=0, attn_implementation="eager")
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and MLM bias
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf") / "bert"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """A randomly initialised RobertaModel saved as pytorch_model.bin (no prefix, no MLM head)."""
    from transformers import RobertaConfig, RobertaModel
    torch.manual_seed(1)
    cfg = RobertaConfig(**TINY_TEXT, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
                        attn_implementation="eager")
    model = RobertaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf") / "roberta"
    path.mkdir()
    cfg.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path, model


def test_bert_hidden_states_and_mlm_logits(bert_dir):
    path, ref = bert_dir
    model = XFM.from_pretrained(path, size="tiny")  # model.safetensors written by save_pretrained
    t = model.config.text
    assert (t.position_style, t.type_vocab_size, t.layer_norm_eps, t.pad_token_id) == ("bert", 2, 1e-12, 0)
    assert (t.hidden_size, t.num_layers, t.num_heads, t.vocab_size) == (64, 2, 4, 120)
    report = model.load_report
    assert report.format == "hf-bert" and report.clean, report.summary()
    assert "cls.predictions.decoder.weight" not in report.unused  # tied: saved once or ignored
    assert model.vision.config == model_config("tiny").vision  # the rest from the chosen preset
    ids, mask = text_batch(pad_id=0)
    with torch.no_grad():
        want = ref.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        want_logits = ref(input_ids=ids, attention_mask=mask).logits
        got = model.encode_text(ids, mask)
        got_logits = model.text_mlm_logits(got)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=0)


def test_roberta_hidden_states_with_padding(roberta_dir):
    path, ref = roberta_dir
    model = XFM.from_pretrained(path, size="tiny")
    t = model.config.text
    assert (t.position_style, t.type_vocab_size, t.layer_norm_eps, t.pad_token_id) == ("roberta", 1, 1e-5, 1)
    report = model.load_report
    assert report.format == "hf-roberta" and report.clean, report.summary()
    assert set(report.ignored) == {"pooler.dense.weight", "pooler.dense.bias"}
    # a bare RobertaModel has no MLM head: those are new by design, not missing
    assert "heads.text_mlm.dense.weight" in report.new
    ids, mask = text_batch(pad_id=1, seed=3)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model.encode_text(ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fusion_initialised_from_text_layers(roberta_dir):
    path, ref = roberta_dir
    model = load_pretrained(path, size="tiny", fusion_from_text=True)
    report = model.load_report
    # the fusion layers take the text layers' shape (X-VLM style), the depth from the preset
    assert (model.config.fusion.intermediate_size, model.config.fusion.num_layers) == (128, 2)
    sd, hf = model.state_dict(), ref.state_dict()
    for i in range(2):
        for name in ("attention.self.query.weight", "attention.output.LayerNorm.bias",
                     "intermediate.dense.weight", "output.dense.bias"):
            assert torch.equal(sd[f"fusion.encoder.layer.{i}.{name}"], hf[f"encoder.layer.{i}.{name}"])
    cross = [k for k in sd if ".crossattention." in k]
    assert cross and set(cross) <= set(report.new) and not report.missing
    # an offset past the checkpoint's depth is refused
    with pytest.raises(CheckpointError, match="no layer 2 for fusion layer 0"):
        load_hf_text(model, path, fusion_from_text=True, fusion_layer_offset=2)


@pytest.fixture(scope="module")
def beit():
    from timm.models.beit import Beit
    torch.manual_seed(2)
    model = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10,
                 use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1).eval()
    with torch.no_grad():  # timm inits the tables to zero and gammas to 0.1: make them matter
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
            elif "gamma" in name:
                p.uniform_(0.05, 0.5)
            elif name.endswith(("q_bias", "v_bias")) or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("container", ["pth-model", "bin-state_dict", "safetensors", "legacy-pickle"])
def test_beit_v2_patch_tokens_match_timm(beit, tmp_path, container):
    sd = beit.state_dict()
    if container == "pth-model":
        path = tmp_path / "beitv2.pth"
        torch.save({"model": sd, "epoch": 1}, path)
    elif container == "bin-state_dict":
        path = tmp_path / "beitv2.bin"
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif container == "legacy-pickle":  # the pre-1.6 torch.save format cannot be memory-mapped
        path = tmp_path / "beitv2_legacy.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        path = tmp_path / "beitv2.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = XFM.from_pretrained(path, size="tiny")
    v = model.config.vision
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_layers, v.num_heads, v.mlp_ratio) == (32, 8, 64, 2, 4, 4.0)
    report = model.load_report
    assert report.format == "timm-beit" and report.clean, report.summary()
    assert set(report.ignored) == {"head.weight", "head.bias"}
    assert report.new == ["vision.mask_token"]  # timm's BEiT has no mask token
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks_out = beit.forward_features(x)
        patches = beit.fc_norm(blocks_out[:, 1:])
        timm_pooled = beit.forward_head(blocks_out, pre_logits=True)
        got = model.encode_image(x)
    torch.testing.assert_close(got[:, 1:], patches, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, 0], patches.mean(1), atol=1e-5, rtol=0)
    assert not torch.allclose(got[:, 0], timm_pooled, atol=1e-3)  # LN-then-mean != mean-then-LN


def test_beit_adapter_into_existing_model_reports_scope(beit):
    model = XFM(model_config("tiny"))
    text_before = model.text.embeddings.word_embeddings.weight.clone()
    report = load_timm_beit(model, beit.state_dict(), source="beit in memory")
    assert report.clean and all(k.startswith("vision.") for k in report.loaded)
    assert torch.equal(model.text.embeddings.word_embeddings.weight, text_before)
    assert torch.equal(model.vision.blocks[1].gamma_2, beit.blocks[1].gamma_2)


def test_sharded_hf_directory_and_tf_style_names(bert_dir, tmp_path):
    path, ref = bert_dir
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    want = load_pretrained(path, size="tiny").state_dict()
    got = load_pretrained(sharded, size="tiny")
    assert got.load_report.clean
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.items() if k.startswith("text."))
    # checkpoints converted from TF BERT call the LayerNorm parameters gamma/beta
    tf_style = tmp_path / "tf_style"
    tf_style.mkdir()
    (tf_style / "config.json").write_text((path / "config.json").read_text())
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in ref.state_dict().items()}
    torch.save(sd, tf_style / "pytorch_model.bin")
    got = load_pretrained(tf_style, size="tiny")
    assert got.load_report.clean, got.load_report.summary()
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.items() if k.startswith("text."))


def test_shared_relative_position_table_is_copied_into_every_block(tmp_path):
    """BEiT pretraining checkpoints with one shared table (``use_shared_rel_pos_bias``): each of
    our blocks gets a copy, which computes exactly what timm's shared bias computes."""
    from timm.models.beit import Beit
    torch.manual_seed(4)
    ref = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
               use_abs_pos_emb=False, use_shared_rel_pos_bias=True, init_values=0.2).eval()
    with torch.no_grad():
        ref.rel_pos_bias.relative_position_bias_table.normal_(0, 0.5)
    path = tmp_path / "shared.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = load_pretrained(path, size="tiny")
    assert model.load_report.clean, model.load_report.summary()
    for blk in model.vision.blocks:
        assert torch.equal(blk.attn.relative_position_bias_table, ref.rel_pos_bias.relative_position_bias_table)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.fc_norm(ref.forward_features(x)[:, 1:])
        got = model.encode_image(x)
    torch.testing.assert_close(got[:, 1:], want, atol=1e-5, rtol=0)
