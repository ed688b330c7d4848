"""Image captioning with the answer/caption decoder (COCO Karpathy split, the synthetic world).

Model: the vision encoder; the decoder (``xfm.model.decoder.TextDecoder``, the task's ``head``)
is a copy of the fusion encoder's first ``decoder_layers`` layers run causally, cross-attending
to the picture's states (every state visible), with the fusion MLM head as its word embeddings
and output head (positions/LayerNorm: the official checkpoint's fusion embeddings when present,
else the language encoder's). The language and fusion encoders are not kept: the decoder holds
its own copies of what it needs.

Training (the X-VLM recipe): the text is ``prompt + caption`` (caption lower-cased, punctuation
removed, at most ``max_words`` words: the original's ``pre_caption``), ``BOS .. EOS`` cut to
``max_len`` tokens; the LM loss is the mean token cross-entropy with ``label_smoothing`` over the
caption tokens and EOS (not the prompt). A flipped training picture swaps "left" and "right"
in its caption (``swap_left_right``).

Decoding: greedy (``num_beams: 1``) or beam search (``num_beams``, ``length_penalty``,
``early_stopping``), ``min_length`` / ``max_length`` counting the prompt (the Hugging Face
convention the original uses), ``no_repeat_ngram_size``, batched with the key/value cache. The
caption is the text after the prompt. Metrics: BLEU-4 and CIDEr-D (``caption_scores``, fractions)
against the split's reference captions; METEOR and SPICE need Java and are not computed.
Every evaluation writes ``RUN_DIR/captions_<split>.json`` = ``[{"image_id", "caption"}]``, the
COCO results format.

Data: training pairs from the X-VLM caption JSON (``{image, caption, image_id}`` rows, e.g.
``coco_karpathy_train.json`` or the world's ``retrieval/train.json``) or Karpathy's
``dataset_coco.json`` (train + restval); evaluation images from the X-VLM evaluation JSON
(``{image, image_id?, caption: [..]}`` rows, e.g. ``coco_karpathy_test.json`` or the world's
``retrieval/test.json``; without ``image_id`` the id is the number ending the file name) or
``dataset_coco.json`` (its val / test split). Which layout a file has is read from its content.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from xfm.config import expand_env
from xfm.finetune.formats import (check_images, read_caption_eval, read_caption_train,
                                  read_karpathy_caption_eval, read_karpathy_caption_train)
from xfm.finetune.formats.files import load_json
from xfm.finetune.formats.karpathy import is_karpathy
from xfm.finetune.images import TrainAugment, TrainTransform, eval_transform, load_image, swap_left_right
from xfm.finetune.metrics import caption_scores
from xfm.finetune.registry import register
from xfm.finetune.task import TaskModel, pad_ids, prune_backbone, text_capacity
from xfm.finetune.tasks.vqa import DecoderTask, build_decoder, decode_texts
from xfm.model.decoder import decoder_labels
from xfm.model.generation import generate

WORLD = "${XFM_DATA:-data}/world"


@dataclass
class CaptioningConfig:
    train_files: list[str] = field(default_factory=lambda: [f"{WORLD}/retrieval/train.json"])
    val_file: str = f"{WORLD}/retrieval/val.json"
    test_file: str = f"{WORLD}/retrieval/test.json"
    image_root: str = WORLD
    include_restval: bool = True       # Karpathy training file: train + restval
    prompt: str = "a picture of "
    max_len: int = 40                  # training tokens (prompt + caption + BOS/EOS)
    max_words: int = 30                # pre_caption's cut
    label_smoothing: float = 0.1
    decoder_layers: Optional[int] = None  # default: every fusion layer
    num_beams: int = 3
    max_length: int = 20               # generated sequence incl. BOS + prompt
    min_length: int = 5
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False
    augment: TrainAugment = field(default_factory=TrainAugment)
    swap_left_right: bool = True
    check_images: bool = True

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if not self.train_files:
            raise ValueError("task.train_files must name at least one file")
        if self.num_beams < 1:
            raise ValueError("task.num_beams must be >= 1")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError("task.min_length must be in 0..task.max_length")


_CAPTION_PUNCT = re.compile(r"""([,.'!?"()*#:;~])""")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int) -> str:
    """The original's caption clean-up: lower case, punctuation removed, '-' and '/' to spaces,
    runs of spaces collapsed, at most ``max_words`` words."""
    c = _CAPTION_PUNCT.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    c = _SPACES.sub(" ", c).strip()
    words = c.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else c


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """``BOS + prompt`` tokens. The prompt is tokenised without its trailing space: a byte-level
    BPE tokenizer makes "of " end in a lone space token that "of a dog" never contains."""
    ids = tokenizer(prompt.rstrip())["input_ids"]
    return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids


def _file_is_karpathy(path: str) -> bool:
    return is_karpathy(load_json(path))


class CaptionTrainSet(torch.utils.data.Dataset):
    def __init__(self, pairs, tokenizer, cfg: CaptioningConfig, max_len: int, size: int, prefix: list[int]):
        self.pairs, self.tokenizer, self.cfg, self.max_len, self.prefix = pairs, tokenizer, cfg, max_len, prefix
        self.transform = TrainTransform(size, cfg.augment)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        pair, cfg = self.pairs[i], self.cfg
        image, flipped = self.transform(load_image(pair.image.path))
        caption = swap_left_right(pair.caption) if flipped and cfg.swap_left_right else pair.caption
        text = cfg.prompt + pre_caption(caption, cfg.max_words)
        ids = self.tokenizer(text, truncation=True, max_length=self.max_len)["input_ids"]
        if ids[:len(self.prefix)] != self.prefix:
            raise ValueError(f"{pair.origin}: the tokenizer splits prompt {cfg.prompt!r} differently inside "
                             f"{text!r} than alone; choose a prompt that ends at a word boundary")
        return {"image": image, "ids": ids}


class CaptionEvalSet(torch.utils.data.Dataset):
    def __init__(self, records, size: int):
        self.records, self.size = records, size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {"image": eval_transform(load_image(self.records[i].image.path), self.size)}


@register("captioning")
class CaptioningTask(DecoderTask):
    Config = CaptioningConfig
    parts = ("vision",)
    main_metric = "CIDEr"
    float_inputs = ("image",)

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        cap = text_capacity(model_cfg, 10 ** 6)
        self.max_len = min(task_cfg.max_len, cap)
        if task_cfg.max_length > cap:
            raise ValueError(f"task.max_length {task_cfg.max_length} exceeds the decoder's {cap} positions")
        self.prefix = prompt_ids(tokenizer, task_cfg.prompt)
        if len(self.prefix) >= task_cfg.max_length:
            raise ValueError(f"task.max_length {task_cfg.max_length} leaves no room after the prompt's "
                             f"{len(self.prefix)} tokens (BOS included)")

    # --- model ---------------------------------------------------------------------------
    def build_model(self, xfm):
        head = self.build_head(xfm)  # from the fusion layers and MLM head, which are then dropped
        prune_backbone(xfm, self.parts)
        return TaskModel(self, xfm, head)

    def build_head(self, xfm):
        return build_decoder(xfm, self.model_cfg, self.task_cfg.decoder_layers)

    # --- data ----------------------------------------------------------------------------
    def read_split(self, split: str):
        cfg = self.task_cfg
        root = expand_env(cfg.image_root)
        if split == "train":
            files = [expand_env(p) for p in cfg.train_files]
            if len(files) == 1 and _file_is_karpathy(files[0]):
                records = read_karpathy_caption_train(files[0], root, include_restval=cfg.include_restval)
            else:
                records = read_caption_train(files, root)
        else:
            path = {"val": cfg.val_file, "test": cfg.test_file}.get(split)
            if path is None:
                raise ValueError(f"captioning has splits train, val and test, not {split!r}")
            path = expand_env(path)
            records = read_karpathy_caption_eval(path, split, root) if _file_is_karpathy(path) \
                else read_caption_eval(path, root)
            ids = [r.image_id for r in records]
            if len(set(ids)) != len(ids):
                dup = next(r for r in records if ids.count(r.image_id) > 1)
                raise ValueError(f"{dup.origin}: field 'image_id': {dup.image_id!r} appears twice "
                                 f"(one evaluation row per image)")
        if not records:
            raise ValueError(f"captioning: split {split!r} is empty")
        if cfg.check_images:
            check_images(records)
        return records

    def dataset(self, split, train):
        records = self.read_split(split)
        size = self.model_cfg.vision.image_size
        if train:
            return CaptionTrainSet(records, self.tokenizer, self.task_cfg, self.max_len, size, self.prefix)
        return CaptionEvalSet(records, size)

    def collate(self, items, train):
        batch = {"image": torch.stack([it["image"] for it in items])}
        if train:
            batch["ids"], batch["mask"] = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        return batch

    # --- training / inference ------------------------------------------------------------
    def loss(self, model, batch, ctx):
        image = model.xfm.encode_image(batch["image"])
        ids, mask = batch["ids"], batch["mask"]
        labels = decoder_labels(ids, mask, ignore_prefix=len(self.prefix))
        out = model.head(ids, mask, encoder_states=image, labels=labels, reduction="mean",
                         label_smoothing=self.task_cfg.label_smoothing)
        return out.loss, {"lm": out.loss.detach()}

    def generation_kwargs(self) -> dict:
        cfg, tok = self.task_cfg, self.tokenizer
        kwargs = dict(num_beams=cfg.num_beams, max_length=cfg.max_length, min_length=cfg.min_length,
                      no_repeat_ngram_size=cfg.no_repeat_ngram_size, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
        if cfg.num_beams > 1:
            kwargs.update(length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping)
        return kwargs

    def predict(self, model, batch, ctx):
        image = model.xfm.encode_image(batch["image"])
        out = generate(self.decoder(model), image, None, self.prefix, **self.generation_kwargs())
        pad = self.tokenizer.pad_token_id
        seqs = torch.full((image.shape[0], self.task_cfg.max_length), pad, dtype=torch.long, device=image.device)
        seqs[:, :out.sequences.shape[1]] = out.sequences
        return {"tokens": seqs}

    # --- metrics and results -------------------------------------------------------------
    def captions(self, outputs) -> list[str]:
        return decode_texts(self.tokenizer, outputs["tokens"], len(self.prefix))

    def compute_metrics(self, outputs, split, dataset):
        records = dataset.records
        metrics = {"images": float(len(records))}
        with_refs = [r for r in records if r.references]
        if not with_refs:
            return metrics  # no references: results file only
        if len(with_refs) != len(records):
            missing = next(r for r in records if not r.references)
            raise ValueError(f"{missing.origin}: field 'caption': no reference captions, while other images of "
                             f"split {split!r} have them")
        caps = self.captions(outputs)
        results = {r.image_id: [c] for r, c in zip(records, caps)}
        metrics.update(caption_scores(results, {r.image_id: r.references for r in records}))
        return metrics

    def write_predictions(self, runner, split, outputs, dataset):
        if not runner.is_main:
            return
        results = [{"image_id": r.image_id, "caption": c} for r, c in zip(dataset.records, self.captions(outputs))]
        runner.run_dir.mkdir(parents=True, exist_ok=True)
        path = runner.run_dir / f"captions_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(path)
