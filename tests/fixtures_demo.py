"""The demo's own pretraining, run once for the long tests that need it.

- `demo_pretraining` (session): `scripts/demo_run.py --tasks ""` as `make demo` runs its first
  stages: the demo world, `xfm-prep` shards and tokenizer, the demo model pretrained on one
  ZeRO-3 rank with configs/pretrain/demo.yaml (300 steps), its export and zero-shot retrieval.
  About 4 minutes on 2 cores. The shortened demo (test_demo.py) runs the fine-tuning stages on
  top of it; test_finetune_from_demo_pretraining.py fine-tunes from its export.
- `demo_world` (session): the DATA directory whose `world/` is that demo world
  (`prepare_world(seed=0, size="demo")`: pictures, shards, tokenizer; ~30 s), for a test that
  pretrains on it its own way without the pair-stream run above; `demo_pretraining` runs on it.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what an official file cannot say about the demo model: its text/fusion head count (the shapes
# do not fix it: `model.num_heads`, as for any official file), its fixed position table (a
# non-persistent buffer) and the training-time fields of its size preset
OFFICIAL_OVERRIDES = ["model.num_heads=4", "model.overrides={size: tiny, vision: {abs_pos_embed: sincos}}"]
# BEiT's / BERT's init (std 0.02, layer scale 0.1), which the demo model had before its init was
# scaled for its width: the long tests measured on pretrainings and random starts from it keep it
EARLIER_INIT_STD, EARLIER_LAYER_SCALE = 0.02, 0.1
EARLIER_INIT_SET = (f"model.overrides={{init_std: {EARLIER_INIT_STD}, "
                    f"vision: {{layer_scale_init: {EARLIER_LAYER_SCALE}}}}}")


def earlier_init_demo_model():
    """The demo model with BEiT's / BERT's init, randomly initialised."""
    from dataclasses import replace

    from xfm.config import load_config
    from xfm.model import XFM
    from xfm.model_config import ModelConfig

    cfg = load_config(REPO / "configs" / "model" / "demo.yaml", ModelConfig)
    cfg = replace(cfg, init_std=EARLIER_INIT_STD, vision=replace(cfg.vision, layer_scale_init=EARLIER_LAYER_SCALE))
    return XFM(cfg)


@dataclass(frozen=True)
class DemoPretraining:
    data: Path    # --data: DATA/world, and DATA/demo for the results
    runs: Path    # --runs: RUNS/pretrain/export, RUNS/zeroshot.json, RUNS/finetune/TASK

    @property
    def export(self) -> Path:
        return self.runs / "pretrain" / "export"

    @property
    def tokenizer(self) -> Path:
        return self.data / "world" / "tokenizer"


def demo_run_cmd(demo: DemoPretraining, *args: str) -> list[str]:
    """`scripts/demo_run.py` on the shared world and runs; a finished stage is reused."""
    return [sys.executable, str(REPO / "scripts" / "demo_run.py"), "--data", str(demo.data),
            "--runs", str(demo.runs), "--nproc", "1", *args]


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    from xfm.data_prep.synth import prepare_world

    data = tmp_path_factory.mktemp("demo_world")
    prepare_world(data / "world", seed=0, size="demo")   # what scripts/demo_run.py's first stage makes
    return data


@pytest.fixture(scope="session")
def demo_pretraining(demo_world, tmp_path_factory) -> DemoPretraining:
    from fixtures_pretrain import tail  # imported here: pytest registers fixtures_pretrain after this module

    root = tmp_path_factory.mktemp("demo_pretraining")
    # the demo run reuses the finished world (its first stage only checks it)
    demo = DemoPretraining(data=demo_world, runs=root / "runs")
    proc = subprocess.run(demo_run_cmd(demo, "--tasks", "", "--no-plots"), cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, tail(proc)
    assert demo.export.is_dir() and (demo.runs / "zeroshot.json").is_file(), tail(proc)
    return demo
