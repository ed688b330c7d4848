"""configs/model/*.yaml hold exactly the built-in sizes and load into ModelConfig; bad files fail
with messages naming the key and the file."""
from pathlib import Path

import pytest

from xfm.config import ConfigError, load_config
from xfm.model import XFM, count_parameters
from xfm.model_config import ModelConfig, model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_model_config_files_equal_builtin_sizes(size):
    assert load_config(CONFIGS / f"{size}.yaml", ModelConfig) == model_config(size)


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
