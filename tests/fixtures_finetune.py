"""Fixtures and helpers for the fine-tuning tests.

- `finetune_ckpts` (session): the checkpoints a user fine-tunes from, made by the tests:
  `export` = `xfm-export` of the short 2-rank pretraining run (`tiny_run`), `official` = an
  official-layout `.th` (the tiny layout of the official key table, random weights), `random`
  = a randomly initialised tiny model in our format (the "from random weights" baseline), and
  `world` = the prepared synthetic world whose downstream sets the task configs read.
- `run_finetune(ckpts, task, out, *overrides, nproc=1, extra=())`: runs `xfm-finetune` in a
  subprocess (torchrun for nproc > 1) with the task's shipped config and test-sized settings;
  returns (CompletedProcess, eval.json dict or None).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# small and fast: one worker-less loader, progress bars off, 1 log line per step
TEST_SETTINGS = ["train.num_workers=0", "logging.progress=false", "logging.every=1",
                 "engine.precision=fp32", "engine.dist_timeout_s=300"]


@dataclass(frozen=True)
class FinetuneCheckpoints:
    export: Path
    official: Path
    random: Path
    world: Path  # XFM_DATA/world

    @property
    def xfm_data(self) -> Path:
        return self.world.parent


def finetune_env(ckpts: FinetuneCheckpoints | Path, **extra) -> dict:
    """The runs' environment; ``ckpts`` or directly the XFM_DATA directory. ``extra`` overrides
    (e.g. OMP_NUM_THREADS=2 for a run that has the machine to itself)."""
    xfm_data = ckpts.xfm_data if isinstance(ckpts, FinetuneCheckpoints) else ckpts
    env = dict(os.environ)
    env.update(XFM_DATA=str(xfm_data), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def finetune_cmd(task: str, config: str | Path, checkpoint: Path | str, out: Path, overrides=(),
                 nproc: int = 1, extra=()) -> list[str]:
    args = ["-m", "xfm.finetune", "--task", task, "--config", str(config), "--checkpoint", str(checkpoint),
            "--out", str(out), *extra]
    for ov in [*TEST_SETTINGS, *overrides]:
        args += ["--set", ov]
    if nproc == 1:
        return [sys.executable, *args]
    from fixtures_pretrain import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *args]


def run_finetune(ckpts: FinetuneCheckpoints, task: str, out: Path, *overrides, checkpoint=None,
                 config=None, nproc: int = 1, extra=(), timeout: float = 600):
    cmd = finetune_cmd(task, config or REPO / "configs" / "finetune" / f"{task}.yaml",
                       checkpoint if checkpoint is not None else ckpts.export, out, overrides, nproc, extra)
    proc = subprocess.run(cmd, cwd=REPO, env=finetune_env(ckpts), capture_output=True, text=True, timeout=timeout)
    result = None
    if (out / "eval.json").is_file():
        result = json.loads((out / "eval.json").read_text())
    return proc, result


def _official_rows(ours: dict, config) -> list:
    """The tiny official key table with every shape taken from a model of ours with the tiny
    depths (e.g. the demo model, twice as wide): our tensors' shapes for the rows that map to
    ours, the config's widths for the rows we have no counterpart for."""
    from test_checkpoint_official import layout, official_state_dict
    from xfm.checkpoint.official import map_official

    rows = layout("tiny")
    names, _, _ = map_official(official_state_dict(rows, meta=True), "tiny layout")
    official_to_ours = {official: name for name, (official, _) in names.items()}
    w, vocab, positions = config.text.hidden_size, config.text.vocab_size, config.text.max_position_embeddings
    grid = config.vision.image_size // config.vision.patch_size
    by_suffix = {  # the rows without a counterpart in our model
        "relative_position_index": [grid * grid + 1] * 2, "position_ids": [1, positions],
        "lm_cap_head.bias": [vocab], "lm_cap_head.dense.weight": [w, w], "lm_cap_head.dense.bias": [w],
        "lm_cap_head.layer_norm.weight": [w], "lm_cap_head.layer_norm.bias": [w],
        "lm_cap_head.decoder.weight": [vocab, w], "lm_cap_head.decoder.bias": [vocab],
        "lm_head.decoder.weight": [vocab, w], "lm_head.decoder.bias": [vocab],
        "embeddings.position_embeddings.weight": [positions, w],
        "embeddings.token_type_embeddings.weight": [config.text.type_vocab_size, w],
        "embeddings.LayerNorm.weight": [w], "embeddings.LayerNorm.bias": [w]}
    out = []
    for key, shape, kind, dtype, tied in rows:
        if key in official_to_ours:
            shape = list(ours[official_to_ours[key]].shape)
        else:
            suffix = next((s for s in by_suffix if key.endswith(s)), None)
            assert suffix is not None, f"no shape rule for the official row {key}"
            shape = by_suffix[suffix]
        out.append([key, shape, kind, dtype, tied])
    return out


def official_tiny_th(path: Path, seed: int = 0, weights: Path | None = None) -> Path:
    """An official-layout `.th` of the tiny key table, tied rows shared as in a real one.

    Random values, or with ``weights`` (a checkpoint of ours with the tiny depths; any widths)
    that model's tensors written under their official names: the official file a user of the
    original code would hold for the same weights. The rows our model has no counterpart for
    (the fusion embeddings, the caption heads) keep their random values."""
    import torch
    from test_checkpoint_official import layout, official_state_dict
    from xfm.checkpoint.official import map_official
    from xfm.model import XFM

    if weights is None:
        sd = official_state_dict(layout("tiny"), seed=seed)
    else:
        model = XFM.from_pretrained(weights)
        ours = model.state_dict()
        sd = official_state_dict(_official_rows(ours, model.config), seed=seed)
        mapped, _, unused = map_official(sd, "tiny layout")
        assert not unused, unused
        # the text MLM decoder is tied to the word embeddings (in both layouts)
        assert torch.equal(ours["heads.text_mlm.decoder.weight"], ours["text.embeddings.word_embeddings.weight"])
        missing = set(ours) - set(mapped) - {"heads.text_mlm.decoder.weight"} - \
            {k for k in ours if k.endswith("relative_position_index")}
        assert not missing, f"no official name for {sorted(missing)}"
        with torch.no_grad():
            for name, (official, _) in mapped.items():
                sd[official].copy_(ours[name])  # in place: tied rows stay one tensor
    torch.save({"model": sd, "epoch": 0}, path)
    return path


@pytest.fixture(scope="session")
def finetune_ckpts(tiny_run, pretrain_data, tmp_path_factory) -> FinetuneCheckpoints:
    import torch
    from xfm.model import XFM
    from xfm.model_config import model_config
    from xfm.pretrain.export import export

    root = tmp_path_factory.mktemp("finetune_ckpts")
    export(tiny_run.run_dir, root / "export")
    official = official_tiny_th(root / "xfm_tiny_official.th")
    torch.manual_seed(1234)
    XFM(model_config("tiny")).save_pretrained(root / "random")
    return FinetuneCheckpoints(root / "export", official, root / "random", Path(pretrain_data.world))
