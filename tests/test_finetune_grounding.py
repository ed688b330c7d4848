"""Grounding fine-tuning: box-consistent augmentation, the inclusive-pixel metric per split, both
annotation layouts, no stop-gradient, and runs of ``xfm-finetune --task grounding`` from an
official-layout checkpoint and from an export on 2 ranks under ZeRO-3, whose distributed
evaluation must equal a 1-process evaluation of the same best/ model.

At these tests' budget (the tiny model, tens of steps) a run predicts about the average box
from any start; that grounding from a pretraining beats random weights is shown at the demo's
size in test_finetune_from_demo_pretraining.py (`make test-long`). What is shown here:
the task's loss really trains the model (a fixed batch is fitted far below the average-box
loss), and evaluations agree across process counts down to each predicted box.
"""
from __future__ import annotations

import json
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_finetune import run_finetune

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tail_text(proc) -> str:
    return f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


def _files(world):
    return {s: [str(world / f"grounding/refcoco_{s}.jsonl")] for s in ("train", "val", "test")}


def _task(world, **cfg):
    from xfm.finetune.config import FinetuneConfig
    from xfm.finetune.tasks.grounding import GroundingConfig, GroundingTask
    from xfm.model import XFM
    from xfm.model_config import model_config
    from xfm.tokenizer import load_tokenizer

    cfg.setdefault("files", _files(world))
    model_cfg = model_config("tiny")
    assert model_cfg.stop_text_grad  # the pretraining setting: fine-tuning must ignore it
    task = GroundingTask(FinetuneConfig(), GroundingConfig(image_root=str(world), **cfg), model_cfg,
                         load_tokenizer(world / "tokenizer"))
    torch.manual_seed(0)
    return task, task.build_model(XFM(model_cfg))


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    from xfm.finetune.images import IMAGE_MEAN, IMAGE_STD

    return x * torch.tensor(IMAGE_STD).view(3, 1, 1) + torch.tensor(IMAGE_MEAN).view(3, 1, 1)


def test_training_transform_keeps_the_box_on_its_object():
    """A white box on black, off-centre: after crop / flip / resize the target box must sit on
    the white pixels (a flip that forgot the box, or a crop that cut it, fails here)."""
    from xfm.finetune.tasks.grounding import BoxKeepingTransform, GroundingAugment

    img = Image.new("RGB", (90, 70))
    box = (23, 11, 30, 20)
    img.paste((255, 255, 255), (box[0], box[1], box[0] + box[2], box[1] + box[3]))
    transform = BoxKeepingTransform(64, GroundingAugment(randaugment=False))
    flips = set()
    for seed in range(16):
        _seed(seed)
        pixels, (cx, cy, w, h), flipped = transform(img, box)
        flips.add(flipped)
        bright = _denormalise(pixels).mean(0)  # (64, 64) in [0, 1]
        x0, x1, y0, y1 = (cx - w / 2) * 64, (cx + w / 2) * 64, (cy - h / 2) * 64, (cy + h / 2) * 64
        inside = bright[int(y0) + 2:int(y1) - 1, int(x0) + 2:int(x1) - 1]
        assert inside.numel() and float(inside.min()) > 0.8, (seed, flipped)
        outside = torch.ones_like(bright, dtype=torch.bool)
        outside[max(0, int(y0) - 2):int(y1) + 3, max(0, int(x0) - 2):int(x1) + 3] = False
        assert float(bright[outside].max()) < 0.2, (seed, flipped)
    assert flips == {True, False}


def test_flip_swaps_left_and_right_in_the_phrase(prepared_world, tmp_path):
    from xfm.finetune.images import swap_left_right

    world = prepared_world.root
    row = json.loads((world / "grounding/refcoco_train.jsonl").read_text().splitlines()[0])
    row["text"] = "the shape on the left"
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    task, _ = _task(world, files={"train": [str(tmp_path / "train.jsonl")]})
    ds = task.dataset("train", True)
    picture = Image.open(world / row["image"]).convert("RGB")
    seen = set()
    for seed in range(1000, 1040):
        _seed(seed)
        item = ds[0]
        _seed(seed)
        flipped = ds.transform(picture, row["bbox"])[2]  # the same draw, replayed
        text = swap_left_right(row["text"]) if flipped else row["text"]
        assert item["ids"] == task.tokenizer(text)["input_ids"]
        seen.add(flipped)
        if len(seen) == 2 and seed >= 1010:
            break
    assert seen == {True, False}


