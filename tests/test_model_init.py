"""``model.init_std``: the std of the random init of every weight matrix in the three encoders,
the heads and the answer decoder's fresh parts. The default stays BEiT's / BERT's 0.02; a narrow
model trained from scratch sets its own (the demo model: 1 / sqrt(128)). Checked on both ways a
model gets its init: the constructor, and each part's own ``init_weights()`` after a build without
init (what the ZeRO-3 engine runs with the part's parameters gathered)."""
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xfm.config import ConfigError, load_config
from xfm.model import XFM
from xfm.model.decoder import DecoderConfig, TextDecoder
from xfm.model_config import ModelConfig, model_config


def std_of(params) -> float:
    return torch.cat([p.detach().flatten() for p in params]).std().item()


def part_stds(model: XFM) -> dict[str, float]:
    """Pooled std of each part's plain weight matrices (the BEiT-rescaled output projections and
    the patch embedding apart)."""
    v = model.vision
    rescaled = {id(b.attn.proj.weight) for b in v.blocks} | {id(b.mlp.fc2.weight) for b in v.blocks}
    vision_plain = [m.weight for m in v.modules()
                    if isinstance(m, torch.nn.Linear) and id(m.weight) not in rescaled]
    words = model.text.embeddings.word_embeddings.weight[2:]  # rows 0/1: <s> and the zeroed pad
    return {
        "text": std_of([m.weight for m in model.text.modules() if isinstance(m, torch.nn.Linear)]),
        "text embeddings": std_of([words]),
        "fusion": std_of([m.weight for m in model.fusion.modules() if isinstance(m, torch.nn.Linear)]),
        "vision": std_of(vision_plain),
        "vision patch embedding": std_of([v.patch_embed.proj.weight]),
        # layer 1's output projections: std / sqrt(2 * 1) (BEiT's fix_init_weight)
        "vision block 1 output x sqrt(2)": std_of([v.blocks[0].attn.proj.weight, v.blocks[0].mlp.fc2.weight])
        * math.sqrt(2.0),
        "heads": std_of([model.heads.vision_proj.weight, model.heads.text_proj.weight,
                         model.heads.itm[0].weight, model.heads.bbox[0].weight,
                         model.heads.fusion_mlm.dense.weight, model.heads.fusion_mlm.decoder.weight]),
    }


def demo_width_config(std: float) -> ModelConfig:
    # tiny's layout at width 128, like the demo model: enough weights for a tight std estimate
    cfg = model_config("tiny")
    return replace(cfg, init_std=std,
                   text=replace(cfg.text, hidden_size=128, intermediate_size=512),
                   vision=replace(cfg.vision, hidden_size=128),
                   fusion=replace(cfg.fusion, intermediate_size=512))


@pytest.mark.parametrize("std", [0.02, 0.088])
@pytest.mark.parametrize("path", ["constructor", "each part after a build without init"])
def test_every_part_starts_at_init_std(std, path):
    torch.manual_seed(0)
    cfg = demo_width_config(std)
    if path == "constructor":
        model = XFM(cfg)
    else:
        model = XFM(cfg, init_weights=False)
        for name in ("heads", "fusion", "vision", "text"):  # the engine's order
            getattr(model, name).init_weights()
    stds = part_stds(model)
    for part, value in stds.items():
        assert value == pytest.approx(std, rel=0.06), (part, stds)


def test_default_is_beits_and_berts_002_and_the_demo_model_sets_its_own():
    assert ModelConfig().init_std == 0.02 == model_config("tiny").init_std
    demo = load_config(Path(__file__).resolve().parents[1] / "configs/model/demo.yaml", ModelConfig)
    assert demo.init_std == pytest.approx(1 / math.sqrt(demo.vision.hidden_size), rel=0.01)
    assert demo.vision.layer_scale_init == 1.0


def test_answer_decoder_fresh_parts_use_the_models_init_std():
    torch.manual_seed(0)
    cfg = DecoderConfig.from_model_config(demo_width_config(0.088))
    assert cfg.init_std == 0.088
    dec = TextDecoder(cfg)
    linears = [m.weight for m in dec.modules() if isinstance(m, torch.nn.Linear) and m is not dec.lm_head.decoder]
    assert std_of(linears) == pytest.approx(0.088, rel=0.06)
    # fusion width differs from the decoder's cross width: the cross key/value start fresh
    model = XFM(demo_width_config(0.088))
    fresh = TextDecoder.from_fusion(model, cross_width=48)
    kv = [fresh.layer[0].crossattention.self.key.weight, fresh.layer[0].crossattention.self.value.weight]
    assert std_of(kv) == pytest.approx(0.088, rel=0.1)


@pytest.mark.parametrize("value", ["0", "-0.02"])
def test_non_positive_init_std_is_rejected_naming_the_key(tmp_path, value):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"init_std: {value}\n")
    with pytest.raises((ConfigError, ValueError), match="init_std"):
        load_config(bad, ModelConfig)
