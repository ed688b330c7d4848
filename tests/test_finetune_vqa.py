"""VQA through xfm-finetune: answer decoder from the fusion encoder, answer-list ranking.

Subprocess runs (the shared loop end to end): from the exported pretraining checkpoint (with the
held-out answer likelihood of best/ against the start's); --eval-only of best/; an
official-layout .th at ZeRO-3 on 2 ranks. In process: the task's ranking with k = the answer-list size against scoring every
answer in full, questions whose answers are all outside the answer list, malformed files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures_finetune import REPO, run_finetune

pytestmark = pytest.mark.timeout(900)

# two epochs of the test world (192 questions, 12 steps an epoch at batch 16), evaluated at the end
TRAIN = ("train.epochs=2", "train.batch_size=16", "train.eval_batch_size=24", "optim.lr=3e-3",
         "optim.warmup_ratio=0.0", "train.eval_every=24", "task.augment.randaugment=false")


@pytest.fixture(scope="module")
def vqa_run(finetune_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa") / "export"
    proc, result = run_finetune(finetune_ckpts, "vqa", out, *TRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, result


def heldout_answer_nll(task, model, batch) -> float:
    from xfm.finetune.task import TaskContext

    with torch.no_grad():
        return float(task.loss(model.eval(), batch, TaskContext())[0])


def test_vqa_run_reports_metrics_and_learns_the_answers(vqa_run, finetune_ckpts, monkeypatch):
    """At this budget (a 24-step pretraining, 24 fine-tuning steps) accuracy is not a usable
    signal: from the export and from random weights alike the ranking answers "no" to every
    question (14.6 % on the test world; test_finetune_from_pretraining.py shows a longer
    pretraining beating random weights). What fine-tuning must show here is that the decoder
    learns the answers: the held-out (val) answer NLL of best/ is far below the start's."""
    out, _, result = vqa_run
    m = result["metrics"]
    assert result["task"] == "vqa" and result["split"] == "test"
    assert {"acc", "questions", "outside_answer_list", "acc/yes/no", "acc/count"} <= set(m)
    assert m["questions"] == 48 and m["outside_answer_list"] == 0 and 0 <= m["acc"] <= 100
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [l["loss"] for l in lines if "loss" in l and "event" not in l]
    assert len(losses) == 24 and sum(losses[-4:]) < 0.7 * sum(losses[:4])

    from xfm.finetune.images import TrainAugment
    from xfm.finetune.model_io import load_task_model

    task0, start = _task(finetune_ckpts, monkeypatch)
    task0.task_cfg.augment = TrainAugment(hflip=False, randaugment=False, crop_scale=(1.0, 1.0))
    val = task0.dataset("val", True)  # the val questions with their answers and weights
    batch = task0.collate([val[i] for i in range(len(val))], True)
    task1, tuned = load_task_model(out / "best")
    before, after = heldout_answer_nll(task0, start, batch), heldout_answer_nll(task1, tuned, batch)
    assert after < 0.7 * before, (before, after)


def test_vqa_results_files_have_the_leaderboard_format(vqa_run, finetune_ckpts):
    out, _, result = vqa_run
    answers = set(json.loads((finetune_ckpts.world / "vqa" / "answer_list.json").read_text()))
    for split, file in (("val", "val.json"), ("test", "test.json")):
        rows = json.loads((out / f"vqa_results_{split}.json").read_text())
        questions = json.loads((finetune_ckpts.world / "vqa" / file).read_text())
        assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
        assert all(set(r) == {"question_id", "answer"} and r["answer"] in answers for r in rows)
    # the reported accuracy is the one of the written answers
    from xfm.finetune.metrics import vqa_score

    rows = json.loads((out / "vqa_results_test.json").read_text())
    truth = json.loads((finetune_ckpts.world / "vqa" / "test.json").read_text())
    assert vqa_score(rows, truth)["overall"] == pytest.approx(result["metrics"]["acc"])


