"""The paper's AdamW parameter groups and the optimizer that leaves idle model parts alone.

- ``configs/pretrain/base_4m.yaml`` reproduces the original code's group membership for every
  parameter of the base model (built on the meta device): lr x2 for exactly the projections,
  the temperature, the ITM and box heads; no decay exactly where the original's substring rule
  on the official names says (so the relative-position tables are not decayed, the temperature
  and the head MLPs' LayerNorm weights are). The expectation is spelled out here per kind of
  parameter, not computed by the rule under test.
- the name translation the rule relies on is the checkpoint adapter's mapping, inverted.
- a short AdamW trajectory with ``build_optimizer`` equals one from groups built by hand.
- ``PartwiseAdamW``: after a step of one part, the other part's weights and AdamW state are
  bit-identical to before, as torch's AdamW leaves a parameter without gradient; the lr-0
  fallback (what plain optimizers get) does move the state: the control.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from xfm.model import XFM
from xfm.model_config import model_config
from xfm.pretrain.config import load_pretrain_config
from xfm.runtime.config import OptimConfig
from xfm.runtime.optim import PartwiseAdamW, build_optimizer, official_name, param_groups, set_lr

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "pretrain" / "base_4m.yaml"
PAPER_X2 = ("vision_proj.", "text_proj.", "temp", "itm_head.", "bbox_head.")


def expected_no_decay(official: str) -> bool:
    """The original's membership, by kind of parameter (read off its rule, spelled out)."""
    if official == "temp" or re.fullmatch(r"(itm|bbox)_head\.1\.weight", official):
        return False  # a scalar and LayerNorm weights named by index: no "bias"/"norm" in the name
    if official.endswith("bias") or official.endswith(("q_bias", "v_bias")) or \
            official.endswith("relative_position_bias_table"):
        return True  # any name containing "bias"
    return bool(re.search(r"(LayerNorm|layer_norm|fc_norm|norm1|norm2)\.weight$", official))


def base_model():
    with torch.device("meta"):
        return XFM(model_config("base"), init_weights=False)


@pytest.fixture(scope="module")
def base_groups():
    model = base_model()
    cfg = load_pretrain_config(BASE)
    return model, cfg.optim, param_groups(model, cfg.optim)


def test_base_4m_reproduces_the_original_group_membership(base_groups):
    model, optim, groups = base_groups
    assert optim.groups == "original"
    where = {n: g for g in groups for n in g["names"]}
    names = [n for n, _ in model.named_parameters()]
    assert sorted(where) == sorted(names)  # every parameter exactly once
    for n in names:
        off = official_name(n)
        g = where[n]
        assert (g["weight_decay"] == 0.0) == expected_no_decay(off), (n, off, g["weight_decay"])
        assert g["weight_decay"] in (0.0, optim.weight_decay)
        assert (g["lr_mult"] == 2.0) == off.startswith(PAPER_X2), (n, off, g["lr_mult"])
    # the cases the recipe names
    assert where["vision.blocks.3.attn.relative_position_bias_table"]["weight_decay"] == 0.0
    for n in ("heads.temp.temp", "heads.itm.1.weight", "heads.bbox.1.weight", "vision.blocks.0.gamma_1"):
        assert where[n]["weight_decay"] == 0.01, n
    for n in ("heads.itm.1.bias", "vision.fc_norm.weight", "heads.fusion_mlm.layer_norm.weight"):
        assert where[n]["weight_decay"] == 0.0, n
    for n in ("heads.fusion_mlm.decoder.weight", "heads.text_mlm.dense.weight", "fusion.encoder.layer.0.output.dense.weight"):
        assert where[n]["lr_mult"] == 1.0, n
    x2 = {n for n in names if where[n]["lr_mult"] == 2.0}
    assert x2 == {n for n in names if n.startswith(("heads.vision_proj.", "heads.text_proj.", "heads.temp.",
                                                    "heads.itm.", "heads.bbox."))}
    # the clean rule stays available; it differs from the original in 16 tensors of the tiny model
    # (the MLM heads' x2, the relative-position tables, temp, the head MLPs' LayerNorm weights)
    clean = {n: (g["weight_decay"], g["lr_mult"]) for g in param_groups(model, OptimConfig(groups="clean"))
             for n in g["names"]}
    diff = [n for n in names if clean[n] != (where[n]["weight_decay"], where[n]["lr_mult"])]
    assert len(diff) == 26 and sum(dict(model.named_parameters())[n].numel() for n in diff) == 39_996_787


