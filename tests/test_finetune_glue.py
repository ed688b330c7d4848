"""GLUE through xfm-finetune: the shared loop end to end on the language encoder alone.

One run from the exported pretraining checkpoint is checked from every side a user touches:
eval.json, metrics.jsonl, the best/ directory (XFM.from_pretrained and load_task_model), an
in-process re-computation of the reported metric from best/, and --eval-only re-scoring.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fixtures_finetune import REPO, finetune_cmd, finetune_env, run_finetune

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def glue_run(finetune_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("glue") / "run"
    proc, result = run_finetune(finetune_ckpts, "glue", out, "train.epochs=3", "train.batch_size=8",
                                "optim.lr=5e-4", "optim.warmup_ratio=0.0", "train.eval_every=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, result


def test_glue_run_writes_eval_metrics_and_best(glue_run):
    out, proc, result = glue_run
    assert result["task"] == "glue" and result["split"] == "test"
    assert set(result["metrics"]) == {"accuracy"} and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert result["checkpoint"].endswith("best")
    # the load report names exactly the new head tensors
    assert "task glue: 6 new tensor(s)" in proc.stdout
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if "loss" in l and "event" not in l]
    evals = [l for l in lines if l.get("event") == "eval"]
    assert [l["step"] for l in train] == list(range(1, len(train) + 1))
    assert all(k in train[0] for k in ("lr", "samples_per_s", "step_time_s", "mem_mb", "loss/ce"))
    assert len(evals) >= 3  # every 4 steps + the final test
    # the weights really move: the training loss falls on this small set (3 epochs, lr 5e-4)
    assert sum(l["loss"] for l in train[-3:]) < sum(l["loss"] for l in train[:3])
    # only the text encoder was built: best/ has no vision or fusion weights
    from safetensors import safe_open

    with safe_open(str(out / "best" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and all(k.startswith(("text.", "heads.", "task_head.")) for k in keys)
    assert not any(k.startswith(("vision.", "fusion.")) for k in keys)


def test_best_dir_loads_and_reproduces_the_reported_metric(glue_run, finetune_ckpts, monkeypatch):
    out, _, result = glue_run
    monkeypatch.setenv("XFM_DATA", str(finetune_ckpts.xfm_data))
    from xfm import XFM
    from xfm.finetune.model_io import load_task_model

    backbone = XFM.from_pretrained(out / "best")
    report = backbone.load_report
    assert not report.missing and not report.unused
    assert all(k.startswith("task_head.") for k in report.ignored)
    assert any(k.startswith("vision.") for k in report.new)  # not in a text-only model: new

    task, model = load_task_model(out / "best")
    for k, v in model.xfm.text.state_dict().items():
        torch.testing.assert_close(v, backbone.text.state_dict()[k])
    dev = task.dataset("test", False)
    batch = task.collate([dev[i] for i in range(len(dev))], False)
    with torch.no_grad():
        logits = task.logits(model, batch)
    acc = float((logits.argmax(-1) == batch["label"]).float().mean())
    assert acc == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)


def test_eval_only_rescoring_of_best(glue_run, finetune_ckpts, tmp_path):
    out, _, result = glue_run
    proc, again = run_finetune(finetune_ckpts, "glue", tmp_path / "rescore", checkpoint=out / "best",
                               extra=["--eval-only"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again["metrics"] == result["metrics"] and again["step"] == 0
    assert not (tmp_path / "rescore" / "best").exists()  # no training, no new best


def test_glue_from_a_hugging_face_roberta_directory(finetune_ckpts, tmp_path):
    """A single-encoder task starts from an HF RoBERTa dir (the rest of X-FM is not built)."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, type_vocab_size=1,
                        pad_token_id=1, layer_norm_eps=1e-5)
    hf = tmp_path / "roberta"
    RobertaModel(cfg).save_pretrained(hf)
    proc, result = run_finetune(finetune_ckpts, "glue", tmp_path / "run", "train.max_steps=2",
                                "train.batch_size=8", "model.overrides.size=tiny", checkpoint=hf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(hf-roberta)" in proc.stdout and "task glue: 6 new tensor(s)" in proc.stdout
    assert "accuracy" in result["metrics"]


def test_config_and_task_errors_are_clear(tmp_path, capsys):
    from xfm.finetune.cli import main

    assert main(["--task", "no_such_task", "--config", "x.yaml"]) == 2
    assert "unknown task 'no_such_task'; known tasks: " in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: []\ntask:\n  name: SynthRTE\n  colour: blue\n")
    assert main(["--task", "glue", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "task.colour" in err and str(bad) in err
    bad.write_text("task:\n  name: NotGlue\n")
    assert main(["--task", "glue", "--config", str(bad)]) == 2
    assert "unknown GLUE task 'NotGlue'" in capsys.readouterr().err
    assert main(["--task", "list"]) == 0
    assert "glue" in capsys.readouterr().out.split()


def test_lr_mult_prefix_naming_no_parameter_stops_the_run_with_a_config_error(finetune_ckpts, tmp_path):
    """Only the built task model can tell that a prefix names nothing; the run stops before its
    first step with the config error, not a traceback."""
    proc, result = run_finetune(finetune_ckpts, "glue", tmp_path / "run", "train.max_steps=2",
                                "optim.lr_mult=4", "optim.lr_mult_prefixes=[heads.]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "xfm-finetune: config error: optim.lr_mult_prefixes: ['heads.'] name no trainable parameter" in proc.stderr
    assert "Traceback" not in proc.stderr and result is None


# runs xfm-finetune with a ZeRO-3 optimizer that lacks the gradient buffer the stale-gradient fix
# clears (as a DeepSpeed that renamed it would); the class-level attributes are still there
_WITHOUT_INTERNAL = """
import runpy, sys
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
original = DeepSpeedZeroOptimizer_Stage3.__init__
def init_without_buffer(self, *args, **kwargs):
    original(self, *args, **kwargs)
    del self.grad_partitions_flat_buffer
DeepSpeedZeroOptimizer_Stage3.__init__ = init_without_buffer
sys.argv = ["xfm-finetune", *sys.argv[1:]]
runpy.run_module("xfm.finetune", run_name="__main__")
"""


def test_finetune_engine_checks_the_deepspeed_internals_as_pretraining_does(finetune_ckpts, tmp_path):
    """Fine-tuning starts its engine through the shared runtime (``xfm.runtime.engine.initialize``),
    so an engine without what the ZeRO-3 fixes read stops the run before its first step, naming
    the attribute (the same check covers the layer-decay groups reaching the client optimizer).
    Control: with the fine-tune loop's own ``deepspeed.initialize`` this run got past the start."""
    cmd = finetune_cmd("glue", REPO / "configs" / "finetune" / "glue.yaml", finetune_ckpts.export, tmp_path / "run",
                       ["train.max_steps=1", "train.batch_size=8", "engine.zero_stage=3", "optim.layer_decay=0.5"])
    assert cmd[1:3] == ["-m", "xfm.finetune"]
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_INTERNAL, *cmd[3:]], cwd=REPO,
                          env=finetune_env(finetune_ckpts), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "lacks z3 optimizer.grad_partitions_flat_buffer" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "eval.json").exists()