def test_vqa_eval_only_of_best_reproduces_the_metrics(vqa_run, finetune_ckpts, tmp_path):
    out, _, result = vqa_run
    proc, again = run_finetune(finetune_ckpts, "vqa", tmp_path / "rescore", checkpoint=out / "best",
                               extra=["--eval-only"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again["metrics"] == result["metrics"] and again["step"] == 0
    assert (tmp_path / "rescore" / "vqa_results_test.json").read_text() == \
        (out / "vqa_results_test.json").read_text()


def test_best_carries_its_answer_list_and_works_when_moved(vqa_run, finetune_ckpts, tmp_path, monkeypatch):
    """best/ ranks the answers of its own copy of the list: moved away from the data (and with
    XFM_DATA pointing nowhere) it loads and answers from the same list."""
    import shutil

    import yaml
    from xfm.finetune.model_io import load_task_model

    out, _, _ = vqa_run
    world_list = json.loads((finetune_ckpts.world / "vqa" / "answer_list.json").read_text())
    assert json.loads((out / "best" / "answer_list.json").read_text()) == world_list
    meta = yaml.safe_load((out / "best" / "task.yaml").read_text())
    assert meta["task_config"]["answer_list"] == "answer_list.json"
    moved = tmp_path / "moved"
    shutil.copytree(out / "best", moved)
    monkeypatch.setenv("XFM_DATA", str(tmp_path / "nowhere"))
    task, _ = load_task_model(moved)
    assert task.task_cfg.answer_list == str(moved / "answer_list.json")
    assert task.answer_list == world_list


def test_vqa_from_an_official_th_at_zero3_on_two_ranks(finetune_ckpts, tmp_path):
    """The decoder's positions/LayerNorm come from the checkpoint's fusion embeddings (lr 1e-12
    keeps every weight where it started, so best/ shows the initial values), built partitioned."""
    out = tmp_path / "official"
    proc, result = run_finetune(finetune_ckpts, "vqa", out, "train.max_steps=2", "train.batch_size=4",
                                "train.eval_batch_size=8", "optim.lr=1e-12", "optim.weight_decay=0.0",
                                "engine.zero_stage=3",
                                "model.num_heads=4", checkpoint=finetune_ckpts.official, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["metrics"]["questions"] == 48
    from safetensors.torch import load_file

    best = load_file(str(out / "best" / "model.safetensors"))
    sd = torch.load(finetune_ckpts.official, map_location="cpu", weights_only=True)["model"]
    emb = "fusion_encoder.roberta.embeddings."
    for key in ("position_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
        torch.testing.assert_close(best[f"task_head.embeddings.{key}"], sd[emb + key].float())
    # control: not the language encoder's table (what a checkpoint without them gives)
    assert not torch.equal(best["task_head.embeddings.position_embeddings.weight"],
                           sd["text_encoder.roberta.embeddings.position_embeddings.weight"].float())
    # the answer decoder's layers are the fusion layers, its LM head the fusion MLM head
    torch.testing.assert_close(best["task_head.layer.0.crossattention.self.query.weight"],
                               best["fusion.encoder.layer.0.crossattention.self.query.weight"])
    assert len(json.loads((out / "vqa_results_test.json").read_text())) == 48


# ------------------------------------------------------------------------------ in process
def _task(finetune_ckpts, monkeypatch, *overrides):
    monkeypatch.setenv("XFM_DATA", str(finetune_ckpts.xfm_data))
    from xfm.finetune.config import load_finetune_config
    from xfm.finetune.model_io import load_backbone
    from xfm.finetune.tasks.vqa import VqaConfig, VqaTask
    from xfm.tokenizer import load_tokenizer

    cfg, task_cfg = load_finetune_config(str(REPO / "configs/finetune/vqa.yaml"), VqaConfig, list(overrides))
    backbone = load_backbone(finetune_ckpts.export)
    tok = load_tokenizer(cfg.tokenizer)
    task = VqaTask(cfg, task_cfg, backbone.model.config, tok)
    model = task.build_model(backbone.model).eval()
    return task, model


def test_ranking_with_k_the_list_size_equals_scoring_every_answer(finetune_ckpts, monkeypatch):
    from xfm.finetune.task import TaskContext
    from xfm.model.generation import rank_answers, score_answers

    for score in ("original", "corrected"):
        task, model = _task(finetune_ckpts, monkeypatch, "task.k_test=1000", f"task.score={score}")
        data = task.dataset("val", False)
        batch = task.collate([data[i] for i in range(12)], False)
        with torch.no_grad():
            ranked = task.predict(model, batch, TaskContext())["answer"]
            fused = task.question_states(model, batch)
            ids, mask = task.answer_tensors(fused.device)
            full = score_answers(model.head, fused, None, ids, mask, score=score)
        assert torch.equal(ranked, full.argmax(1))
        # and the whole order: rank_answers with k = A sorts every answer by its full score
        with torch.no_grad():
            top, probs = rank_answers(model.head, fused, None, ids, mask, ids.shape[0], score=score)
        torch.testing.assert_close(probs, full.softmax(-1).gather(1, top))
        assert (full.gather(1, top).diff(dim=1) <= 1e-5).all()
        # k = 1 keeps the best first token only: a different (cheaper) ranking, not always the same
        task.task_cfg.k_test = 1
        with torch.no_grad():
            first_only = task.predict(model, batch, TaskContext())["answer"]
        assert first_only.shape == ranked.shape


def test_questions_whose_answers_are_all_outside_the_list_are_counted(finetune_ckpts, monkeypatch, tmp_path):
    rows = json.loads((finetune_ckpts.world / "vqa" / "val.json").read_text())
    rows[0]["answer"] = ["zebra"] * 10                  # nowhere in the answer list
    rows[1]["answer"] = ["The Red."] * 5 + ["purple"] * 5  # in the list after normalisation / exactly
    path = tmp_path / "val.json"
    path.write_text(json.dumps(rows))
    task, _ = _task(finetune_ckpts, monkeypatch, f"task.files.val=[{path}]")
    data = task.dataset("val", False)
    red = task.answer_list.index("red")
    outputs = {"answer": torch.full((len(rows),), red, dtype=torch.long)}
    metrics = task.compute_metrics(outputs, "val", data)
    assert metrics["outside_answer_list"] == 1 and metrics["questions"] == len(rows)
    # the question is scored (0 for it), not dropped: the accuracy averages over every question
    from xfm.finetune.metrics import vqa_accuracy

    expected = sum(vqa_accuracy("red", r["answer"]) for r in rows) / len(rows)
    assert metrics["acc"] == pytest.approx(100 * expected)


@pytest.mark.parametrize("field,value,message", [
    ("question_id", None, "field 'question_id'"),
    ("answer", "red", "field 'answer'"),
    ("image", "images/nope.jpg", "field 'image'"),
])
def test_malformed_vqa_files_name_file_record_and_field(finetune_ckpts, monkeypatch, tmp_path, field, value, message):
    rows = json.loads((finetune_ckpts.world / "vqa" / "train.json").read_text())
    if value is None:
        del rows[3][field]
    else:
        rows[3][field] = value
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    task, _ = _task(finetune_ckpts, monkeypatch, f"task.files.train=[{path}]")
    with pytest.raises(ValueError) as err:
        task.dataset("train", True)
    text = str(err.value)
    assert "train.json" in text and "record 3" in text and message in text, text


def test_vqa_loss_is_the_weighted_answer_nll_per_question(finetune_ckpts, monkeypatch, tmp_path):
    """X-VLM's loss: each distinct answer's summed token NLL times its share of the human answers
    (a VG-QA row: its one answer at weight 0.5), summed, divided by the number of questions."""
    from xfm.finetune.task import TaskContext
    from xfm.model.decoder import decoder_labels

    rows = json.loads((finetune_ckpts.world / "vqa" / "train.json").read_text())[:2]
    rows[0]["answer"] = ["2"] * 6 + ["3"] * 3 + ["two"]
    rows[1] = {"dataset": "vg", "image": rows[1]["image"], "question": rows[1]["question"], "answer": "yes"}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    task, model = _task(finetune_ckpts, monkeypatch, f"task.files.train=[{path}]", "task.augment.hflip=false")
    data = task.dataset("train", True)
    items = [data[0], data[1]]
    assert items[0]["weights"] == pytest.approx([0.6, 0.3, 0.1]) and items[1]["weights"] == [0.5]
    batch = task.collate(items, True)
    with torch.no_grad():
        loss, _ = task.loss(model, batch, TaskContext())
        fused = task.question_states(model, batch)
        expected = 0.0
        for q, item in enumerate(items):
            for ids, w in zip(item["answers"], item["weights"]):
                a = torch.tensor([ids])
                m = torch.ones_like(a)
                nll = model.head(a, m, encoder_states=fused[q:q + 1], encoder_mask=batch["mask"][q:q + 1],
                                 labels=decoder_labels(a, m), reduction="none").loss
                expected += w * float(nll)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_official_vqav2_files_read_like_the_xvlm_rows(finetune_ckpts, monkeypatch, tmp_path):
    rows = json.loads((finetune_ckpts.world / "vqa" / "val.json").read_text())
    image_dir = tmp_path / "val2014"
    image_dir.mkdir()
    questions, annotations = [], []
    for r in rows:
        image_id = int(Path(r["image"]).stem)
        link = image_dir / f"COCO_val2014_{image_id:012d}.jpg"
        if not link.exists():
            link.symlink_to(finetune_ckpts.world / r["image"])
        questions.append({"question_id": r["question_id"], "image_id": image_id, "question": r["question"]})
        annotations.append({"question_id": r["question_id"], "image_id": image_id, "answer_type": r["answer_type"],
                            "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(r["answer"])]})
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    task, _ = _task(finetune_ckpts, monkeypatch, "task.files.val=[]",
                    f"task.official={{val: {{questions: {tmp_path / 'q.json'}, annotations: {tmp_path / 'a.json'}, "
                    f"image_dir: {image_dir}}}}}")
    official = task.dataset("val", False).examples
    reference, _ = _task(finetune_ckpts, monkeypatch)
    xvlm = reference.dataset("val", False).examples
    assert [(e.question_id, e.question, e.answers, e.answer_type) for e in official] == \
        [(e.question_id, e.question, e.answers, e.answer_type) for e in xvlm]
    assert all(Path(o.image.path).resolve() == Path(x.image.path).resolve() for o, x in zip(official, xvlm))
