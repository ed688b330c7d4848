"""Visual question answering with an answer decoder (the X-VLM / X-FM VQA model).

Model: the question goes through the language encoder and the fusion encoder (with the picture);
the answer decoder (``xfm.model.decoder.TextDecoder``, the task's ``head``) is a copy of the
fusion encoder's first ``decoder_layers`` layers run causally, cross-attending to the fused
question states; its word embeddings and output head are the fusion MLM head, its positions and
LayerNorm the official checkpoint's fusion embeddings when the checkpoint has them (else the
language encoder's). Nothing is frozen: the language encoder is trained too.

Training loss (X-VLM): a question's distinct human answers each get the weight
``count / number of answers`` (VG-QA extra rows: their one answer, weight ``vg_weight`` = 0.5);
per answer the summed token NLL of ``BOS answer EOS`` with the real question padding mask;
the weighted NLLs are summed over every answer of the batch and divided by the number of
questions. Answers outside the answer list are trained on as well (as in the original).

Inference (``inference``):
- ``rank`` (default): every answer of ``answer_list`` is a candidate; from BOS the first-token
  log-probabilities pick the ``k_test`` best, which are re-scored by their full log-likelihood
  (``score``: ``original`` adds the first token's log-probability once more, as the published
  numbers do; ``corrected`` is the plain log-likelihood). The decoder sees every question state
  (an all-ones mask), as the original evaluation does.
- ``generate``: free greedy decoding from BOS (``max_answer_len`` tokens), the answer is the text.

Metric: ``vqa_score`` (the official VQA accuracy, percent) overall (``acc``) and per answer type
(``acc/<type>``), plus ``questions`` and ``outside_answer_list``: the questions none of whose
human answers is in the answer list (compared exactly and after the official normalisation),
which ranking can never answer right. Splits without human answers (the VQAv2 test set) only
give ``questions`` and the results file. Every evaluation writes ``RUN_DIR/vqa_results_<split>.json``
= ``[{"question_id", "answer"}]``, the file the VQAv2 evaluation server takes.

Data: X-VLM JSON rows (``files``) and/or the official VQAv2 question + annotation files
(``official``), per split; VG-QA rows (``dataset: "vg"``) in any training file or in
``extra_train_files``. Questions are lower-cased, stripped of punctuation and cut to
``max_question_words`` words (the original's ``pre_question``). A flipped training picture swaps
"left" and "right" in the question and its answers (``swap_left_right``); with it off, pictures
whose question or answers say left/right are never flipped (the original's rule).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from typing import Literal, Optional

import torch

from xfm.config import expand_env
from xfm.finetune.formats import check_images, read_answer_list, read_vqa_json, read_vqa_official
from xfm.finetune.images import TrainAugment, TrainTransform, eval_transform, load_image, swap_left_right
from xfm.finetune.metrics import normalize_vqa_answer, vqa_score
from xfm.finetune.registry import register
from xfm.finetune.task import Task, prune_backbone, text_capacity
from xfm.finetune.tasks.glue import pad_ids
from xfm.model.decoder import DecoderConfig, TextDecoder, decoder_labels
from xfm.model.generation import greedy_search, rank_answers

WORLD = "${XFM_DATA:-data}/world"


@dataclass
class OfficialVqaFiles:
    """One split in the official VQAv2 layout."""

    questions: str = ""
    annotations: Optional[str] = None   # absent for test-dev / test
    image_dir: Optional[str] = None     # the folder of COCO_<subtype>_<id>.jpg
    subtype: Optional[str] = None       # default: the questions file's data_subtype


@dataclass
class VqaConfig:
    # X-VLM JSON files per split (train may list vqa_train + vqa_val + vg_qa, as the recipe does)
    files: dict[str, list[str]] = field(default_factory=lambda: {
        "train": [f"{WORLD}/vqa/train.json"], "val": [f"{WORLD}/vqa/val.json"], "test": [f"{WORLD}/vqa/test.json"]})
    # official VQAv2 files per split (used in addition to ``files`` of the same split)
    official: dict[str, OfficialVqaFiles] = field(default_factory=dict)
    extra_train_files: list[str] = field(default_factory=list)  # VG-QA rows
    image_root: str = WORLD
    vg_image_root: Optional[str] = None
    answer_list: Optional[str] = f"{WORLD}/vqa/answer_list.json"
    max_len: int = 40                  # question tokens (X-VLM max_tokens)
    max_question_words: int = 30       # pre_question's cut (X-VLM: 30 in training, 50 at test)
    max_answer_len: int = 10           # answer tokens incl. BOS/EOS (training, list, generation)
    decoder_layers: Optional[int] = None  # default: every fusion layer (X-FM: 12, X-VLM: 6)
    vg_weight: float = 0.5             # loss weight of a VG-QA row's answer
    inference: Literal["rank", "generate"] = "rank"
    k_test: int = 128                  # answers re-scored per question (clamped to the list size)
    score: Literal["original", "corrected"] = "original"
    augment: TrainAugment = field(default_factory=TrainAugment)
    swap_left_right: bool = True
    check_images: bool = True

    def __post_init__(self):
        self.official = {k: (OfficialVqaFiles(**v) if isinstance(v, dict) else v) for k, v in self.official.items()}
        if self.k_test < 1:
            raise ValueError("task.k_test must be >= 1")
        if self.max_answer_len < 3:
            raise ValueError("task.max_answer_len must be >= 3 (BOS, one token, EOS)")
        if self.inference == "rank" and not self.answer_list:
            raise ValueError("task.inference 'rank' needs task.answer_list (or use inference: generate)")


_QUESTION_PUNCT = re.compile(r"""([,.'!?"()*#:;~])""")


def pre_question(question: str, max_words: int) -> str:
    """The original's question clean-up: lower case, punctuation removed, '-' and '/' to spaces,
    at most ``max_words`` words."""
    q = _QUESTION_PUNCT.sub("", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


def answer_weights(ex, vg_weight: float) -> tuple[list[str], list[float]]:
    """Distinct answers and their loss weights (share among the human answers; VG: vg_weight)."""
    if ex.dataset == "vg":
        return list(ex.answers[:1]), [vg_weight]
    weights: dict[str, float] = {}
    for a in ex.answers:
        weights[a] = weights.get(a, 0.0) + 1.0 / len(ex.answers)
    return list(weights), list(weights.values())


def outside_answer_list(answers, answer_set: set, normalized_set: set) -> bool:
    """True when no human answer is an answer-list entry, exactly or after normalisation."""
    return not any(a.strip() in answer_set or normalize_vqa_answer(a) in normalized_set for a in answers)


# ------------------------------------------------------------------------------ decoder helpers
def build_decoder(xfm, model_cfg, num_layers: Optional[int], cross_width: Optional[int] = None) -> TextDecoder:
    """The task's decoder. With real weights: ``TextDecoder.from_fusion`` (layers, LM head and
    embeddings copied; the official fusion embeddings when the checkpoint has them). Inside
    DeepSpeed's ``zero.Init`` the backbone's parameters are partitioned placeholders: only the
    shapes are built there, and the loop fills every tensor from a host copy built the first way."""
    if any(hasattr(p, "ds_id") for p in xfm.parameters()):
        cfg = DecoderConfig.from_model_config(model_cfg, num_layers, cross_width)
        attn = None if model_cfg.kernels.attention == "auto" else model_cfg.kernels.attention
        return TextDecoder(cfg, backend=attn, init_weights=False)
    return TextDecoder.from_fusion(xfm, num_layers=num_layers, cross_width=cross_width)


def decoder_for_inference(head: TextDecoder, world_size: int) -> TextDecoder:
    """The decoder to search with. Generation stops when a batch is done, which differs between
    ranks; under ZeRO-3 every module call gathers parameters collectively, so with several ranks
    each one decodes with its own whole copy (gathered once per evaluation, in step)."""
    params = list(head.parameters())
    if world_size <= 1 or not any(hasattr(p, "ds_id") for p in params):
        return head
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        state = {n: p.data.detach().clone() for n, p in head.named_parameters()}
    state.update({n: b.detach().clone() for n, b in head.named_buffers()})
    ref = next(iter(state.values()))
    local = TextDecoder(head.config, backend=head.layer[0].backend, init_weights=False)
    local.load_state_dict(state, strict=False)
    local.tie_weights()
    return local.to(device=ref.device, dtype=ref.dtype).eval()


def decode_texts(tokenizer, sequences: torch.Tensor, start: int) -> list[str]:
    """Text of each row after its first ``start`` tokens, up to the first EOS."""
    out = []
    eos = tokenizer.eos_token_id
    for row in sequences.tolist():
        row = row[start:]
        if eos in row:
            row = row[:row.index(eos)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


# ------------------------------------------------------------------------------ data
class VqaTrainSet(torch.utils.data.Dataset):
    def __init__(self, examples, tokenizer, q_len: int, a_len: int, size: int, cfg: VqaConfig):
        self.examples, self.tokenizer, self.q_len, self.a_len, self.cfg = examples, tokenizer, q_len, a_len, cfg
        self.transform = TrainTransform(size, replace(cfg.augment, hflip=False))

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex, cfg = self.examples[i], self.cfg
        image = self.transform(load_image(ex.image.path))[0]
        question, answers = ex.question, list(ex.answers)
        if cfg.augment.hflip and random.random() < 0.5:
            if cfg.swap_left_right:
                image, question = image.flip(-1), swap_left_right(question)
                answers = [swap_left_right(a) for a in answers]
            elif swap_left_right(" ".join([question, *answers])) == " ".join([question, *answers]):
                image = image.flip(-1)  # the original flips only pictures whose text has no left/right
        answers, weights = answer_weights(replace(ex, answers=answers), cfg.vg_weight)
        q = self.tokenizer(pre_question(question, cfg.max_question_words), truncation=True, max_length=self.q_len)
        a = [self.tokenizer(x, truncation=True, max_length=self.a_len)["input_ids"] for x in answers]
        return {"image": image, "ids": q["input_ids"], "answers": a, "weights": weights}


class VqaEvalSet(torch.utils.data.Dataset):
    def __init__(self, examples, tokenizer, q_len: int, size: int, max_words: int):
        self.examples, self.tokenizer, self.q_len, self.size, self.max_words = examples, tokenizer, q_len, size, max_words

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        q = self.tokenizer(pre_question(ex.question, self.max_words), truncation=True, max_length=self.q_len)
        return {"image": eval_transform(load_image(ex.image.path), self.size), "ids": q["input_ids"]}


class DecoderTask(Task):
    """A task whose head is the answer/caption decoder: evaluation decodes with
    ``decoder_for_inference`` (a whole copy when ZeRO-3 partitions it over several ranks, since
    generation stops at different steps on different ranks), training with ``model.head``."""

    head_init = "copied from the fusion encoder layers and the fusion MLM head (the answer/caption decoder)"
    _inference_decoder: Optional[TextDecoder] = None

    def decoder(self, model) -> TextDecoder:
        return self._inference_decoder if self._inference_decoder is not None else model.head

    def evaluate(self, runner, split):
        self._inference_decoder = decoder_for_inference(runner.model.head, runner.world)
        try:
            return super().evaluate(runner, split)
        finally:
            self._inference_decoder = None


@register("vqa")
class VqaTask(DecoderTask):
    Config = VqaConfig
    parts = ("text", "vision", "fusion")
    main_metric = "acc"
    float_inputs = ("image",)
    bundled_files = ("answer_list",)  # best/ ranks its own copy of the answers

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        self.q_len = text_capacity(model_cfg, task_cfg.max_len)
        self.a_len = min(task_cfg.max_answer_len, text_capacity(model_cfg, task_cfg.max_answer_len))
        self._answers: Optional[list[str]] = None
        self._answer_tensors: dict = {}

    # --- model ---------------------------------------------------------------------------
    def build_model(self, xfm):
        from xfm.finetune.task import TaskModel

        head = self.build_head(xfm)  # before pruning: the decoder starts from the fusion MLM head
        prune_backbone(xfm, self.parts)
        return TaskModel(self, xfm, head)

    def build_head(self, xfm):
        # the decoder attends to fused question states (text width), not to pictures
        return build_decoder(xfm, self.model_cfg, self.task_cfg.decoder_layers,
                             cross_width=self.model_cfg.text.hidden_size)

    # --- data ----------------------------------------------------------------------------
    @property
    def answer_list(self) -> list[str]:
        if self._answers is None:
            self._answers = read_answer_list(expand_env(self.task_cfg.answer_list))
        return self._answers

    def read_split(self, split: str, train: bool):
        cfg = self.task_cfg
        root = expand_env(cfg.image_root)
        vg_root = expand_env(cfg.vg_image_root) if cfg.vg_image_root else None
        files = [expand_env(p) for p in cfg.files.get(split, [])]
        if train:
            files += [expand_env(p) for p in cfg.extra_train_files]
        examples = read_vqa_json(files, root, vg_image_root=vg_root, require_answers=train) if files else []
        off = cfg.official.get(split)
        if off is not None:
            examples += read_vqa_official(expand_env(off.questions),
                                          expand_env(off.annotations) if off.annotations else None,
                                          expand_env(off.image_dir) if off.image_dir else root, subtype=off.subtype)
        if not examples:
            raise ValueError(f"vqa: split {split!r} has no questions (task.files.{split} / task.official.{split})")
        if not train:
            labelled = sum(bool(ex.answers) for ex in examples)
            if 0 < labelled < len(examples):
                missing = next(ex for ex in examples if not ex.answers)
                raise ValueError(f"{missing.origin}: field 'answer': missing, while {labelled} other questions of "
                                 f"split {split!r} have answers (a split is all labelled or all unlabelled)")
        if cfg.check_images:
            check_images(examples)
        return examples

    def dataset(self, split, train):
        examples = self.read_split(split, train)
        size = self.model_cfg.vision.image_size
        if train:
            return VqaTrainSet(examples, self.tokenizer, self.q_len, self.a_len, size, self.task_cfg)
        if self.task_cfg.inference == "rank":
            self.answer_list  # read (and checked) before the first batch
        return VqaEvalSet(examples, self.tokenizer, self.q_len, size, max(self.task_cfg.max_question_words, 50))

    def collate(self, items, train):
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        batch = {"image": torch.stack([it["image"] for it in items]), "ids": ids, "mask": mask}
        if train:
            answers = [a for it in items for a in it["answers"]]
            batch["answer_ids"], batch["answer_mask"] = pad_ids(answers, self.tokenizer.pad_token_id)
            batch["weights"] = torch.tensor([w for it in items for w in it["weights"]], dtype=torch.float32)
            batch["counts"] = torch.tensor([len(it["answers"]) for it in items], dtype=torch.long)
        return batch

    # --- training / inference ------------------------------------------------------------
    def question_states(self, model, batch):
        image = model.xfm.encode_image(batch["image"])
        text = model.xfm.encode_text(batch["ids"], batch["mask"])
        return model.xfm.fuse(image, None, text, batch["mask"])

    def loss(self, model, batch, ctx):
        fused = self.question_states(model, batch)
        rows = torch.repeat_interleave(torch.arange(fused.shape[0], device=fused.device), batch["counts"])
        ids, mask = batch["answer_ids"], batch["answer_mask"]
        out = model.head(ids, mask, encoder_states=fused.index_select(0, rows),
                         encoder_mask=batch["mask"].index_select(0, rows),
                         labels=decoder_labels(ids, mask), reduction="none")
        nll = (batch["weights"] * out.loss).sum()
        loss = nll / fused.shape[0]
        return loss, {"answer_nll": loss.detach()}

    def answer_tensors(self, device):
        """The tokenised answer list ``BOS answer EOS pad..`` (A, La) on ``device``."""
        if device not in self._answer_tensors:
            seqs = [self.tokenizer(a, truncation=True, max_length=self.a_len)["input_ids"] for a in self.answer_list]
            ids, mask = pad_ids(seqs, self.tokenizer.pad_token_id)
            self._answer_tensors[device] = (ids.to(device), mask.to(device))
        return self._answer_tensors[device]

    def predict(self, model, batch, ctx):
        fused = self.question_states(model, batch)
        dec = self.decoder(model)
        if self.task_cfg.inference == "rank":
            ids, mask = self.answer_tensors(fused.device)
            k = min(self.task_cfg.k_test, ids.shape[0])
            top, _ = rank_answers(dec, fused, None, ids, mask, k, score=self.task_cfg.score)
            return {"answer": top[:, 0]}
        tok = self.tokenizer
        out = greedy_search(dec, fused, None, prompt_ids=[tok.bos_token_id], max_length=self.a_len,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        seqs = torch.full((fused.shape[0], self.a_len), tok.pad_token_id, dtype=torch.long, device=fused.device)
        seqs[:, :out.sequences.shape[1]] = out.sequences
        return {"tokens": seqs}

    # --- metrics and results -------------------------------------------------------------
    def predicted_answers(self, outputs) -> list[str]:
        if "answer" in outputs:
            return [self.answer_list[i] for i in outputs["answer"].tolist()]
        return decode_texts(self.tokenizer, outputs["tokens"], 1)

    def compute_metrics(self, outputs, split, dataset):
        examples = dataset.examples
        preds = self.predicted_answers(outputs)
        metrics: dict[str, float] = {"questions": float(len(examples))}
        if self.task_cfg.answer_list and any(ex.answers for ex in examples):
            exact = set(self.answer_list)
            normalized = {normalize_vqa_answer(a) for a in self.answer_list}
            outside = [ex for ex in examples if outside_answer_list(ex.answers, exact, normalized)]
            metrics["outside_answer_list"] = float(len(outside))
            if outside:
                print(f"xfm-finetune: vqa {split}: {len(outside)} of {len(examples)} questions have no human "
                      f"answer in the answer list (scored, never answerable by ranking), e.g. "
                      f"{outside[0].origin}", flush=True)
        if not any(ex.answers for ex in examples):
            return metrics  # test split: results file only
        rows = [{"question_id": i, "answers": ex.answers, "answer_type": ex.answer_type}
                for i, ex in enumerate(examples)]
        score = vqa_score({i: p for i, p in enumerate(preds)}, rows)
        metrics["acc"] = score["overall"]
        metrics.update({f"acc/{t}": v for t, v in sorted(score["per_answer_type"].items())})
        return metrics

    def write_predictions(self, runner, split, outputs, dataset):
        if not runner.is_main:
            return
        preds = self.predicted_answers(outputs)
        results = [{"question_id": ex.question_id, "answer": p} for ex, p in zip(dataset.examples, preds)]
        runner.run_dir.mkdir(parents=True, exist_ok=True)
        path = runner.run_dir / f"vqa_results_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(path)