def test_metrics_use_inclusive_pixels_of_the_original_picture_per_split(prepared_world):
    from xfm.finetune.formats import GroundingExample, ImageRef

    task, _ = _task(prepared_world.root)
    ref = ImageRef("x.jpg", "x.jpg")
    gt = [10.0, 10.0, 20.0, 20.0]
    examples = [GroundingExample(ref, "a", gt, 1, split="testA"), GroundingExample(ref, "b", gt, 2, split="testA"),
                GroundingExample(ref, "c", gt, 3, split="testB")]
    w, h = 100.0, 50.0

    def norm(x, y, bw, bh):  # pixel [x, y, w, h] -> the head's normalised (cx, cy, w, h)
        return [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]

    # exact; shifted 10 px (inclusive IoU = 10*20 / (400 + 400 - 200) = 1/3); shifted 4 px
    # (16*20 / (800 - 320) = 2/3)
    boxes = torch.tensor([norm(*gt), norm(20, 10, 20, 20), norm(14, 10, 20, 20)], dtype=torch.float64)
    outputs = {"box": boxes, "size": torch.tensor([[w, h]] * 3)}
    metrics = task.compute_metrics(outputs, "test", SimpleNamespace(examples=examples))
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["acc_testA"] == pytest.approx(0.5) and metrics["acc_testB"] == pytest.approx(1.0)
    assert metrics["mean_iou"] == pytest.approx((1 + 1 / 3 + 2 / 3) / 3)


def _write_refer(rows, tmp_path, split_of):
    """The original release's files for these rows: refs(unc).p (a pickle of plain containers)
    and a COCO instances.json."""
    images, anns, refs = {}, [], []
    for k, r in enumerate(rows):
        images[r["image_id"]] = {"id": r["image_id"], "file_name": r["image"], "width": r["width"],
                                 "height": r["height"]}
        anns.append({"id": 1000 + k, "image_id": r["image_id"], "bbox": r["bbox"], "category_id": 1})
        refs.append({"ref_id": r["ref_id"], "ann_id": 1000 + k, "image_id": r["image_id"], "split": split_of(k),
                     "file_name": f"x_{r['ref_id']}.jpg", "sentences": [{"sent": r["text"], "raw": r["text"]}]})
    (tmp_path / "instances.json").write_text(json.dumps({"images": list(images.values()), "annotations": anns}))
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return str(tmp_path / "refs(unc).p"), str(tmp_path / "instances.json")


def test_both_layouts_give_the_same_examples(prepared_world, tmp_path):
    world = prepared_world.root
    rows = [json.loads(line) for line in (world / "grounding/refcoco_test.jsonl").read_text().splitlines()]
    split_of = lambda k: "testA" if k % 2 == 0 else "testB"  # noqa: E731
    refs, instances = _write_refer(rows, tmp_path, split_of)
    # X-VLM's own JSON carries neither boxes nor splits: both come from the annotations
    bare = tmp_path / "test.json"
    bare.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("bbox", "split")} for r in rows]))
    task, _ = _task(world, files={"test": [str(bare)]}, refs=refs, instances=instances)
    from_json = task.read_split("test")
    task_refer, _ = _task(world, layout="refer", refs=refs, instances=instances)
    from_refer = task_refer.read_split("test")  # test = testA + testB
    assert len(from_json) == len(from_refer) == len(rows)
    for k, (a, b, r) in enumerate(zip(from_json, from_refer, rows)):
        assert (a.image, a.text, a.bbox, a.ref_id, a.split) == (b.image, b.text, b.bbox, b.ref_id, b.split)
        assert a.bbox == [float(v) for v in r["bbox"]] and a.split == split_of(k)
    task_refer.task_cfg.refer_splits["val"] = ["testB"]
    assert {ex.split for ex in task_refer.read_split("val")} == {"testB"}


def test_picture_size_disagreeing_with_the_record_is_an_error(prepared_world, tmp_path):
    from xfm.finetune.formats import DataFormatError

    world = prepared_world.root
    row = json.loads((world / "grounding/refcoco_val.jsonl").read_text().splitlines()[0])
    row.update(width=640, height=480, bbox=[1, 1, 5, 5])
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    task, _ = _task(world, files={"val": [str(tmp_path / "val.jsonl")]})
    with pytest.raises(DataFormatError, match=r"val\.jsonl: line 1.*ref_id.*640 x 480.*64 x 64"):
        task.dataset("val", False)[0]


