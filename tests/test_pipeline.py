"""``xfm.Pipeline`` and ``xfm-infer``: inference on the exported tiny model and on fine-tuned best/ dirs.

Reference computations go through the model's own API on tensors made by the fine-tuning
transforms, so a pipeline that preprocesses, pads, batches or maps boxes differently fails.
Fine-tuned models: a 2-step ``xfm-finetune`` run of grounding, image_cls, vqa and captioning
(two at a time); the pipeline must reproduce what each run's evaluation reported (its metric
or its results file).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures_finetune import REPO, finetune_cmd, finetune_env

pytestmark = pytest.mark.timeout(900)

TEXTS = ["a red circle", "two small blue squares left of a large green cross", "a cross", "the yellow diamond above"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(finetune_ckpts) -> Path:
    return finetune_ckpts.world


@pytest.fixture(scope="module")
def images(world) -> list[Path]:
    return sorted((world / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:6]


@pytest.fixture(scope="module")
def pipe(finetune_ckpts):
    from xfm import Pipeline

    return Pipeline.from_pretrained(finetune_ckpts.export, tokenizer=finetune_ckpts.world / "tokenizer",
                                    device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def reference(finetune_ckpts):
    """The same export loaded on its own: the model whose features the pipeline must reproduce."""
    from xfm import XFM

    return XFM.from_pretrained(finetune_ckpts.export).eval()


@pytest.fixture(scope="module")
def finetuned(finetune_ckpts, tmp_path_factory):
    """Run dir and eval.json of a 2-step xfm-finetune run of each task with an inference method,
    two runs at a time (one per core; about 1 GB of memory each)."""
    root = tmp_path_factory.mktemp("pipeline_runs")
    out = {}
    for wave in (("grounding", "image_cls"), ("vqa", "captioning")):
        procs = {}
        for task in wave:
            cmd = finetune_cmd(task, REPO / "configs" / "finetune" / f"{task}.yaml", finetune_ckpts.export,
                               root / task, ["train.batch_size=8", "train.max_steps=2", "train.eval_batch_size=32"])
            procs[task] = subprocess.Popen(cmd, cwd=REPO, env=finetune_env(finetune_ckpts), stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        for task, proc in procs.items():
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{task}: {err[-3000:]}"
            out[task] = (root / task, json.loads((root / task / "eval.json").read_text()))
    return out


def pixels(path_or_img, size: int) -> torch.Tensor:
    from xfm.finetune.images import eval_transform, load_image

    img = load_image(path_or_img) if not isinstance(path_or_img, Image.Image) else path_or_img
    return eval_transform(img, size)


def token_batch(tokenizer, texts, cap):
    from xfm.finetune.tasks.glue import pad_ids

    return pad_ids([tokenizer(t, truncation=True, max_length=cap)["input_ids"] for t in texts], tokenizer.pad_token_id)


def capacity(model) -> int:
    from xfm.finetune.task import text_capacity

    return text_capacity(model.config, model.config.text.max_position_embeddings)


# ----------------------------------------------------------------------------- pretrained export
def test_embeddings_equal_the_models_own_features(pipe, reference, images):
    size = reference.config.vision.image_size
    with torch.no_grad():
        x = torch.stack([pixels(p, size) for p in images])
        want_img = reference.image_features(reference.encode_image(x))
        ids, mask = token_batch(pipe.tokenizer, TEXTS, capacity(reference))
        want_txt = reference.text_features(reference.encode_text(ids, mask))
    got_img = pipe.embed_images([str(p) for p in images])
    got_txt = pipe.embed_texts(TEXTS)
    assert got_img.shape == (len(images), reference.config.embed_dim)
    torch.testing.assert_close(got_img, want_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_txt, want_txt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_img.norm(dim=-1), torch.ones(len(images)))
    # PIL input = the same file; one item = a batch of one
    torch.testing.assert_close(pipe.embed_images(Image.open(images[0])), want_img[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pipe.embed_texts(TEXTS[1]), want_txt[1:2], atol=1e-5, rtol=1e-5)
    # control: another resize of the same picture gives another embedding, so the check above can fail
    from xfm.finetune.images import load_image, normalise

    squashed = normalise(load_image(images[0]).resize((size, size), Image.NEAREST))
    with torch.no_grad():
        other = reference.image_features(reference.encode_image(squashed[None]))
    assert not torch.allclose(other, want_img[:1], atol=1e-4)


def test_batch_size_does_not_change_results(pipe, images):
    paths = [str(p) for p in images]  # 6 pictures: batches of 4 + 2
    texts = (TEXTS * 2)[:6]
    outs = {}
    for bs in (1, 4):
        pipe.batch_size = bs
        outs[bs] = (pipe.embed_images(paths), pipe.embed_texts(texts), pipe.match(paths, texts),
                    torch.tensor(pipe.ground(paths, texts)))
    pipe.batch_size = 4
    for a, b in zip(outs[1], outs[4]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_match_is_the_itm_probability_of_each_pair(pipe, reference, images):
    size = reference.config.vision.image_size
    paths = [str(p) for p in images[:4]]
    with torch.no_grad():
        ids, mask = token_batch(pipe.tokenizer, TEXTS, capacity(reference))
        fused = reference.fuse(reference.encode_image(torch.stack([pixels(p, size) for p in paths])), None,
                               reference.encode_text(ids, mask), mask)
        want = reference.itm_logits(fused).softmax(-1)[:, 1]
    got = pipe.match(paths, TEXTS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ((got > 0) & (got < 1)).all()


def test_retrieve_ranks_by_itc_and_reranks_by_itm(pipe, reference, images):
    paths = [str(p) for p in images]
    sims = (pipe.embed_texts(TEXTS[:1]) @ pipe.embed_images(paths).t())[0]
    got = pipe.retrieve(TEXTS[0], paths, k=3)
    assert [r["index"] for r in got] == sims.argsort(descending=True)[:3].tolist()
    np.testing.assert_allclose([r["score"] for r in got], sims.sort(descending=True).values[:3].numpy(), atol=1e-6)
    # re-ranking: the ITC top-5 re-ordered by the raw ITM class-1 logit (retrieval evaluation's score)
    top5 = sims.argsort(descending=True)[:5].tolist()
    reranked = pipe.retrieve(TEXTS[0], paths, k=3, rerank=True, rerank_k=5)
    size = reference.config.vision.image_size
    with torch.no_grad():
        ids, mask = token_batch(pipe.tokenizer, TEXTS[:1] * 5, capacity(reference))
        fused = reference.fuse(reference.encode_image(torch.stack([pixels(paths[i], size) for i in top5])), None,
                               reference.encode_text(ids, mask), mask)
        itm = reference.itm_logits(fused)[:, 1]
    order = itm.argsort(descending=True)[:3].tolist()
    assert [r["index"] for r in reranked] == [top5[i] for i in order]
    np.testing.assert_allclose([r["itm"] for r in reranked], itm[order].numpy(), atol=1e-5)
    # picture query, text gallery: ranked by the same similarities the other way round
    sims_t = (pipe.embed_images(paths[:1]) @ pipe.embed_texts(TEXTS).t())[0]
    got = pipe.retrieve(Path(paths[0]), TEXTS, k=10)
    assert len(got) == len(TEXTS) and [r["index"] for r in got] == sims_t.argsort(descending=True).tolist()
    assert pipe.retrieve(paths[0], TEXTS, k=2, query_type="image") == got[:2]


def test_ground_returns_pixels_of_the_original_picture(pipe, reference, images, tmp_path):
    # a wide picture (96 x 48), and the same picture stored 48 x 96 with an EXIF orientation tag
    # (8: the viewer turns it 90 degrees) so that it is seen as the wide one
    wide = Image.open(images[0]).convert("RGB").resize((96, 48), Image.BICUBIC)
    wide.save(tmp_path / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    wide.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.png", exif=exif)
    assert Image.open(tmp_path / "rotated.png").size == (48, 96)
    size = reference.config.vision.image_size
    with torch.no_grad():
        ids, mask = token_batch(pipe.tokenizer, ["the circle"], capacity(reference))
        fused = reference.fuse(reference.encode_image(pixels(wide, size)[None]), None,
                               reference.encode_text(ids, mask), mask)
        cx, cy, w, h = reference.predict_bbox(fused)[0].tolist()
    want = [(cx - w / 2) * 96, (cy - h / 2) * 48, w * 96, h * 48]
    box = pipe.ground(str(tmp_path / "wide.png"), "the circle")
    np.testing.assert_allclose(box, want, atol=1e-3)
    # control: the normalised box scaled as if the picture were square is another box
    assert not np.allclose(box, [(cx - w / 2) * 96, (cy - h / 2) * 96, w * 96, h * 96], atol=1e-2)
    # the box is in the frame the picture is seen in
    np.testing.assert_allclose(pipe.ground(tmp_path / "rotated.png", "the circle"), box, atol=1e-4)
    # lists pair pictures and phrases in order
    both = pipe.ground([str(tmp_path / "wide.png"), Image.open(images[1])], ["the circle", "a square"])
    assert len(both) == 2
    np.testing.assert_allclose(both[0], box, atol=1e-4)


def test_zero_shot_is_a_softmax_over_prompted_labels(pipe, images):
    labels = ["circle", "square", "triangle"]
    templates = ("a picture of a {}.", "a {} in a scene")
    got = pipe.zero_shot_classify([str(p) for p in images[:3]], labels, templates=templates)
    assert len(got) == 3
    for row in got:
        assert sorted(r["label"] for r in row) == sorted(labels)
        assert abs(sum(r["score"] for r in row) - 1.0) < 1e-5
        assert [r["score"] for r in row] == sorted((r["score"] for r in row), reverse=True)
    label_emb = F.normalize(pipe.embed_texts([t.format(l) for l in labels for t in templates])
                            .view(3, 2, -1).mean(1), dim=-1)
    with torch.no_grad():
        temp = float(pipe.xfm.heads.temp())
    want = (pipe.embed_images([str(images[0])]) @ label_emb.t() / temp).softmax(-1)[0]
    np.testing.assert_allclose([{r["label"]: r["score"] for r in got[0]}[l] for l in labels], want.numpy(), atol=1e-5)
    single = pipe.zero_shot_classify(images[0], labels, templates=templates)
    assert single[0]["label"] == got[0][0]["label"]


def test_picture_modes_convert_like_files_or_are_refused(pipe, images, tmp_path):
    from xfm.pipeline import PipelineError

    rgb = Image.open(images[0]).convert("RGB")
    for mode, suffix in (("L", "jpg"), ("RGBA", "png"), ("CMYK", "jpg"), ("P", "png")):
        img = rgb.convert(mode)
        # converted as fine-tuning converts such a file (PIL's convert to RGB)
        torch.testing.assert_close(pipe.embed_images(img), pipe.embed_images(img.convert("RGB")))
        img.save(tmp_path / f"pic.{suffix}")
        assert Image.open(tmp_path / f"pic.{suffix}").mode == mode
        torch.testing.assert_close(pipe.embed_images(tmp_path / f"pic.{suffix}"),
                                   pipe.embed_images(Image.open(tmp_path / f"pic.{suffix}").convert("RGB")))
    # positions are counted over the whole list (batches of 4 here)
    with pytest.raises(PipelineError, match=r"image 5 \(PIL F .*mode 'F'.*more than 8 bits"):
        pipe.embed_images([rgb] * 5 + [Image.fromarray(np.zeros((8, 8), np.float32))])
    wide = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    Image.fromarray(wide).save(tmp_path / "deep.png")
    with pytest.raises(PipelineError, match=r"deep\.png: pixel mode 'I;16'"):
        pipe.embed_images(tmp_path / "deep.png")


def test_bad_inputs_name_the_problem(pipe, images, tmp_path, finetune_ckpts):
    from xfm import Pipeline
    from xfm.pipeline import ImageReadError, MissingHeadError, PipelineError

    good = str(images[0])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match=r"broken\.jpg: cannot read image"):
        pipe.embed_images([good, tmp_path / "broken.jpg"])
    with pytest.raises(ImageReadError, match=r"nowhere\.jpg: image file not found"):
        pipe.match([tmp_path / "nowhere.jpg"], ["a circle"])
    with pytest.raises(ImageReadError, match="is a directory"):
        pipe.ground(tmp_path, "a circle")
    with pytest.raises(PipelineError, match="text 1 is empty"):
        pipe.embed_texts(["a circle", "   "])
    with pytest.raises(PipelineError, match="text 0 is empty"):
        pipe.match([good], [""])
    with pytest.raises(PipelineError, match="phrase 0 is empty"):
        pipe.ground(good, "")
    with pytest.raises(PipelineError, match="gallery text 1 is empty"):
        pipe.retrieve(Path(good), ["a circle", ""])
    with pytest.raises(PipelineError, match="label 1 is empty"):
        pipe.zero_shot_classify(good, ["circle", ""])
    with pytest.raises(PipelineError, match=r"template 0 .*'\{\}'"):
        pipe.zero_shot_classify(good, ["circle"], templates=("no slot",))
    with pytest.raises(TypeError, match="text 0: expected a string"):
        pipe.embed_texts([3])
    with pytest.raises(PipelineError, match=r"got 2 image\(s\) and 1 text\(s\)"):
        pipe.match([good, good], ["a circle"])
    with pytest.raises(PipelineError, match=r"got 1 image\(s\) and 2 phrase\(s\)"):
        pipe.ground([good], ["a", "b"])
    with pytest.raises(PipelineError, match="the gallery is empty"):
        pipe.retrieve("a circle", [])
    with pytest.raises(FileNotFoundError, match="no_such_model: no such checkpoint"):
        Pipeline.from_pretrained(tmp_path / "no_such_model")
    with pytest.raises(PipelineError, match=r"export: no tokenizer found .*pass tokenizer=DIR"):
        Pipeline.from_pretrained(finetune_ckpts.export, device="cpu")
    with pytest.raises(MissingHeadError, match="has no image classification head; fine-tune one with "
                                               "xfm-finetune --task image_cls"):
        pipe.classify(good)
    with pytest.raises(MissingHeadError, match="has no VQA head; fine-tune with xfm-finetune --task vqa"):
        pipe.answer(good, "what colour is the circle?")
    with pytest.raises(MissingHeadError, match="has no captioning head; fine-tune with xfm-finetune --task captioning"):
        pipe.caption(good)


def test_official_and_timm_checkpoints(finetune_ckpts, images, tmp_path):
    """An official-layout .th (with the tokenizer given) and a timm BEiT state dict (vision only:
    no tokenizer needed until a text method is called)."""
    from timm.models.beit import Beit

    from xfm import XFM, Pipeline
    from xfm.pipeline import PipelineError

    official = Pipeline.from_pretrained(finetune_ckpts.official, tokenizer=finetune_ckpts.world / "tokenizer",
                                        device="cpu")
    ref = XFM.from_pretrained(finetune_ckpts.official).eval()
    with torch.no_grad():
        ids, mask = token_batch(official.tokenizer, TEXTS[:2], capacity(ref))
        want = ref.text_features(ref.encode_text(ids, mask))
    torch.testing.assert_close(official.embed_texts(TEXTS[:2]), want, atol=1e-5, rtol=1e-5)
    assert official.match([images[0]], [TEXTS[0]]).shape == (1,)

    torch.manual_seed(2)
    beit = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
                use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)
    torch.save({"model": beit.state_dict()}, tmp_path / "beit.pth")
    vision = Pipeline.from_pretrained(tmp_path / "beit.pth", device="cpu", overrides={"size": "tiny"})
    assert vision.tokenizer is None and "timm" in vision.load_report
    with torch.no_grad():
        states = vision.xfm.encode_image(pixels(images[0], 32)[None])
    torch.testing.assert_close(vision.embed_images(images[0]), vision.xfm.image_features(states))
    with pytest.raises(PipelineError, match="beit.pth: no tokenizer; pass tokenizer=DIR"):
        vision.embed_texts("a circle")


# ----------------------------------------------------------------------------- fine-tuned best/
def test_grounding_best_reproduces_its_evaluation(finetuned, finetune_ckpts):
    from xfm import Pipeline
    from xfm.finetune.metrics import box_iou_inclusive
    from xfm.pipeline import MissingHeadError

    run, result = finetuned["grounding"]
    best = run / "best"
    pipe = Pipeline.from_pretrained(best, device="cpu", batch_size=8)  # tokenizer from best/
    assert pipe.task.name == "grounding"
    rows = [json.loads(l) for l in (finetune_ckpts.world / "grounding" / "refcoco_test.jsonl").read_text().splitlines()]
    assert result["split"] == "test"
    boxes = pipe.ground([finetune_ckpts.world / r["image"] for r in rows], [r["text"] for r in rows])
    iou = box_iou_inclusive(np.array(boxes), np.array([r["bbox"] for r in rows], dtype=np.float64))
    assert abs(float(iou.mean()) - result["metrics"]["mean_iou"]) < 1e-5
    assert abs(float((iou >= 0.5).mean()) - result["metrics"]["acc"]) < 1e-9
    # the grounding task's own collate/predict and the generic box path agree
    generic = Pipeline(pipe.xfm, pipe.tokenizer, device="cpu", batch_size=8)
    np.testing.assert_allclose(generic.ground(finetune_ckpts.world / rows[0]["image"], rows[0]["text"]), boxes[0],
                               atol=1e-4)
    # a grounding model keeps the whole X-FM (the other heads unused), so the ITC methods work; the
    # task heads of other tasks it has not
    image = finetune_ckpts.world / rows[0]["image"]
    assert pipe.embed_images(image).shape == (1, pipe.model_cfg.embed_dim)
    for call, what in ((lambda: pipe.classify(image), "image classification head"),
                       (lambda: pipe.answer(image, "what?"), "VQA head"),
                       (lambda: pipe.caption(image), "captioning head")):
        with pytest.raises(MissingHeadError, match=rf"\(a fine-tuned grounding model\) has no {what}"):
            call()


def test_image_cls_best_reproduces_its_evaluation(finetuned, finetune_ckpts):
    from xfm import Pipeline
    from xfm.pipeline import MissingHeadError

    run, result = finetuned["image_cls"]
    best = run / "best"
    pipe = Pipeline.from_pretrained(best, device="cpu", batch_size=4)
    val = finetune_ckpts.world / "classes" / "val"
    classes = sorted(p.name for p in val.iterdir())
    files = sorted(val.glob("*/*"))
    got = pipe.classify(files, top_k=3)
    assert all(len(r) == 3 and {c["label"] for c in r} <= set(classes) for r in got)
    assert all(r[0]["score"] >= r[1]["score"] >= r[2]["score"] for r in got)
    top1 = 100.0 * np.mean([r[0]["label"] == f.parent.name for r, f in zip(got, files)])
    assert result["split"] == "val" and abs(top1 - result["metrics"]["top1"]) < 1e-6
    full = pipe.classify(files[0], top_k=99)  # every class, probabilities summing to 1
    assert len(full) == len(classes) and abs(sum(c["score"] for c in full) - 1) < 1e-5
    assert [c["label"] for c in full][:3] == [c["label"] for c in got[0]]
    pipe.batch_size = 1
    assert [r[0]["label"] for r in pipe.classify(files[:5])] == [r[0]["label"] for r in got[:5]]
    for call, what in ((lambda: pipe.embed_texts("a circle"), "text embedding .* text, heads.text_proj missing"),
                       (lambda: pipe.ground(files[0], "a circle"), "box head"),
                       (lambda: pipe.retrieve("a circle", files[:2]), "text embedding")):
        with pytest.raises(MissingHeadError, match=f"has no {what}.*image_cls model keeps vision"):
            call()


def test_vqa_best_reproduces_its_results_file(finetuned, finetune_ckpts, tmp_path):
    from xfm import Pipeline
    from xfm.pipeline import MissingHeadError, PipelineError

    run, result = finetuned["vqa"]
    pipe = Pipeline.from_pretrained(run / "best", device="cpu", batch_size=8)
    rows = json.loads((finetune_ckpts.world / "vqa" / "test.json").read_text())
    got = pipe.answer([finetune_ckpts.world / r["image"] for r in rows], [r["question"] for r in rows])
    want = {d["question_id"]: d["answer"] for d in json.loads((run / "vqa_results_test.json").read_text())}
    assert got == [want[r["question_id"]] for r in rows]
    assert pipe.answer(finetune_ckpts.world / rows[0]["image"], rows[0]["question"]) == got[0]
    with pytest.raises(PipelineError, match="question 1 is empty"):
        pipe.answer([finetune_ckpts.world / rows[0]["image"]] * 2, ["what is it?", " "])
    with pytest.raises(PipelineError, match=r"got 1 image\(s\) and 2 question\(s\)"):
        pipe.answer([finetune_ckpts.world / rows[0]["image"]], ["a?", "b?"])
    with pytest.raises(MissingHeadError, match="fine-tuned vqa model.* has no captioning head"):
        pipe.caption(finetune_ckpts.world / rows[0]["image"])
    # the answer list is read from where task.yaml says; a moved model names the missing file
    import shutil

    import yaml

    moved = tmp_path / "moved"
    shutil.copytree(run / "best", moved)
    meta = yaml.safe_load((moved / "task.yaml").read_text())
    meta["task_config"]["answer_list"] = str(tmp_path / "gone.json")
    (moved / "task.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(PipelineError, match=r"ranks the answers of task.answer_list \(.*gone\.json\), which cannot "):
        Pipeline.from_pretrained(moved, device="cpu").answer(finetune_ckpts.world / rows[0]["image"], "what?")


def test_captioning_best_reproduces_its_results_file(finetuned, finetune_ckpts):
    from xfm import Pipeline
    from xfm.pipeline import MissingHeadError

    run, result = finetuned["captioning"]
    pipe = Pipeline.from_pretrained(run / "best", device="cpu", batch_size=3)
    rows = json.loads((finetune_ckpts.world / "retrieval" / "test.json").read_text())
    got = pipe.caption([finetune_ckpts.world / r["image"] for r in rows])
    want = json.loads((run / "captions_test.json").read_text())
    assert got == [w["caption"] for w in want]
    with pytest.raises(MissingHeadError, match="fine-tuned captioning model.* has no VQA head"):
        pipe.answer(finetune_ckpts.world / rows[0]["image"], "what is it?")


# ----------------------------------------------------------------------------- xfm-infer
def run_cli(capsys, *argv):
    from xfm.infer_cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_json(finetune_ckpts, images, capsys, pipe):
    export, tok = finetune_ckpts.export, finetune_ckpts.world / "tokenizer"
    code, out, err = run_cli(capsys, export, "--tokenizer", tok, "--device", "cpu", "retrieve", "--query",
                             TEXTS[0], "--gallery", finetune_ckpts.world / "images", "-k", "3")
    assert code == 0, err
    doc = json.loads(out)
    gallery = sorted(str(p) for p in (finetune_ckpts.world / "images").glob("*.jpg"))
    want = pipe.retrieve(TEXTS[0], gallery, k=3)
    assert [r["item"] for r in doc["results"]] == [gallery[r["index"]] for r in want]
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3]
    code, out, err = run_cli(capsys, export, "--tokenizer", tok, "ground", "--image", images[0], "--text", "a circle")
    assert code == 0, err
    doc = json.loads(out)
    np.testing.assert_allclose(doc["box"], pipe.ground(images[0], "a circle"), atol=1e-5)
    assert doc["size"] == list(Image.open(images[0]).size)
    code, out, err = run_cli(capsys, export, "--tokenizer", tok, "match", "--image", images[0], "--text", "")
    assert code == 1 and out == "" and "xfm-infer: error: text 0 is empty" in err


def test_cli_command_keeps_stdout_pure_json(finetune_ckpts, images, pipe):
    """The module entry point as a user runs it: load reports on stderr, one JSON document on stdout."""
    proc = subprocess.run([sys.executable, "-m", "xfm.infer_cli", str(finetune_ckpts.export), "--tokenizer",
                           str(finetune_ckpts.world / "tokenizer"), "--device", "cpu", "zero-shot", "--image",
                           str(images[0]), str(images[1]), "--labels", "circle", "square", "cross"],
                          cwd=REPO, env=finetune_env(finetune_ckpts), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert [r["image"] for r in doc["results"]] == [str(images[0]), str(images[1])]
    want = pipe.zero_shot_classify([images[0], images[1]], ["circle", "square", "cross"])
    for row, w in zip(doc["results"], want):
        assert [s["label"] for s in row["scores"]] == [s["label"] for s in w]
        np.testing.assert_allclose([s["score"] for s in row["scores"]], [s["score"] for s in w], atol=1e-6)
