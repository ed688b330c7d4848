"""NLVR2 fine-tuning: the model's shape (sentence once, fusion per picture, [image 0, image 1]
into the MLP), no stop-gradient, training flips that keep statements true, and runs of
``xfm-finetune --task nlvr2`` from an export and from an official-layout checkpoint.

"Fine-tuning from a pretraining beats random weights" is shown in
test_finetune_from_pretraining.py (a 200-step pretraining on the larger `ci` world). Here the
checkpoints come from the shared 24-step pretraining, at which NLVR2 stays at the label prior
from it and from random weights alike; what is shown: the task's loss really trains the model (a fixed batch is fitted well
below the prior's cross-entropy ln 2), and the run's eval.json equals an independent evaluation
of the saved best/ model.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from fixtures_finetune import run_finetune

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tail_text(proc) -> str:
    return f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


def _task(world, **cfg_overrides):
    from xfm.finetune.config import FinetuneConfig
    from xfm.finetune.tasks.nlvr2 import Nlvr2Config, Nlvr2Task
    from xfm.model import XFM
    from xfm.model_config import model_config
    from xfm.tokenizer import load_tokenizer

    files = {"train": [str(world / "nlvr2/train.jsonl")], "val": [str(world / "nlvr2/dev.jsonl")],
             "test": [str(world / "nlvr2/test.jsonl")]}
    cfg = Nlvr2Config(files=files, image_root=str(world), **cfg_overrides)
    model_cfg = model_config("tiny")
    assert model_cfg.stop_text_grad  # the pretraining setting: fine-tuning must ignore it
    task = Nlvr2Task(FinetuneConfig(), cfg, model_cfg, load_tokenizer(world / "tokenizer"))
    torch.manual_seed(0)
    return task, task.build_model(XFM(model_cfg))


def _item(dataset, i, seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return dataset[i]


def test_logits_fuse_each_picture_separately_and_concatenate_in_order(prepared_world):
    task, model = _task(prepared_world.root)
    model.eval()
    ds = task.dataset("val", False)
    batch = task.collate([ds[i] for i in range(3)], False)
    with torch.no_grad():
        got = task.logits(model, batch)
        x = model.xfm
        text = x.encode_text(batch["ids"], batch["mask"])
        cls = [x.fuse(x.encode_image(batch[k]), None, text, batch["mask"])[:, 0] for k in ("image0", "image1")]
        want = model.head(torch.cat(cls, dim=1))
        swapped = model.head(torch.cat(cls[::-1], dim=1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, swapped, atol=1e-4)  # the order matters, and it is [0, 1]
    head = model.head
    assert [type(m).__name__ for m in head] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (128, 256, 2)
    assert model.xfm.heads is None  # the pretraining heads are not part of this model


def test_loss_trains_every_encoder_and_fits_a_batch(prepared_world):
    """No stop-gradient (the config's pretraining flag is on), and the loss can be driven far
    below the label prior's ln 2 on a fixed batch in which every sentence comes with a pair of
    pictures it is true of and one it is false of: only the pictures tell those rows apart."""
    from xfm.finetune.images import TrainAugment

    task, model = _task(prepared_world.root, augment=TrainAugment(crop_scale=(1.0, 1.0), hflip=False,
                                                                  randaugment=False))
    ds = task.dataset("train", True)
    batch = task.collate([ds[i] for i in range(12)], True)
    by_sentence = {}
    for ex in ds.examples[:12]:
        by_sentence.setdefault(ex.sentence, set()).add(int(ex.label))
    assert all(labels == {0, 1} for labels in by_sentence.values()), by_sentence
    loss, _ = task.loss(model, batch, None)
    loss.backward()
    for part in ("text", "vision", "fusion"):
        grads = [p.grad for n, p in getattr(model.xfm, part).named_parameters() if "mask_token" not in n]
        assert all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        loss, _ = task.loss(model, batch, None)
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * math.log(2), float(loss)


def test_pair_flip_mirrors_the_pair_and_the_sentence(prepared_world):
    from xfm.finetune.images import TrainAugment, swap_left_right

    no_crop = TrainAugment(crop_scale=(1.0, 1.0), hflip=True, randaugment=False)
    task, _ = _task(prepared_world.root, augment=no_crop, flip="pair")
    ds = task.dataset("train", True)
    i = next(k for k, ex in enumerate(ds.examples) if "left" in ex.sentence or "right" in ex.sentence)
    items = [_item(ds, i, seed) for seed in range(12)]
    as_written = task.tokenizer(ds.examples[i].sentence)["input_ids"]
    plain = [it for it in items if it["ids"] == as_written]
    mirrored = [it for it in items if it["ids"] != as_written]
    assert plain and mirrored, "12 draws gave only one kind of pair"
    p, m = plain[0], mirrored[0]
    torch.testing.assert_close(m["image0"], p["image1"].flip(-1))
    torch.testing.assert_close(m["image1"], p["image0"].flip(-1))
    assert m["ids"] == task.tokenizer(swap_left_right(ds.examples[i].sentence))["input_ids"]
    assert m["label"] == p["label"]

    task_each, _ = _task(prepared_world.root, augment=no_crop, flip="each")
    ds_each = task_each.dataset("train", True)
    for seed in range(6):  # each picture flipped on its own: order and sentence never change
        it = _item(ds_each, i, seed)
        assert it["ids"] == p["ids"]
        assert torch.allclose(it["image0"], p["image0"]) or torch.allclose(it["image0"], p["image0"].flip(-1))


def test_official_rows_read_like_the_xvlm_rows(prepared_world, tmp_path):
    """The official layout (identifier-named pictures) gives the same dataset items."""
    import json

    from xfm.finetune.tasks.nlvr2 import Nlvr2Config, Nlvr2Task

    world = prepared_world.root
    rows = [json.loads(line) for line in (world / "nlvr2/dev.jsonl").read_text().splitlines()]
    official = []
    for k, row in enumerate(rows):
        pair = f"dev-{k}-0"
        for side, image in enumerate(row["images"]):
            (tmp_path / f"{pair}-img{side}.png").symlink_to(world / image)
        official.append({"identifier": f"{pair}-0", "sentence": row["sentence"], "label": row["label"],
                         "left_url": "x", "right_url": "y"})
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in official) + "\n")
    task, _ = _task(world)
    cfg = Nlvr2Config(files={"val": [str(tmp_path / "dev.json")]}, split_image_roots={"val": str(tmp_path)},
                      image_root="/nonexistent")
    other = Nlvr2Task(task.cfg, cfg, task.model_cfg, task.tokenizer)
    a, b = task.dataset("val", False), other.dataset("val", False)
    assert len(a) == len(b) == len(rows)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["ids"] == y["ids"] and x["label"] == y["label"]
        torch.testing.assert_close(x["image0"], y["image0"])
        torch.testing.assert_close(x["image1"], y["image1"])


def test_missing_picture_is_reported_with_record_and_field(prepared_world, tmp_path):
    import json

    from xfm.finetune.formats import MissingImagesError
    from xfm.finetune.tasks.nlvr2 import Nlvr2Config, Nlvr2Task

    task, _ = _task(prepared_world.root)
    bad = tmp_path / "dev.jsonl"
    bad.write_text(json.dumps({"images": ["images/0.jpg", "images/nope.jpg"], "sentence": "s", "label": "True"}) + "\n")
    other = Nlvr2Task(task.cfg, Nlvr2Config(files={"val": [str(bad)]}, image_root=str(prepared_world.root)),
                      task.model_cfg, task.tokenizer)
    with pytest.raises(MissingImagesError, match=r"dev\.jsonl.*line 1.*right"):
        other.dataset("val", False)


TEST_RUN = ["train.max_steps=4", "train.batch_size=8", "train.eval_batch_size=16", "train.eval_every=4"]


@pytest.mark.slow
def test_finetune_from_export_and_official(finetune_ckpts, tmp_path):
    from xfm.finetune.metrics import accuracy
    from xfm.finetune.model_io import load_task_model
    from xfm.finetune.task import TaskContext

    out = tmp_path / "export"
    proc, result = run_finetune(finetune_ckpts, "nlvr2", out, *TEST_RUN)
    assert proc.returncode == 0, tail_text(proc)
    assert result["task"] == "nlvr2" and result["split"] == "test" and result["step"] == 4
    assert set(result["metrics"]) == {"acc"}
    assert "task nlvr2: 6 new tensor(s)" in proc.stdout  # the MLP head (3 layers), nothing else
    # the eval.json figure is what the saved best/ model scores, evaluated independently here
    task, model = load_task_model(out / "best")
    task.task_cfg.files = {"test": [str(finetune_ckpts.world / "nlvr2/test.jsonl")]}
    task.task_cfg.image_root = str(finetune_ckpts.world)
    ds = task.dataset("test", False)
    batch = task.collate([ds[i] for i in range(len(ds))], False)
    with torch.no_grad():
        preds = task.predict(model, batch, TaskContext())
    assert result["metrics"]["acc"] == pytest.approx(accuracy(preds["logits"].argmax(-1), batch["label"]))

    proc, result = run_finetune(finetune_ckpts, "nlvr2", tmp_path / "official", *TEST_RUN,
                                "model.num_heads=4", checkpoint=finetune_ckpts.official)
    assert proc.returncode == 0, tail_text(proc)
    assert 0.0 <= result["metrics"]["acc"] <= 1.0 and result["step"] == 4
