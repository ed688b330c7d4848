"""Typed config: strict YAML loading, overrides, includes, env expansion, resolved output."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from xfm.config import ConfigError, load_config, save_config, read_yaml
from xfm.model_config import ModelConfig, model_config


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: Literal["linear", "cosine"] = "linear"


@dataclass
class Run:
    name: str
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    streams: list[str] = field(default_factory=lambda: ["text"])
    note: Optional[str] = None


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_types_and_defaults(tmp_path):
    p = write(tmp_path, "run.yaml", "name: a\nsteps: 3\noptim: {lr: 1e-3, betas: [0.8, 0.9]}\n")
    cfg = load_config(p, Run)
    assert cfg.steps == 3 and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.schedule == "linear" and cfg.streams == ["text"]


@pytest.mark.parametrize("text, needle", [
    ("name: a\nstepz: 3\n", "stepz"),                      # unknown key
    ("name: a\noptim: {lrr: 1}\n", "optim"),               # unknown nested key
    ("name: a\nsteps: three\n", "steps: expected an integer"),
    ("name: a\nsteps: true\n", "steps"),                   # bool is not an int
    ("steps: 3\n", "name: required value is missing"),
    ("name: a\noptim: {schedule: step}\n", "optim.schedule: must be one of"),
    ("name: a\noptim: {betas: [0.9]}\n", "optim.betas"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("name: [unclosed\n", "invalid YAML"),
])
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(p, Run)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_overrides_are_typed_and_checked(tmp_path):
    p = write(tmp_path, "run.yaml", "name: a\n")
    cfg = load_config(p, Run, ["optim.lr=2e-5", "steps=7", "streams=[text, pairs]"])
    assert cfg.optim.lr == 2e-5 and cfg.steps == 7 and cfg.streams == ["text", "pairs"]
    with pytest.raises(ConfigError, match="optim.nope"):
        load_config(p, Run, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(p, Run, ["steps"])


def test_defaults_include_and_env(tmp_path, monkeypatch):
    write(tmp_path, "base.yaml", "name: base\nsteps: 5\noptim: {lr: 0.5}\n")
    p = write(tmp_path, "child.yaml", "defaults: [base.yaml]\noptim: {schedule: cosine}\nnote: ${XFM_TEST_DIR:-fallback}/x\n")
    cfg = load_config(p, Run)
    assert cfg.name == "base" and cfg.optim.lr == 0.5 and cfg.optim.schedule == "cosine"
    assert cfg.note == "fallback/x"
    monkeypatch.setenv("XFM_TEST_DIR", "/data")
    assert load_config(p, Run).note == "/data/x"


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", Run)


def test_resolved_config_round_trips(tmp_path):
    cfg = model_config("tiny", stop_text_grad=False)
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    back = load_config(out, ModelConfig)
    assert back == cfg


def test_model_sizes():
    base = model_config("base")
    assert (base.text.num_layers, base.vision.num_layers, base.fusion.num_layers) == (12, 12, 12)
    assert base.text.hidden_size == 768 and base.vision.image_size == 224 and base.embed_dim == 256
    assert base.vision.num_patches == 196
    tiny = model_config("tiny")
    assert tiny.vision.num_patches == 16 and tiny.text.vocab_size == 1000
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge")


def test_model_config_validation(tmp_path):
    p = write(tmp_path, "m.yaml", "text: {hidden_size: 65, num_heads: 4}\n")
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(p, ModelConfig)