def test_official_names_are_the_checkpoint_mapping_inverted():
    from xfm.checkpoint.official import map_official

    rows = json.loads((REPO / "tests" / "data" / "xfm_official_keys_base.json").read_text())
    sd = {key: torch.empty(shape, device="meta") for key, shape, kind, dtype, tied in rows}
    mapped, _, _ = map_official(sd, "layout")
    for n, _ in base_model().named_parameters():
        assert mapped[n][0] == official_name(n), n
    with pytest.raises(KeyError, match="optim.groups=clean"):
        official_name("classifier.weight")


def test_every_shipped_pretraining_config_names_existing_parameters_and_a_misspelt_prefix_is_an_error(monkeypatch):
    """Each ``lr_mult_prefixes`` of the shipped configs starts some parameter's name of its model;
    a prefix that starts none (``heads.itm_head.``: the official name, not ours) is a config error
    naming it and listing the model's part prefixes, instead of silently training the ITM head at
    the base lr."""
    from xfm.config import ConfigError

    monkeypatch.chdir(REPO)  # model.config_path is relative to the repository, as the configs are run
    for name in ("base_4m", "tiny", "demo"):
        cfg = load_pretrain_config(REPO / "configs" / "pretrain" / f"{name}.yaml")
        with torch.device("meta"):
            model = XFM(cfg.model.build(), init_weights=False)
        groups = param_groups(model, cfg.optim)
        boosted = {n for g in groups if g["lr_mult"] != 1.0 for n in g["names"]}
        for pre in cfg.optim.lr_mult_prefixes:
            assert any(n.startswith(pre) for n in boosted), (name, pre)
    bad = OptimConfig(lr_mult=2.0, lr_mult_prefixes=["heads.itm_head.", "heads.bbox."])
    with pytest.raises(ConfigError) as err:
        param_groups(base_model(), bad)
    msg = str(err.value)
    assert "optim.lr_mult_prefixes: ['heads.itm_head.'] name no trainable parameter" in msg, msg
    assert "'heads.itm.'" in msg and "'vision.'" in msg and "'fusion.'" in msg, msg


