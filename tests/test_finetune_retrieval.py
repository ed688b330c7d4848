"""Retrieval through xfm-finetune: training losses, the evaluation protocol and the runs.

In-process (tiny random model, the synthetic world's test split): the re-ranking evaluation
equals a brute-force computation of the protocol (ITC dot products, top-k re-scored by the raw
ITM logit, -100 elsewhere), the work split over ranks covers every query once with the same
number of fusion calls per rank, ITM trains the language encoder (no stop-gradient), and a
Karpathy file gives the same evaluation set as the X-VLM JSON.

Subprocess runs (few, a handful of steps each): from the exported pretraining (beats the same
run from random weights), from the official-layout .th on 2 ranks (its distributed test
evaluation equals a single-process --eval-only of the same best/), and zero-shot --eval-only.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fixtures_finetune import run_finetune

pytestmark = pytest.mark.timeout(900)

METRIC_KEYS = {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"}
# a few steps, small batches; the training set is 192 pairs (64 scenes x 3 captions)
SHORT = ["train.batch_size=16", "train.eval_batch_size=16", "optim.lr=1e-4", "optim.warmup_ratio=0.0",
         "task.rerank_batch_size=64"]


# ----------------------------------------------------------------------------- in-process
def _task(world: Path, **task_overrides):
    from xfm.finetune.config import FinetuneConfig
    from xfm.finetune.tasks.retrieval import RetrievalConfig, RetrievalTask
    from xfm.model_config import model_config
    from xfm.tokenizer import load_tokenizer

    files = dict(train_files=[str(world / "retrieval/train.json")], val_file=str(world / "retrieval/val.json"),
                 test_file=str(world / "retrieval/test.json"), image_root=str(world))
    task_cfg = RetrievalConfig(**{**files, **task_overrides})
    cfg = FinetuneConfig()
    cfg.train.num_workers = 0
    cfg.train.eval_batch_size = 5   # batches that do not divide the galleries
    cfg.logging.progress = False
    return RetrievalTask(cfg, task_cfg, model_config("tiny"), load_tokenizer(world / "tokenizer"))


def _runner(task, model):
    """The loop's Runner around the bare task model (it has the engine's call signature)."""
    from xfm.finetune.loop import Runner

    info = SimpleNamespace(rank=0, world_size=1)
    return Runner(task.cfg, task, model, model, info, torch.device("cpu"), torch.float32, Path("."))


@pytest.fixture(scope="module")
def tiny_task(prepared_world):
    from xfm.model import XFM
    from xfm.model_config import model_config

    torch.manual_seed(0)
    task = _task(prepared_world.root, k_test=5, rerank_batch_size=7)
    model = task.build_model(XFM(model_config("tiny")))
    return task, model


def _brute_force_scores(task, model, split, k):
    """The protocol written out plainly: one fusion call per (query, candidate) pair."""
    from xfm.finetune.task import pad_ids

    data = task.dataset(split, False)
    images = torch.stack([data.images[i]["image"] for i in range(len(data.images))])
    ids, mask = pad_ids([data.texts[j]["ids"] for j in range(len(data.texts))],
                        task.tokenizer.pad_token_id, task.max_len)
    assert ids.shape[1] == task.max_len  # texts padded to the max length
    xfm = model.xfm.eval()
    with torch.no_grad():
        img_states, txt_states = xfm.encode_image(images), xfm.encode_text(ids, mask)
        sims = xfm.image_features(img_states) @ xfm.text_features(txt_states).t()
        i2t = torch.full(sims.shape, -100.0)
        t2i = torch.full(sims.t().shape, -100.0)

        def itm(i, j):
            fused = xfm.fuse(img_states[i:i + 1], None, txt_states[j:j + 1], mask[j:j + 1])
            return float(xfm.itm_logits(fused)[0, 1])

        for i in range(sims.shape[0]):
            for j in sims[i].topk(min(k, sims.shape[1])).indices.tolist():
                i2t[i, j] = itm(i, j)
        for j in range(sims.shape[1]):
            for i in sims[:, j].topk(min(k, sims.shape[0])).indices.tolist():
                t2i[j, i] = itm(i, j)
    return i2t, t2i, data.records


def test_evaluation_equals_the_protocol_written_out(tiny_task):
    from xfm.finetune.metrics import retrieval_recall

    task, model = tiny_task
    runner = _runner(task, model)
    s_i2t, s_t2i = task.score_matrices(runner, "test")
    ref_i2t, ref_t2i, records = _brute_force_scores(task, model, "test", k=5)
    assert s_i2t.shape == (16, 48) and s_t2i.shape == (48, 16)
    torch.testing.assert_close(s_i2t, ref_i2t, atol=1e-5, rtol=0)
    torch.testing.assert_close(s_t2i, ref_t2i, atol=1e-5, rtol=0)
    # exactly k re-scored entries per query, -100 elsewhere
    assert ((s_i2t != -100).sum(1) == 5).all() and ((s_t2i != -100).sum(1) == 5).all()
    metrics = task.evaluate(runner, "test")
    assert set(metrics) == METRIC_KEYS
    assert metrics == retrieval_recall(ref_i2t, ref_t2i, records.txt2img, records.img2txt)
    assert model.training  # evaluation hands the model back in training mode


def test_control_a_softmaxed_itm_score_is_caught(tiny_task, monkeypatch):
    """Control: re-scoring with the ITM probability instead of the raw logit (a plausible
    mistake) changes the matrices the protocol test compares."""
    task, model = tiny_task
    ref_i2t, _, _ = _brute_force_scores(task, model, "test", k=5)
    def probability(self, m, b, ctx):
        fused = m.xfm.fuse(b["image_states"], None, b["text_states"], b["text_mask"])
        return m.xfm.itm_logits(fused).softmax(-1)[:, 1].float()

    monkeypatch.setattr(type(task), "itm_scores", probability)
    s_i2t, _ = task.score_matrices(_runner(task, model), "test")
    assert not torch.allclose(s_i2t, ref_i2t, atol=1e-5, rtol=0)


def test_k_is_clamped_to_the_gallery(tiny_task, prepared_world):
    task, model = tiny_task
    big = _task(prepared_world.root, k_test=256)
    s_i2t, s_t2i = big.score_matrices(_runner(big, model), "test")
    # 16 images, 48 texts: every pair re-scored (k = 48 texts per image, 16 images per text)
    assert not (s_i2t == -100).any() and not (s_t2i == -100).any()
    # the raw ITM logit, the same for a pair whichever direction scored it
    torch.testing.assert_close(s_i2t, s_t2i.t(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_rows,world", [(16, 1), (16, 2), (48, 5), (3, 4), (0, 2)])
def test_rerank_rows_cover_each_query_once_with_equal_work(n_rows, world):
    from xfm.finetune.tasks.retrieval import rerank_rows

    plans = [rerank_rows(n_rows, r, world) for r in range(world)]
    assert len({len(rows) for rows, _ in plans}) == 1  # same number of fusion calls on every rank
    real = [row for rows, n in plans for row in rows[:n]]
    assert real == list(range(n_rows))


def test_itm_trains_the_language_encoder(tiny_task):
    """Fine-tuning has no stop-gradient: ITM alone reaches the text encoder (control: with the
    pretraining setting it does not)."""
    from dataclasses import replace

    from xfm.objectives.losses import LossContext, itm_loss

    task, model = tiny_task
    xfm = model.xfm
    items = [task.dataset("train", True)[i] for i in range(0, 12, 3)]  # 4 different pictures
    batch = task.collate(items, True)

    def text_grad_after_itm():
        model.zero_grad(set_to_none=True)
        img = xfm.encode_image(batch["image"])
        txt = xfm.encode_text(batch["ids"], batch["mask"])
        fi, ft = xfm.features(img, txt)
        ctx = LossContext(generator=torch.Generator().manual_seed(0))
        itm_loss(xfm, img, None, txt, batch["mask"], fi, ft, xfm.heads.temp(), ctx, batch["image_id"]).backward()
        g = xfm.text.embeddings.word_embeddings.weight.grad
        return 0.0 if g is None else float(g.abs().sum())

    assert xfm.config.stop_text_grad is False
    assert text_grad_after_itm() > 0
    xfm.config = replace(xfm.config, stop_text_grad=True)
    try:
        assert text_grad_after_itm() == 0.0
    finally:
        xfm.config = replace(xfm.config, stop_text_grad=False)
    model.zero_grad(set_to_none=True)
    # the heads retrieval never uses are frozen, the tied word embeddings are not
    assert not any(p.requires_grad for p in xfm.heads.fusion_mlm.parameters())
    assert not any(p.requires_grad for p in xfm.heads.bbox.parameters())
    assert xfm.text.embeddings.word_embeddings.weight.requires_grad
    assert all(p.requires_grad for p in xfm.heads.itm.parameters())


def test_training_loss_uses_same_image_pairs_as_positives(tiny_task):
    task, model = tiny_task
    pairs = task.dataset("train", True)
    # two captions of one picture and one of another: ITM still finds a negative for each
    idx = [0, 1, 3, 4]
    assert [pairs.pairs[i].image_id for i in idx] == [0, 0, 1, 1]
    batch = task.collate([pairs[i] for i in idx], True)
    ctx = SimpleNamespace(group=None, world_size=1, rank=0, generator=torch.Generator().manual_seed(0))
    loss, parts = task.loss(model, batch, ctx)
    assert set(parts) == {"itc", "itm"} and torch.isfinite(loss) and float(parts["itm"]) > 0
    model.zero_grad(set_to_none=True)


def test_karpathy_file_gives_the_same_evaluation_set(prepared_world, tmp_path):
    """The same split written as a Karpathy dataset_*.json file reads to the same records."""
    world = prepared_world.root
    rows = json.loads((world / "retrieval/test.json").read_text())
    images = [{"filepath": "images", "filename": Path(r["image"]).name, "split": "test", "imgid": i,
               "sentences": [{"raw": c} for c in r["caption"]]} for i, r in enumerate(rows)]
    karpathy = tmp_path / "dataset_synth.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "synth"}))
    a = _task(world).dataset("test", False).records
    b = _task(world, test_file=str(karpathy)).dataset("test", False).records
    assert a == b and len(a.images) == 16 and len(a.texts) == 48


def test_missing_image_is_named_with_file_and_record(prepared_world, tmp_path):
    from xfm.finetune.formats import MissingImagesError

    world = prepared_world.root
    rows = json.loads((world / "retrieval/test.json").read_text())
    rows[3]["image"] = "images/no_such_picture.jpg"
    bad = tmp_path / "test.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(MissingImagesError, match=r"test.json: record 3: field 'image'.*no_such_picture"):
        _task(world, test_file=str(bad)).dataset("test", False)


# ----------------------------------------------------------------------------- runs
def _train_losses(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and "event" not in r]


@pytest.fixture(scope="module")
def runs(finetune_ckpts, tmp_path_factory):
    """The same 6-step fine-tuning from the exported pretraining and from random weights."""
    root = tmp_path_factory.mktemp("retrieval")
    out = {}
    for name in ("export", "random"):
        proc, result = run_finetune(finetune_ckpts, "retrieval", root / name, *SHORT, "train.max_steps=6",
                                    checkpoint=getattr(finetune_ckpts, name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (root / name, proc, result)
    return out


def test_finetune_from_export_writes_eval_and_starts_ahead_of_random(runs, finetune_ckpts):
    """What a short run can show. The tests' 24-step pretraining ends on the ITC plateau
    (its own loss/pairs/itc ends at ln 16, the uniform value: text features are still nearly
    identical), so recall after a few fine-tuning steps is at chance from it and from random
    weights alike and comparing r_mean would be a coin flip. What the pretrained weights do give
    is a calibrated start: ITM at the prior's entropy (1/3 positives: 0.6365) and ITC at the
    plateau, where random weights start above both; every one of the same 6 steps (same data,
    same negatives' seeds) has a lower loss from the export."""
    out, proc, result = runs["export"]
    assert result["task"] == "retrieval" and result["split"] == "test" and result["step"] >= 1
    assert set(result["metrics"]) == METRIC_KEYS and result["checkpoint"].endswith("best")
    assert all(0.0 <= v <= 100.0 for v in result["metrics"].values())
    assert "task retrieval: 0 new tensor(s)" in proc.stdout
    train = _train_losses(out)
    assert [r["step"] for r in train] == list(range(1, 7))
    rand = _train_losses(runs["random"][0])
    for a, b in zip(train, rand):
        assert a["loss"] < b["loss"] and a["loss/itm"] < b["loss/itm"], (a, b)
    assert abs(train[0]["loss/itm"] - 0.6365) < 0.01
    # the weights moved: best/ is not the export
    from safetensors.torch import load_file

    tuned = load_file(str(out / "best" / "model.safetensors"))
    start = load_file(str(finetune_ckpts.export / "model.safetensors"))
    moved = [k for k in start if k in tuned and not torch.equal(start[k], tuned[k])]
    assert any(k.startswith("text.") for k in moved) and any(k.startswith("fusion.") for k in moved)
    assert any(k.startswith("heads.itm.") for k in moved) and "heads.temp.temp" in moved
    # the heads retrieval does not use were frozen
    assert not any(k.startswith(("heads.bbox", "heads.fusion_mlm")) for k in moved)


def test_zero_shot_eval_only_from_pretraining(finetune_ckpts, runs, tmp_path):
    proc, result = run_finetune(finetune_ckpts, "retrieval", tmp_path / "zs", *SHORT, extra=["--eval-only"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["step"] == 0 and set(result["metrics"]) == METRIC_KEYS
    assert not (tmp_path / "zs" / "best").exists()
    print("zero-shot", result["metrics"])


def test_two_ranks_from_official_th_and_distributed_eval_equals_single(finetune_ckpts, tmp_path):
    """Fine-tune an official-layout .th on 2 ranks (ITC gathered across ranks), then re-score its
    best/ in one process: the 2-rank test evaluation equals the single-process one."""
    out = tmp_path / "official2"
    proc, result = run_finetune(finetune_ckpts, "retrieval", out, *SHORT, "train.max_steps=2",
                                "train.batch_size=8", "task.k_test=7", checkpoint=finetune_ckpts.official, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(result["metrics"]) == METRIC_KEYS
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2
    proc1, single = run_finetune(finetune_ckpts, "retrieval", tmp_path / "single", *SHORT, "task.k_test=7",
                                 checkpoint=out / "best", extra=["--eval-only"])
    assert proc1.returncode == 0, proc1.stderr[-3000:]
    assert single["metrics"] == result["metrics"]
