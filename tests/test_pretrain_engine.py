"""The engine's pieces: config, lr schedule, parameter groups, DeepSpeed config, launcher
environments, and (2 ranks) the ZeRO-3 details DeepSpeed 0.19.8 gets wrong on its own.

The 2-rank test checks, on a small model with a 0-dim temperature like X-FM's: the model builds
under zero.Init (0-dim parameters crash DeepSpeed's broadcast), the deferred init_weights writes
rank 0's values, the in-place clamp reaches the optimizer's fp32 master (the next step would undo
it otherwise), and a parameter that gets no gradient in a step is not moved by the previous
step's gradient (ZeRO-3 keeps stale gradient partitions; the trainer clears them). The same run
checks ``PartwiseAdamW`` on DeepSpeed's flat fp32 partitions: the AdamW state of a part left out
of a step stays bit-identical (weights, moments, step count) and the rest matches torch's AdamW
(control: a plain AdamW with the lr-0 fallback moves the moments).
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from fixtures_pretrain import REPO, TINY, tail, torchrun_cmd
from xfm.config import ConfigError
from xfm.pretrain.cli import build_parser, overrides_from_args
from xfm.pretrain.config import load_pretrain_config
from xfm.runtime.config import EngineConfig, OptimConfig
from xfm.runtime.dist import env_from_launcher
from xfm.runtime.engine import deepspeed_config
from xfm.runtime.optim import lr_factor, param_groups


@pytest.fixture
def data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("XFM_DATA", str(tmp_path))
    return tmp_path


def test_tiny_and_base_configs_load_with_short_flags(data_env, tmp_path):
    args = build_parser().parse_args(["--config", str(TINY), "--steps", "7", "--out", str(tmp_path / "r"),
                                      "--seed", "3", "--deterministic", "--set", "optim.lr=2e-4"])
    cfg = load_pretrain_config(args.config, overrides_from_args(args))
    assert (cfg.steps, cfg.out, cfg.seed, cfg.deterministic, cfg.optim.lr) == (7, str(tmp_path / "r"), 3, True, 2e-4)
    assert cfg.data.pairs.sources[0].urls.startswith(f"{data_env}/world/shards/pairs/")
    assert cfg.model.build().size == "tiny"
    base = load_pretrain_config(REPO / "configs" / "pretrain" / "base_4m.yaml")
    assert base.model.build().vision.hidden_size == 768
    assert (base.optim.lr, tuple(base.optim.betas), base.optim.weight_decay, base.optim.warmup_steps) == \
        (1e-4, (0.9, 0.98), 0.01, 2500)
    assert base.optim.lr_mult == 2.0 and base.engine.zero_stage == 3 and base.engine.gradient_clipping == 1.0
    assert (base.data.pairs.batch_size, base.data.regions.batch_size, base.data.images.batch_size,
            base.data.text.batch_size) == (96, 96, 96, 256)
    assert base.streams.step_groups == [["text"], ["regions", "images", "pairs"]]


def test_config_errors_name_key_and_file(data_env):
    with pytest.raises(ConfigError, match=r"tiny.yaml.*engine.*zero_stage"):
        load_pretrain_config(TINY, ["engine.zero_stage=5"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: unknown key\(s\) optim.lr_typo"):
        load_pretrain_config(TINY, ["optim.lr_typo=1"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: model.overrides: unknown key\(s\) vision.widht"):
        load_pretrain_config(TINY, ["model.overrides={vision: {widht: 3}}"])
    with pytest.raises(ConfigError, match=r"streams.*unknown stream 'captions'"):
        load_pretrain_config(TINY, ["streams.step_groups=[[captions]]"])
    with pytest.raises(ConfigError, match=r"tiny.yaml.*stop_at must be in \[1, steps=10\], got 11"):
        load_pretrain_config(TINY, ["steps=10", "stop_at=11"])
    with pytest.raises(ConfigError, match=r"optim.*groups"):
        load_pretrain_config(TINY, ["optim.groups=paper"])


def test_lr_schedule_warmup_then_linear_or_cosine():
    lin = OptimConfig(lr=1e-4, warmup_steps=10, decay="linear")
    assert lr_factor(0, lin, 110) == pytest.approx(0.1)
    assert lr_factor(9, lin, 110) == pytest.approx(1.0)
    assert lr_factor(60, lin, 110) == pytest.approx(0.5)
    assert lr_factor(110, lin, 110) == pytest.approx(0.0)
    cos = OptimConfig(warmup_steps=0, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cos, 100) == pytest.approx(1.0)
    assert lr_factor(50, cos, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, cos, 100) == pytest.approx(0.1)


def test_param_groups_no_decay_on_bias_norm_temperature_and_lr_mult_on_heads():
    from xfm.model import XFM
    from xfm.model_config import model_config

    model = XFM(model_config("tiny"))
    groups = param_groups(model, OptimConfig(lr=1e-4, lr_mult=2.0, weight_decay=0.01))
    where = {n: g for g in groups for n in g["names"]}
    assert len(where) == len(dict(model.named_parameters()))  # every parameter once (tied once)
    assert where["heads.temp.temp"]["weight_decay"] == 0.0 and where["heads.temp.temp"]["lr_mult"] == 2.0
    assert where["heads.itm.0.weight"]["weight_decay"] == 0.01 and where["heads.itm.0.weight"]["lr"] == 2e-4
    assert where["text.encoder.layer.0.attention.self.query.weight"]["weight_decay"] == 0.01
    assert where["text.encoder.layer.0.attention.self.query.weight"]["lr"] == 1e-4
    assert where["text.encoder.layer.0.attention.self.query.bias"]["weight_decay"] == 0.0
    assert where["text.embeddings.LayerNorm.weight"]["weight_decay"] == 0.0
    assert where["vision.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert where["vision.blocks.0.attn.q_bias"]["weight_decay"] == 0.0


def test_deepspeed_config_sets_what_deepspeed_would_silently_default():
    ds = deepspeed_config(EngineConfig(zero_stage=3, precision="bf16", gradient_clipping=0.5, grad_accum=4,
                                       deepspeed={"zero_optimization": {"overlap_comm": True}}), world_size=8)
    assert ds["gradient_clipping"] == 0.5 and ds["zero_force_ds_cpu_optimizer"] is False
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["overlap_comm"] is True
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 4
    assert "optimizer" not in ds  # a config "AdamW" JIT-compiles a C++ op; we pass torch's AdamW
    no_clip = deepspeed_config(EngineConfig(gradient_clipping=0.0), world_size=1)
    assert no_clip["gradient_clipping"] == 0.0


def test_rank_and_master_come_from_slurm_variables(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node-list fallback parser
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-node[07-10,12]", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    info = env_from_launcher(env)
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (5, 1, 8, "slurm")
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "gpu-node07" and env["MASTER_PORT"] == str(20000 + 4242)
    # torchrun / deepspeed launcher variables win over SLURM's (a torchrun inside an allocation)
    env2 = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
            "SLURM_STEP_ID": "0"}
    info2 = env_from_launcher(env2)
    assert (info2.rank, info2.world_size, info2.launcher) == (1, 2, "env")
    assert env_from_launcher({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}).launcher == "torchrun"
    assert env_from_launcher({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_SIZE": "2"}).launcher == "deepspeed"
    single = env_from_launcher({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single")


ZERO3_SCRIPT = r'''
import json, os, sys, torch, deepspeed
from torch import nn
from deepspeed.utils import safe_get_full_fp32_param
from xfm.runtime.engine import build_model, clamp_parameter_, clear_grad_partitions, partition_report

from xfm.runtime.dist import init_distributed
init_distributed("gloo", 60)
rank = torch.distributed.get_rank()

class Temp(nn.Module):
    def __init__(self):
        super().__init__(); self.temp = nn.Parameter(torch.tensor(0.07))  # 0-dim, as X-FM's
    def forward(self):
        return self.temp.clamp(0.001, 0.5)

built_with = []

class Net(nn.Module):
    def __init__(self, init_weights=True):  # like XFM(config, init_weights=...)
        super().__init__()
        self.a = nn.Linear(6, 6); self.b = nn.Linear(6, 6); self.t = Temp()
        built_with.append(init_weights)
        if init_weights:  # under zero.Init this would write into already-partitioned parameters
            self.init_weights()
    def init_weights(self):
        with torch.no_grad():
            self.a.weight.fill_(0.5); self.b.weight.normal_(); self.t.temp.fill_(0.07)
    def forward(self, x, use_b):
        y = self.a(x)
        if use_b:
            y = self.b(y)
        return y.pow(2).mean() / self.t()

cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "overlap_comm": False}, "gradient_clipping": 0.0,
       "zero_force_ds_cpu_optimizer": False, "zero_allow_untested_optimizer": True}
torch.manual_seed(rank)  # different per rank: rank 0's init must win
model = build_model(Net, cfg, 3)
assert built_with == [False], built_with  # the engine initialises the partitioned model itself
rep = partition_report(model)
assert rep.per_param["a.weight"] == (36, 18), rep.per_param
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
assert abs(float(full["t.temp"]) - 0.07) < 1e-7
assert torch.all(full["a.weight"] == 0.5), full["a.weight"]
gathered = [None, None]
torch.distributed.all_gather_object(gathered, full["b.weight"])
assert torch.equal(gathered[0], gathered[1])  # one init, broadcast from rank 0
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=cfg)

# step 1 uses b; step 2 does not: b must not move in step 2 (plain SGD, no momentum)
x = torch.ones(2, 6)
engine.backward(engine(x, True)); engine.step()
if sys.argv[1] == "fixed":
    clear_grad_partitions(engine)
b_after_1 = safe_get_full_fp32_param(model.b.weight).clone()
engine.backward(engine(x, False)); engine.step()
if sys.argv[1] == "fixed":
    clear_grad_partitions(engine)
b_after_2 = safe_get_full_fp32_param(model.b.weight).clone()
if sys.argv[1] == "fixed":
    assert torch.equal(b_after_1, b_after_2), (b_after_1 - b_after_2).abs().max()
stale_moved = (b_after_1 - b_after_2).abs().max().item()

# the clamp reaches the partition and the fp32 master, and survives a step with lr 0
changed, value = clamp_parameter_(model.t.temp, 0.123, 0.123)
assert changed and abs(value - 0.123) < 1e-7, value
assert abs(float(safe_get_full_fp32_param(model.t.temp)) - 0.123) < 1e-7
for g in engine.optimizer.param_groups:
    g["lr"] = 0.0
engine.backward(engine(x, True)); engine.step()
with deepspeed.zero.GatheredParameters([model.t.temp]):
    assert abs(float(model.t.temp) - 0.123) < 1e-7, float(model.t.temp)
# the partition-local clamp (no collective): the same values, in the partition and the master,
# for the 0-dim temperature (rank 1's partition is padding only) and a matrix split 18 + 18
from xfm.runtime.engine import clamp_partition_, read_parameter
a_before = read_parameter(model.a.weight)
clamp_partition_(model.t.temp, 0.2, 0.3)
clamp_partition_(model.a.weight, 0.45, 0.48)  # a.weight moved from 0.5 by two SGD steps
assert abs(float(read_parameter(model.t.temp)) - 0.2) < 1e-7
assert abs(float(safe_get_full_fp32_param(model.t.temp)) - 0.2) < 1e-7
assert torch.equal(read_parameter(model.a.weight), a_before.clamp(0.45, 0.48))
assert torch.equal(safe_get_full_fp32_param(model.a.weight), a_before.clamp(0.45, 0.48))
assert not torch.equal(a_before, a_before.clamp(0.45, 0.48))  # the clamp did change values
engine.backward(engine(x, True)); engine.step()  # lr 0: the clamped master is what stays
assert abs(float(read_parameter(model.t.temp)) - 0.2) < 1e-7
assert torch.equal(read_parameter(model.a.weight), a_before.clamp(0.45, 0.48))
# PartwiseAdamW on ZeRO-3's flat fp32 partitions: step 1 trains parts a and b, step 2 only a
from deepspeed.utils import safe_get_full_optimizer_state
from xfm.runtime.config import OptimConfig
from xfm.runtime.optim import PartwiseAdamW, set_lr

class Two(nn.Module):
    def __init__(self, init_weights=True):
        super().__init__(); self.a = nn.Linear(6, 6); self.b = nn.Linear(6, 5)
        if init_weights:
            self.init_weights()
    def init_weights(self):
        torch.manual_seed(1); self.a.reset_parameters(); self.b.reset_parameters()
    def forward(self, x, use_b):
        y = torch.tanh(self.a(x))
        return (self.b(y) if use_b else y).pow(2).mean()

two = build_model(Two, cfg, 3)
with deepspeed.zero.GatheredParameters(list(two.parameters())):
    ref = Two(init_weights=False)
    ref.load_state_dict({k: v.detach().clone() for k, v in two.state_dict().items()})
def groups(m):
    return [{"params": list(m.a.parameters()), "part": "a", "lr_mult": 1.0},
            {"params": list(m.b.parameters()), "part": "b", "lr_mult": 1.0}]
skipping = sys.argv[1] == "fixed"  # the control: a plain AdamW (set_lr falls back to lr 0)
opt = (PartwiseAdamW if skipping else torch.optim.AdamW)(groups(two), lr=0.01, weight_decay=0.1)
ref_opt = torch.optim.AdamW(groups(ref), lr=0.01, weight_decay=0.1)
engine2, *_ = deepspeed.initialize(model=two, optimizer=opt, config=cfg)
ocfg = OptimConfig(lr=0.01, warmup_steps=0, decay="constant")
x = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))  # the same on both ranks

def b_state():
    z3 = engine2.optimizer
    steps = {}
    for i, flat in enumerate(z3.fp32_partitioned_groups_flat):
        part = z3.optimizer.param_groups[z3.sub_group_to_group_id[i]]["part"]
        steps[part] = float(z3.optimizer.state[flat]["step"])
    out = {"steps": steps}
    for n in ("weight", "bias"):
        p = getattr(two.b, n)
        out[n] = safe_get_full_fp32_param(p).clone()
        for k in ("exp_avg", "exp_avg_sq"):
            out[f"{n}.{k}"] = safe_get_full_optimizer_state(p, k).clone()
    return out

for step, use_b in enumerate((True, False)):
    set_lr(engine2.optimizer, step, ocfg, 10, {"a", "b"} if use_b else {"a"})
    engine2.backward(engine2(x, use_b)); engine2.step()
    clear_grad_partitions(engine2)
    ref_opt.zero_grad(set_to_none=True)
    ref(x, use_b).backward(); ref_opt.step()
    if step == 0:
        before = b_state()
after = b_state()
identical = all(torch.equal(before[k], after[k]) for k in before if k != "steps")
ref_diff = max((after[f"{n}.{k}"] - ref_opt.state[getattr(ref.b, n)][k]).abs().max().item()
               for n in ("weight", "bias") for k in ("exp_avg", "exp_avg_sq"))
a_diff = max((safe_get_full_fp32_param(p) - q).abs().max().item() for p, q in zip(two.a.parameters(), ref.a.parameters()))
b_weight_diff = (after["weight"] - ref.b.weight).abs().max().item()
partwise = {"identical": identical, "steps": after["steps"], "ref_diff": ref_diff, "a_diff": a_diff,
            "b_weight_diff": b_weight_diff, "ref_b_step": float(ref_opt.state[ref.b.weight]["step"])}

# one result file per rank (two ranks printing to one pipe interleave their lines)
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"ok": True, "stale_moved": stale_moved, "partwise": partwise}, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)  # as xfm-pretrain does: gloo threads can abort the interpreter's teardown (cli.py)
'''


@pytest.mark.distributed
def test_zero3_scalar_params_init_clamp_and_stale_gradients(tmp_path):
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT)
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    import os

    env = dict(os.environ, **env)
    results = {}
    for mode in ("fixed", "stale"):
        out = tmp_path / mode
        out.mkdir()
        proc = subprocess.run(torchrun_cmd(2, [str(script), mode, str(out)]), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, tail(proc)
        results[mode] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["ok"] for r in results[mode])
    assert all(r["stale_moved"] == 0.0 for r in results["fixed"])
    # the control: without clearing, DeepSpeed re-applies b's old gradient in step 2
    assert all(r["stale_moved"] > 1e-4 for r in results["stale"]), results["stale"]
    for r in results["fixed"]:  # PartwiseAdamW: part b untouched in step 2, as torch's AdamW leaves it
        pw = r["partwise"]
        assert pw["identical"] and pw["steps"] == {"a": 2.0, "b": 1.0} and pw["ref_b_step"] == 1.0, pw
        assert pw["ref_diff"] < 1e-7 and pw["a_diff"] < 1e-6 and pw["b_weight_diff"] < 1e-7, pw
    for r in results["stale"]:  # the control: lr 0 keeps b's weights but decays its moments
        pw = r["partwise"]
        assert not pw["identical"] and pw["steps"] == {"a": 2.0, "b": 2.0} and pw["ref_diff"] > 1e-6, pw
        assert pw["b_weight_diff"] < 1e-7, pw


def test_metrics_lines_and_optional_tensorboard(tmp_path, data_env, capsys):
    from xfm.pretrain.cli import main
    from xfm.runtime.metrics import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path, tensorboard=False)
    w.event(event="start", world_size=2)
    w.write({"step": 1, "loss": 3.5, "loss/text": 1.0})
    w.close()
    recs = read_metrics(tmp_path)
    assert recs[0]["event"] == "start" and recs[1] == {"step": 1, "loss": 3.5, "loss/text": 1.0}
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            MetricsWriter(tmp_path, tensorboard=True)
        # the command stops before starting anything, saying what to install
        rc = main(["--config", str(TINY), "--out", str(tmp_path / "tb"), "--set", "logging.tensorboard=true"])
        err = capsys.readouterr().err
        assert rc == 2 and "pip install tensorboard" in err and "logging.tensorboard=false" in err, err
        assert not (tmp_path / "tb").exists()
    else:
        w = MetricsWriter(tmp_path, tensorboard=True)
        w.write({"step": 1, "loss": 1.0})
        w.close()
        assert any((tmp_path / "tensorboard").iterdir())
    # the shipped cluster config runs without the optional package
    assert load_pretrain_config(REPO / "configs" / "pretrain" / "base_4m.yaml").logging.tensorboard is False


def test_resume_refuses_a_checkpoint_of_another_world_size_and_a_dangling_latest(tmp_path):
    import torch

    from xfm.runtime import checkpointing

    ckpt = tmp_path / "checkpoints"
    (ckpt / "step00000004").mkdir(parents=True)
    torch.save({"step": 4, "rng": checkpointing.rng_state(), "streams": {}, "world_size": 4},
               ckpt / "step00000004" / "xfm_rank00000.pt")
    (ckpt / "latest").write_text("step00000004\n")
    with pytest.raises(RuntimeError, match="written by 4 ranks, this run has 1.*ds_to_universal"):
        checkpointing.load(engine=None, ckpt_dir=ckpt)
    (ckpt / "latest").write_text("step00000008\n")
    with pytest.raises(FileNotFoundError, match="step00000008"):
        checkpointing.read_latest(ckpt)
    assert checkpointing.read_latest(tmp_path / "nothing") is None


def test_missing_deepspeed_internals_stop_the_start_naming_the_version(monkeypatch):
    import types

    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import Init

    from xfm.runtime.engine import (DeepSpeedInternalsMissing, clear_grad_partitions, require_deepspeed_internals,
                                    require_engine_internals)

    require_deepspeed_internals(3)  # the installed version has them
    monkeypatch.delattr(Init, "_zero_init_param")
    with pytest.raises(DeepSpeedInternalsMissing, match=rf"DeepSpeed {deepspeed.__version__} lacks "
                                                        r"Init._zero_init_param.*deepspeed==0.19.8"):
        require_deepspeed_internals(3)
    require_deepspeed_internals(2)  # not needed below ZeRO-3
    # the live attributes: a ZeRO-3 optimizer without the gradient buffer, groups without 'part'
    opt = types.SimpleNamespace(param_groups=[{"params": [], "part": "text"}])
    engine = types.SimpleNamespace(optimizer=opt, zero_optimization_stage=lambda: 3)
    with pytest.raises(DeepSpeedInternalsMissing, match="grad_partitions_flat_buffer.*stale gradients"):
        require_engine_internals(engine)
    with pytest.raises(DeepSpeedInternalsMissing, match="grad_partitions_flat_buffer"):
        clear_grad_partitions(engine)  # no silent skip any more
    opt.grad_partitions_flat_buffer = torch.ones(3)
    require_engine_internals(engine)
    clear_grad_partitions(engine)
    assert opt.grad_partitions_flat_buffer.sum() == 0
    opt.param_groups.append({"params": []})
    with pytest.raises(DeepSpeedInternalsMissing, match=r"param_groups\[i\]\['part'\]"):
        require_engine_internals(engine)


def test_parts_a_step_did_not_use_keep_still():
    """ZeRO steps every partition: a part without gradient in a step (zero-filled) would still
    move by Adam momentum. The tracker + set_lr mark such parts inactive for that step and
    PartwiseAdamW (build_optimizer) skips them."""
    import torch

    from xfm.runtime.engine import PartTracker
    from xfm.runtime.optim import build_optimizer, part_of, set_lr
    from xfm.model import XFM
    from xfm.model_config import model_config

    assert part_of("heads.itm.0.weight") == "heads.itm" and part_of("vision.blocks.0.norm1.weight") == "vision"
    model = XFM(model_config("tiny"))
    optim = OptimConfig(lr=1e-2, warmup_steps=0, decay="constant")
    opt = build_optimizer(model, optim)
    tracker = PartTracker(model)
    ids = torch.randint(4, 100, (2, 8))
    mask = torch.ones_like(ids)

    def step(use_vision: bool, freeze: bool = True):
        tracker.reset()
        opt.zero_grad(set_to_none=False)
        loss = model.text_mlm_logits(model.encode_text(ids, mask)).logsumexp(-1).mean()
        if use_vision:
            loss = loss + model.encode_image(torch.randn(2, 3, 32, 32)).pow(2).mean()
        loss.backward()
        for p in model.parameters():  # what ZeRO does: every partition has a (maybe zero) grad
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        set_lr(opt, 0, optim, 10, tracker.parts if freeze else None)
        opt.step()

    step(use_vision=True)  # the vision encoder gets Adam state
    assert {"text", "vision", "heads.text_mlm"} <= tracker.parts and "fusion" not in tracker.parts
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(use_vision=False)  # a text-only step
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("vision.") for n in moved)
    assert "text.encoder.layer.0.attention.self.query.weight" in moved
    # the control: without it the text-only step moves the vision encoder (momentum, decay)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(use_vision=False, freeze=False)
    assert not torch.equal(model.vision.blocks[0].mlp.fc1.weight, before["vision.blocks.0.mlp.fc1.weight"])
    tracker.remove()


def test_xfm_init_weights_keyword(monkeypatch):
    """``XFM(config, init_weights=False)`` skips the init (the engine initialises the ZeRO-3
    partitioned model itself, with its parameters gathered); the default still initialises."""
    from xfm.model import XFM
    from xfm.model_config import model_config

    calls = []
    monkeypatch.setattr(XFM, "init_weights", lambda self: calls.append(self))
    skipped = XFM(model_config("tiny"), init_weights=False)
    assert calls == []
    assert skipped.heads.text_mlm.decoder.weight is skipped.text.embeddings.word_embeddings.weight  # still tied
    done = XFM(model_config("tiny"))
    assert calls == [done]


def test_activation_checkpointing_per_encoder_keeps_the_gradients():
    """engine.activation_checkpointing switches each named encoder alone; the gradients are the
    same as without (recomputation, not a different computation)."""
    import torch

    from xfm.model import XFM
    from xfm.model_config import model_config
    from xfm.runtime.process import set_encoder_checkpointing as _set_encoder_checkpointing

    torch.manual_seed(0)
    cfg = model_config("tiny")  # no dropout / drop path: both passes compute the same thing
    assert cfg.vision.drop_path == 0.0 and cfg.text.hidden_dropout == 0.0
    model = XFM(cfg).train()
    _set_encoder_checkpointing(model, ["vision", "fusion"])
    assert (model.text.encoder.grad_checkpointing, model.vision.grad_checkpointing,
            model.fusion.encoder.grad_checkpointing) == (False, True, True)
    ids = torch.randint(4, 100, (2, 8))
    mask = torch.ones_like(ids)
    pixels = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad(set_to_none=True)
        v = model.encode_image(pixels)
        t = model.encode_text(ids, mask)
        model.itm_logits(model.fuse(v, None, t, mask)).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_ckpt = grads()
    _set_encoder_checkpointing(model, [])
    assert not model.vision.grad_checkpointing
    plain = grads()
    assert with_ckpt.keys() == plain.keys() and any(n.startswith("vision.blocks") for n in plain)
    for n in plain:
        torch.testing.assert_close(with_ckpt[n], plain[n], msg=n)


def test_schedule_length_is_checked_on_resume(tmp_path):
    """The checkpoint's schedule against the resume's: another length is refused naming both and
    the override; the override, and checkpoints written before the schedule was stored, pass."""
    from xfm.runtime import checkpointing

    ckpt = tmp_path / "checkpoints"
    (ckpt / "step00000010").mkdir(parents=True)
    torch.save({"step": 10, "rng": checkpointing.rng_state(), "streams": {}, "world_size": 1,
                "schedule": {"total_steps": 20}}, ckpt / "step00000010" / "xfm_rank00000.pt")
    (ckpt / "latest").write_text("step00000010\n")
    stored = checkpointing.read_schedule(ckpt)
    assert stored == {"total_steps": 20}
    checkpointing.check_schedule(stored, {"total_steps": 20})
    with pytest.raises(checkpointing.ScheduleMismatch,
                       match=r"total_steps=20 in .*, 40 requested.*--stop-at.*--set optim.reschedule=true"):
        checkpointing.check_schedule(stored, {"total_steps": 40}, where=str(ckpt))
    checkpointing.check_schedule(stored, {"total_steps": 40}, allow_change=True)
    checkpointing.check_schedule(None, {"total_steps": 40})
    assert checkpointing.read_schedule(tmp_path / "none") is None
