"""Bad checkpoint inputs: each gives a CheckpointError whose message names the file and says what
is wrong (missing path, garbage, truncated, non-tensor pickle, unknown format, wrong directory,
shape mismatch with key and both shapes, strict key mismatches, bad config files); and the load
report stays a short digest however many keys a checkpoint has."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_checkpoint_official import layout, official_state_dict
from xfm.checkpoint import (CheckpointError, detect_format, load_into, load_official_state_dict, load_pretrained,
                            load_timm_beit, official_config)
from xfm.checkpoint.report import collapse_keys
from xfm.model import XFM
from xfm.model_config import model_config


@pytest.fixture(scope="module")
def tiny_sd():
    return official_state_dict(layout("tiny"), seed=5)


def save_official(tmp_path, sd, name="ckpt.th"):
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return path


def test_missing_path(tmp_path):
    path = tmp_path / "nope.th"
    with pytest.raises(CheckpointError, match=r"nope\.th: no such file or directory"):
        load_pretrained(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.th"
    path.write_bytes(b"this is not a checkpoint at all\x00\x01" * 50)
    with pytest.raises(CheckpointError, match=r"garbage\.th: not a readable PyTorch checkpoint"):
        load_pretrained(path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: file is empty"):
        XFM.from_pretrained(empty)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a readable safetensors file"):
        load_pretrained(bad_st)


def test_truncated_file(tmp_path, tiny_sd):
    path = save_official(tmp_path, tiny_sd, "truncated.th")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.th: not a readable PyTorch checkpoint"):
        load_pretrained(path, num_heads=4)
    st = tmp_path / "truncated.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 64), "w": torch.zeros(1000, 64)}, str(st))
    st.write_bytes(st.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable safetensors"):
        load_pretrained(st)


def test_pickle_with_objects_is_refused(tmp_path, tiny_sd):
    path = tmp_path / "objects.th"
    torch.save({"model": tiny_sd, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match=r"objects\.th: .*weights_only=True"):
        load_pretrained(path, num_heads=4)


def test_unknown_formats(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"other\.pt: unknown checkpoint format.*encoder\.weight"):
        load_pretrained(path)
    path = tmp_path / "nostate.pt"
    torch.save({"epoch": 3, "note": "no tensors"}, path)
    with pytest.raises(CheckpointError, match=r"nostate\.pt: no tensors in the state dict"):
        detect_format(path)
    # HF weights without their config.json: point at the directory instead
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(5, 4)}, path)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: looks like Hugging Face.*directory"):
        load_pretrained(path)


def test_wrong_format_directories(tmp_path):
    d = tmp_path / "random_dir"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"random_dir: not a checkpoint directory.*notes\.txt"):
        load_pretrained(d)
    hf = tmp_path / "gpt"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(CheckpointError, match=r"gpt/config\.json: model_type 'gpt2' is not supported"):
        load_pretrained(hf)
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 64,
                                               "num_hidden_layers": 1, "num_attention_heads": 1,
                                               "intermediate_size": 8, "max_position_embeddings": 8}))
    with pytest.raises(CheckpointError, match=r"gpt: no weights found.*model\.safetensors"):
        load_pretrained(hf)
    (hf / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"gpt/config\.json: not valid JSON"):
        load_pretrained(hf)


def test_shape_mismatch_names_key_shapes_and_file(tmp_path, tiny_sd):
    bad = dict(tiny_sd)
    key = "text_encoder.roberta.encoder.layer.1.intermediate.dense.weight"
    bad[key] = torch.zeros(255, 64)
    path = save_official(tmp_path, bad, "mismatch.th")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(path, num_heads=4)
    msg = str(e.value)
    assert "mismatch.th" in msg and key in msg and "(256, 64)" in msg and "(255, 64)" in msg
    # an adapter into an existing model whose config does not fit the weights
    model = XFM(model_config("tiny"))
    beit = {k[len("vision_encoder."):]: v for k, v in tiny_sd.items() if k.startswith("vision_encoder.")}
    beit["blocks.1.mlp.fc1.weight"] = torch.zeros(128, 64)
    with pytest.raises(CheckpointError, match=r"beit\.pth: shape mismatch for 'blocks\.1\.mlp\.fc1\.weight'.*\(256, 64\).*\(128, 64\)"):
        load_timm_beit(model, beit, source="beit.pth")
    # an override that contradicts the tensor shapes is caught the same way
    with pytest.raises(CheckpointError, match=r"'vision_encoder\.blocks\.0\.attn\.relative_position_bias_table'.*\(124, 4\).*\(52, 4\)"):
        load_pretrained(save_official(tmp_path, tiny_sd), num_heads=4, vision__image_size=48)


def test_nothing_copied_before_a_mismatch_is_found(tiny_sd):
    model = XFM(model_config("tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    beit = {k[len("vision_encoder."):]: v for k, v in tiny_sd.items() if k.startswith("vision_encoder.")}
    beit["fc_norm.weight"] = torch.zeros(65)
    with pytest.raises(CheckpointError):
        load_timm_beit(model, beit)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_incomplete_official_checkpoint_is_strict(tmp_path, tiny_sd):
    bad = {k: v for k, v in tiny_sd.items() if not k.startswith("bbox_head.")}
    bad["extra.weight"] = torch.zeros(2)
    path = save_official(tmp_path, bad, "incomplete.th")
    with pytest.raises(CheckpointError, match=r"incomplete\.th: does not match.*missing keys \['heads\.bbox\.0\.bias'.*unexpected keys \['extra\.weight'\]"):
        load_pretrained(path, num_heads=4)
    model = load_pretrained(path, num_heads=4, strict=False)
    assert model.load_report.unused == ["extra.weight"]
    assert sorted(model.load_report.missing) == sorted(f"heads.bbox.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias"))


def test_other_relative_position_convention_is_refused(tmp_path, tiny_sd):
    bad = dict(tiny_sd)
    key = "vision_encoder.blocks.0.attn.relative_position_index"
    bad[key] = tiny_sd[key].flip(0)
    with pytest.raises(CheckpointError, match=r"index\.th: vision_encoder\.blocks\.0\.attn\.relative_position_index differs"):
        load_pretrained(save_official(tmp_path, bad, "index.th"), num_heads=4)


def test_our_format_errors(tmp_path):
    model = XFM(model_config("tiny"))
    d = tmp_path / "ours"
    model.save_pretrained(d)
    # a config with an unknown key names the key and the file
    good_cfg = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(good_cfg.replace("embed_dim: 32", "embed_dim: 32\nembed_dims: 3"))
    with pytest.raises(CheckpointError, match=r"config\.yaml.*embed_dims"):
        load_pretrained(d)
    (d / "config.yaml").write_text(good_cfg)
    # a tensor removed, one added: strict by default
    sd = load_file(str(d / "model.safetensors"))
    sd.pop("heads.itm.3.bias")
    sd["surplus"] = torch.zeros(1)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match.*missing keys \['heads\.itm\.3\.bias'\].*unexpected keys \['surplus'\]"):
        load_pretrained(d)
    # num_heads is fixed by config.yaml; an unknown override key is named
    with pytest.raises(CheckpointError, match="num_heads is fixed"):
        load_pretrained(d, num_heads=2)
    with pytest.raises(CheckpointError, match=r"vision\.not_a_field: unknown ModelConfig field"):
        load_pretrained(tmp_path / "ours", strict=False, vision__not_a_field=1)


def test_load_into_existing_model_autodetects(tmp_path, tiny_sd):
    path = save_official(tmp_path, tiny_sd)
    assert detect_format(path) == "official"
    model = XFM(model_config("tiny"))
    report = load_into(model, path)
    assert report.clean
    assert torch.equal(model.heads.itm[3].weight, tiny_sd["itm_head.3.weight"])
    # official fusion word embeddings -> our fusion MLM decoder; text decoder stays tied
    assert torch.equal(model.heads.fusion_mlm.decoder.weight,
                       tiny_sd["fusion_encoder.roberta.embeddings.word_embeddings.weight"])
    assert model.heads.text_mlm.decoder.weight is model.text.embeddings.word_embeddings.weight


def test_load_pretrained_logs_the_detected_format(tmp_path, tiny_sd, caplog):
    path = save_official(tmp_path, tiny_sd, "logged.th")
    with caplog.at_level("INFO", logger="xfm.checkpoint"):
        model = load_pretrained(path, num_heads=4)
        model.save_pretrained(tmp_path / "ours")
        load_pretrained(tmp_path / "ours")
    text = caplog.text
    assert "logged.th: detected checkpoint format 'official'" in text
    assert "ours: detected checkpoint format 'xfm'" in text
    assert detect_format(tmp_path / "ours") == "xfm"
    # an incomplete load is logged as a warning with what is missing
    caplog.clear()
    bad = {k: v for k, v in tiny_sd.items() if not k.startswith("itm_head.")}
    with caplog.at_level("INFO", logger="xfm.checkpoint"):
        load_pretrained(save_official(tmp_path, bad, "partial.th"), num_heads=4, strict=False)
    assert any(r.levelname == "WARNING" and "MISSING (6" in r.getMessage() for r in caplog.records)


GOOD_BERT = {"model_type": "bert", "vocab_size": 10, "hidden_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 1, "intermediate_size": 8, "max_position_embeddings": 8}


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu_new"}, r"hf/config\.json: hidden_act 'gelu_new'"),
    ({"position_embedding_type": "relative_key"}, r"hf/config\.json: position_embedding_type 'relative_key'"),
    ({"num_hidden_layers": None}, r"hf/config\.json: missing field\(s\) \['num_hidden_layers'\]"),
])
def test_hf_config_that_would_compute_differently_is_refused(tmp_path, change, message):
    d = tmp_path / "hf"
    d.mkdir()
    cfg = {k: v for k, v in {**GOOD_BERT, **change}.items() if v is not None}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(d)


def test_contradicting_arguments_are_named(tmp_path, tiny_sd):
    path = save_official(tmp_path, tiny_sd, "args.th")
    with pytest.raises(CheckpointError, match=r"args\.th: fusion_from_text applies to Hugging Face"):
        load_pretrained(path, num_heads=4, fusion_from_text=True)
    with pytest.raises(CheckpointError, match=r"args\.th: unknown size 'huge'"):
        load_pretrained(path, num_heads=4, size="huge")
    with pytest.raises(CheckpointError, match=r"args\.th .*text\.hidden_size 64 not divisible by num_heads 3"):
        load_pretrained(path, num_heads=3)
    # fusion and text widths must agree (the fusion encoder runs on the text states)
    narrow = dict(tiny_sd)
    narrow["text_encoder.roberta.embeddings.word_embeddings.weight"] = torch.zeros(1000, 48)
    with pytest.raises(CheckpointError, match=r"narrow\.th: fusion width 64 differs from the text width 48"):
        load_pretrained(save_official(tmp_path, narrow, "narrow.th"))
    # a width that is not a multiple of 64 cannot default its head count: the error says what to pass
    from xfm.checkpoint.build_config import default_heads
    with pytest.raises(CheckpointError, match=r"x\.th: text/fusion width 48 is not a multiple of 64.*num_heads="):
        default_heads(48, "text/fusion", "x.th")
    assert default_heads(768, "text/fusion", "x.th") == 12


def test_printed_report_is_a_short_digest(tmp_path, tiny_sd):
    # the paper's base layout (771 keys), on the meta device
    sd = official_state_dict(layout("base"), meta=True)
    with torch.device("meta"):
        model = XFM(official_config(sd, source="base layout"))
    report = load_official_state_dict(model, sd, "base layout")
    text = str(report)
    lines = text.splitlines()
    assert len(lines) < 40 and text == report.summary(), text
    assert lines[0] == "base layout (official-xfm): 736 loaded, 0 missing, 0 unused, 36 ignored, 0 new"
    assert "vision_encoder.blocks.{0-11}.attn.relative_position_index" in text  # layers folded
    assert all(reason in text for reason in set(report.ignored.values()))
    # the full lists stay on the report; its repr is counts only
    assert len(report.loaded) == 736 and len(report.ignored) == 36
    assert repr(report) == ("LoadReport(source='base layout', format='official-xfm', loaded=736, missing=0, "
                            "unused=0, ignored=36, new=0)")

    # a bad load: a whole encoder missing and 600 keys nobody understands, still a few lines
    bad = {k: v for k, v in tiny_sd.items() if not k.startswith("fusion_encoder.roberta.encoder.")}
    bad.update({f"extra.block.{i}.w{j}": torch.zeros(1) for i in range(200) for j in range(3)})
    report = load_into(XFM(model_config("tiny")), save_official(tmp_path, bad, "bad.th"))
    text = str(report)
    assert len(text.splitlines()) < 40, text
    assert len(report.unused) == 600 and len(report.missing) > 30
    assert f"{len(report.missing)} missing, 600 unused" in text
    assert f"MISSING ({len(report.missing)} of our keys" in text and "UNUSED (600 source keys" in text
    assert "extra.block.{0-199}.{w0,w1,w2}  (600 keys)" in text
    assert "fusion.encoder.layer.{0-1}.attention.self.query.{bias,weight}  (4 keys)" in text
    assert "more patterns" in text  # the rest of the missing keys: counted, not listed
    # the folding itself: gaps in the indices are kept, only same-module leaves are merged
    assert collapse_keys(["a.0.w", "a.1.w", "a.3.w", "a.3.b", "t"]) == [("a.{0-1,3}.w", 3), ("a.3.b", 1), ("t", 1)]