def test_pretraining_command_line_reports_a_prefix_naming_nothing_as_a_config_error(pretrain_data, tmp_path):
    """Through ``xfm-pretrain`` (one process): exit 2 with the config error, no traceback, and no
    checkpoint written."""
    import subprocess
    import sys

    from tests.fixtures_pretrain import pretrain_args, pretrain_env

    args = pretrain_args(pretrain_data, tmp_path / "run", steps=4,
                         extra=["--set", "optim.lr_mult_prefixes=[head.]"])
    proc = subprocess.run([sys.executable, "-m", "xfm.pretrain.cli", *args], cwd=REPO,
                          env=pretrain_env(pretrain_data), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "xfm-pretrain: config error: optim.lr_mult_prefixes: ['head.'] name no trainable parameter" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not list((tmp_path / "run").glob("checkpoints/step*"))


def test_trajectory_equals_hand_built_groups():
    torch.manual_seed(0)
    ref_model = XFM(model_config("tiny"))
    models = {k: XFM(model_config("tiny")) for k in ("original", "clean")}
    kw = dict(lr=1e-2, weight_decay=0.1, lr_mult=2.0,
              lr_mult_prefixes=["heads.vision_proj.", "heads.text_proj.", "heads.temp.", "heads.itm.", "heads.bbox."])
    opts = {}
    for k, m in models.items():
        m.load_state_dict(ref_model.state_dict())
        opts[k] = build_optimizer(m, OptimConfig(groups=k, **kw))
    # by hand: the original's four groups from the official names
    buckets = {(d, m): [] for d in (True, False) for m in (True, False)}
    for n, p in ref_model.named_parameters():
        off = official_name(n)
        buckets[(expected_no_decay(off), off.startswith(PAPER_X2))].append(p)
    ref = torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if nd else 0.1, "lr": 1e-2 * (2 if x2 else 1)}
                             for (nd, x2), ps in buckets.items()], lr=1e-2, betas=(0.9, 0.98), eps=1e-8)
    weights = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
               for i, (n, p) in enumerate(ref_model.named_parameters())}
    pairs = [(ref_model, ref)] + [(models[k], opts[k]) for k in models]
    for _ in range(3):
        for m, o in pairs:
            o.zero_grad()
            # a loss with a gradient on every parameter, so every group's rule shows
            loss = sum((p * weights[n]).sum() + p.pow(2).sum() for n, p in m.named_parameters())
            loss.backward()
            o.step()
    got = dict(models["original"].named_parameters())
    for n, q in ref_model.named_parameters():
        assert torch.equal(got[n], q), n
    # the control: the clean rule's trajectory differs exactly where its groups differ
    clean = dict(models["clean"].named_parameters())
    for n in ("vision.blocks.0.attn.relative_position_bias_table", "heads.temp.temp", "heads.itm.1.weight",
              "heads.bbox.1.weight"):
        assert not torch.equal(clean[n], got[n]), n
    assert torch.equal(clean["text.encoder.layer.0.attention.self.query.weight"],
                       got["text.encoder.layer.0.attention.self.query.weight"])


def _two_part_state(opt, params):
    return {n: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for n, p in params.items()}


@pytest.mark.parametrize("skipping", [True, False])
def test_idle_part_state_is_bit_identical_like_torch_adamw(skipping):
    """Step 1 trains both parts, step 2 only part ``a`` (part ``b``'s gradient is zero, as ZeRO
    hands it over). Reference: torch's AdamW where ``b`` has no gradient in step 2."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2))
    ra, rb = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    cls = PartwiseAdamW if skipping else torch.optim.AdamW
    opt = cls([{"params": [a], "part": "a", "lr_mult": 1.0}, {"params": [b], "part": "b", "lr_mult": 1.0}],
              lr=0.1, weight_decay=0.1)
    ref = torch.optim.AdamW([{"params": [ra]}, {"params": [rb]}], lr=0.1, weight_decay=0.1)
    optim = OptimConfig(lr=0.1, warmup_steps=0, decay="constant")
    for step, active in enumerate(({"a", "b"}, {"a"})):
        for p, q in ((a, ra), (b, rb)):
            p.grad = torch.full_like(p, 0.5 + step) if p is a or "b" in active else torch.zeros_like(p)
            q.grad = p.grad.clone() if q is ra or "b" in active else None
        if step == 1:
            before = _two_part_state(opt, {"b": b})["b"], b.detach().clone()
        set_lr(opt, step, optim, 10, active)
        opt.step()
        ref.step()
    state_b = _two_part_state(opt, {"b": b})["b"]
    if skipping:
        assert torch.equal(b, before[1]) and torch.equal(b, rb)
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_b[k], before[0][k]) and torch.equal(state_b[k], ref.state[rb][k]), k
        assert torch.equal(a, ra) and torch.equal(opt.state[a]["exp_avg"], ref.state[ra]["exp_avg"])
        assert opt.param_groups[1]["params"] == [b]  # restored after the step
    else:  # the lr-0 fallback keeps the weights but not the state: what the skipping fixes
        assert torch.equal(b, before[1])
        assert not torch.equal(state_b["exp_avg"], ref.state[rb]["exp_avg"])
        assert float(state_b["step"]) == 2.0 and float(ref.state[rb]["step"]) == 1.0