def test_loss_trains_every_encoder_and_fits_a_batch(prepared_world):
    """No stop-gradient (the config's pretraining flag is on): the loss reaches all three
    encoders and the pretraining box head; a fixed batch is fitted far below the average-box
    loss."""
    from xfm.finetune.tasks.grounding import GroundingAugment
    from xfm.objectives.losses import giou_loss

    task, model = _task(prepared_world.root, augment=GroundingAugment(crop=False, hflip=False, randaugment=False))
    ds = task.dataset("train", True)
    batch = task.collate([ds[i] for i in range(8)], True)
    loss, _ = task.loss(model, batch, None)
    loss.backward()
    for part in ("text", "vision", "fusion", "heads.bbox"):
        grads = [p.grad for n, p in model.xfm.get_submodule(part).named_parameters() if "mask_token" not in n]
        assert all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part
    target = batch["target"]
    mean_box = target.mean(0, keepdim=True).expand_as(target)
    baseline = float((mean_box - target).abs().sum(1).mean() + giou_loss(mean_box, target).mean())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(60):
        opt.zero_grad()
        loss, _ = task.loss(model, batch, None)
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * baseline, (float(loss), baseline)


TEST_RUN = ["train.max_steps=4", "train.batch_size=8", "train.eval_batch_size=8", "train.eval_every=4"]


def _predictions(run_dir):
    return json.loads((run_dir / "grounding_test.json").read_text())


@pytest.mark.slow
def test_finetune_from_official(finetune_ckpts, tmp_path):
    proc, result = run_finetune(finetune_ckpts, "grounding", tmp_path / "official", *TEST_RUN,
                                "model.num_heads=4", checkpoint=finetune_ckpts.official)
    assert proc.returncode == 0, tail_text(proc)
    assert "task grounding: 0 new tensor(s)" in proc.stdout  # the pretraining box head is reused
    assert result["step"] == 4 and set(result["metrics"]) == {"acc", "mean_iou", "acc_test"}
    assert 0.0 <= result["metrics"]["acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_zero3_finetune_and_distributed_eval_equal_single_process(finetune_ckpts, tmp_path):
    out = tmp_path / "zero3"
    proc, result = run_finetune(finetune_ckpts, "grounding", out, *TEST_RUN, "engine.zero_stage=3", nproc=2)
    assert proc.returncode == 0, tail_text(proc)
    assert result["step"] == 4 and result["checkpoint"] == str(out / "best")
    n_test = len((finetune_ckpts.world / "grounding/refcoco_test.jsonl").read_text().splitlines())
    two = _predictions(out)  # the 2-rank test evaluation of best/
    assert len(two) == n_test  # every phrase once (34 phrases over 2 ranks x batches of 8: padded)

    again = tmp_path / "eval1"
    proc, single = run_finetune(finetune_ckpts, "grounding", again, checkpoint=out / "best", extra=("--eval-only",))
    assert proc.returncode == 0, tail_text(proc)
    one = _predictions(again)
    assert [r["ref_id"] for r in one] == [r["ref_id"] for r in two]
    np.testing.assert_allclose([r["pred"] for r in one], [r["pred"] for r in two], atol=1e-4)
    for k, v in single["metrics"].items():
        assert result["metrics"][k] == pytest.approx(v, abs=1e-6), k

    # best/ is a whole X-FM model whose box head is the fine-tuned one
    from safetensors.torch import load_file

    from xfm.model import XFM

    model = XFM.from_pretrained(out / "best")
    saved = load_file(str(out / "best" / "model.safetensors"))
    torch.testing.assert_close(model.heads.bbox[0].weight, saved["heads.bbox.0.weight"])


@pytest.mark.slow
def test_position_table_run_saves_the_checkpoint_layout_and_rescores(finetune_ckpts, tmp_path):
    """The small-model recipe (the fixed position table switched on for fine-tuning): best/ keeps
    the checkpoint layout (the table is rebuilt from the config, never saved), loads strictly,
    and --eval-only on it gives the run's own test metrics."""
    from safetensors.torch import load_file

    from xfm.model import XFM

    out = tmp_path / "table"
    proc, result = run_finetune(finetune_ckpts, "grounding", out, *TEST_RUN,
                                "model.overrides={vision: {abs_pos_embed: sincos}}")
    assert proc.returncode == 0, tail_text(proc)
    saved = load_file(str(out / "best" / "model.safetensors"))
    assert not [k for k in saved if "pos_embed" in k or "relative_position_index" in k]
    model = XFM.from_pretrained(out / "best")
    assert model.config.vision.abs_pos_embed == "sincos" and model.vision.pos_embed is not None

    proc, again = run_finetune(finetune_ckpts, "grounding", tmp_path / "rescore", checkpoint=out / "best",
                               extra=("--eval-only",))
    assert proc.returncode == 0, tail_text(proc)
    for k, v in result["metrics"].items():
        assert again["metrics"][k] == pytest.approx(v, abs=1e-6), k
