"""The named model sizes have one source, the packaged xfm/sizes/<size>.yaml files:
``model_config(size)`` reads them, configs/model/*.yaml include them, and each lists only what
differs from ModelConfig's field defaults. Model files load into ModelConfig; bad files fail with
messages naming the key and the file."""
import shutil
from pathlib import Path

import pytest
import yaml

import xfm.model_config as mc
from xfm.config import ConfigError, load_config, to_dict
from xfm.model import XFM, count_parameters
from xfm.model_config import ModelConfig, model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
PACKAGED = Path(mc.__file__).parent / "sizes"


def test_sizes_are_the_packaged_files():
    assert mc.SIZES == ("base", "large", "tiny")
    assert sorted(p.stem for p in PACKAGED.glob("*.yaml")) == list(mc.SIZES)
    base = model_config("base")
    assert base == ModelConfig()  # the field defaults are the paper's base model
    assert (base.text.num_layers, base.text.hidden_size, base.vision.image_size, base.embed_dim) == (12, 768, 224, 256)
    large = model_config("large")
    assert (large.text.hidden_size, large.vision.num_layers, large.fusion.num_layers, large.vision.drop_path) == (1024, 24, 12, 0.2)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config("huge")


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_each_value_is_written_once(size):
    # configs/model/<size>.yaml holds no values of its own: only the include of the packaged file
    repo_file = yaml.safe_load((CONFIGS / f"{size}.yaml").read_text())
    assert list(repo_file) == ["defaults"]
    assert load_config(CONFIGS / f"{size}.yaml", ModelConfig) == model_config(size)
    # the packaged file lists only what differs from the field defaults (no copy of a default)
    defaults = to_dict(ModelConfig())

    def redundant(data, ref, where=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from redundant(value, ref[key], f"{where}{key}.")
            elif key != "size" and value == ref[key]:
                yield where + key
    assert list(redundant(yaml.safe_load((PACKAGED / f"{size}.yaml").read_text()), defaults)) == []


def test_model_config_reads_the_packaged_file(tmp_path, monkeypatch):
    for f in PACKAGED.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(mc, "_sizes_folder", lambda: tmp_path)
    text = (tmp_path / "tiny.yaml").read_text()
    (tmp_path / "tiny.yaml").write_text(text.replace("num_layers: 2\n  num_heads: 4\n  intermediate_size: 256\n  max",
                                                     "num_layers: 3\n  num_heads: 4\n  intermediate_size: 256\n  max"))
    assert model_config("tiny").text.num_layers == 3  # an edit of the file is the new preset
    (tmp_path / "tiny.yaml").write_text(text.replace("size: tiny", "size: base"))
    with pytest.raises(ConfigError, match=r"tiny\.yaml: size is 'base', but the file is the 'tiny' preset"):
        model_config("tiny")
    (tmp_path / "tiny.yaml").write_text(text + "vision:\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match=r"tiny\.yaml.*hiden_size"):
        model_config("tiny")


def test_tiny_file_builds_a_model_with_overrides():
    cfg = load_config(CONFIGS / "tiny.yaml", ModelConfig, ["stop_text_grad=false", "vision.region_attn_depth=0"])
    assert cfg.stop_text_grad is False and cfg.vision.region_attn_depth == 0
    assert count_parameters(XFM(cfg)) > 0


@pytest.mark.parametrize("body, words", [
    ("size: tiny\nvision:\n  hiden_size: 64\n", ["vision", "hiden_size"]),
    ("size: tiny\ntext:\n  num_layers: two\n", ["text.num_layers", "integer"]),
    ("size: tiny\nmim: maybe\n", ["mim", "true/false"]),
    ("size: tiny\ntext:\n  position_style: gpt\n", ["text.position_style", "roberta"]),
    ("size: tiny\nvision:\n  hidden_size: 65\n", ["vision", "divisible"]),
    ("size: tiny\nkernels:\n  attention: cuda\n", ["kernels.attention"]),
])
def test_bad_model_config_names_key_and_file(tmp_path, body, words):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path, ModelConfig)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg
