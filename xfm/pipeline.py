"""Inference on a trained X-FM: ``Pipeline.from_pretrained(path)`` and one method per use.

``path`` is anything the fine-tuning tree loads: an ``xfm-export`` directory, a pretraining run
directory, an official X-FM ``.th``, a Hugging Face BERT/RoBERTa directory or a timm BEiT-v2
state dict (one encoder filled, the rest random), or a fine-tuned model directory (``best/``,
whose ``task.yaml`` says which task built it).

Inputs are PIL images or image paths (``str`` / ``pathlib.Path``) and raw strings; one item or a
list. Every list is processed in batches of ``batch_size`` under ``torch.inference_mode`` with
the model in eval mode, so results do not depend on the batch size (up to float rounding).

Pictures go through what fine-tuning evaluates with: ``finetune.images.load_image`` (EXIF
orientation applied) then ``eval_transform`` at the checkpoint's image size with the CLIP
normalisation; a fine-tuned classifier uses its task's own evaluation transform. A PIL image
given directly is treated like a file: EXIF orientation applied, then converted to RGB. Any
8-bit mode converts as PIL converts it (which is what fine-tuning does to such files: alpha is
dropped, palette / greyscale / CMYK mapped to RGB); 16-bit and floating-point pictures (modes
``I``, ``F``, ``I;16``...) are refused, because PIL clips them to 8 bits without scaling.

Texts are tokenised with the checkpoint's tokenizer up to the language encoder's capacity
(``finetune.task.text_capacity``); fine-tuned tasks use their own length limit and collation.

What a checkpoint can do depends on the parts it has: a pretrained X-FM has every head
(embeddings, ITM, box); a fine-tuned ``best/`` keeps the parts its task keeps (an ``image_cls``
model only the vision encoder and its classifier, a ``glue`` model only the language encoder).
``classify``, ``answer`` and ``caption`` need a model fine-tuned for ``image_cls`` /
``image_probe``, ``vqa`` and ``captioning``; they run the task module's own collation and
prediction. Asking for something the checkpoint lacks raises :class:`MissingHeadError` saying
what to do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from xfm.finetune.images import ImageReadError, eval_transform, load_image
from xfm.finetune.task import TaskContext, text_capacity

__all__ = ["Pipeline", "PipelineError", "MissingHeadError", "ImageReadError"]

ImageInput = Union[Image.Image, str, os.PathLike]

# modes whose samples are wider than 8 bits: PIL's convert("RGB") clips them instead of scaling
_WIDE_MODES = ("I", "F")
# fine-tuned image classifiers ``classify`` runs (image_probe's predict takes encoder features)
_CLASSIFIER_TASKS = ("image_cls", "image_probe")
# where the ITC / ITM heads are found, for error messages
_HAS_ITC = "a pretrained X-FM or one fine-tuned with xfm-finetune --task retrieval"


class PipelineError(ValueError):
    """A request the pipeline refuses: bad input or a missing tokenizer; the message says which
    input (file, position) and why."""


class MissingHeadError(PipelineError):
    """The checkpoint has no part for the requested method (e.g. ``classify`` on a pretrained model)."""


@dataclass
class _Picture:
    """A picture ready for the model and the facts about the original."""

    pixels: torch.Tensor  # (3, S, S) normalised
    size: tuple[int, int]  # (width, height) of the picture as viewed (EXIF applied)


def _as_list(x, single_types) -> tuple[list, bool]:
    """-> (items, was_single)."""
    if isinstance(x, single_types):
        return [x], True
    if isinstance(x, (list, tuple)):
        return list(x), False
    raise TypeError(f"expected one item or a list/tuple of them, got {type(x).__name__}")


def _describe(image, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"image {index} (PIL {getattr(image, 'mode', '?')} {getattr(image, 'size', '')})"


def _check_mode(mode: str, what: str) -> None:
    if mode in _WIDE_MODES or mode.startswith("I;"):
        raise PipelineError(f"{what}: pixel mode {mode!r} has more than 8 bits per sample; PIL would clip it "
                            f"to 8-bit RGB. Scale it to an 8-bit RGB picture first")


def to_rgb(image: ImageInput, index: int = 0) -> Image.Image:
    """A picture as fine-tuning reads files: EXIF orientation applied, RGB. Clear errors for a
    missing or unreadable file (named) and for modes that cannot become 8-bit RGB."""
    if isinstance(image, Image.Image):
        what = _describe(image, index)
        _check_mode(image.mode, what)
        try:
            return ImageOps.exif_transpose(image).convert("RGB")
        except Exception as e:  # PIL has no conversion for some modes
            raise PipelineError(f"{what}: cannot convert pixel mode {image.mode!r} to RGB "
                                f"({type(e).__name__}: {e})") from None
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise ImageReadError(f"{path}: image file not found")
        if path.is_dir():
            raise ImageReadError(f"{path}: is a directory, not an image file")
        try:
            with Image.open(path) as peek:  # header only: the mode, before load_image converts
                mode = peek.mode
        except Exception:
            mode = None  # load_image reports the unreadable file
        if mode is not None:
            _check_mode(mode, str(path))
        return load_image(path)
    raise TypeError(f"image {index}: expected a PIL image or a path, got {type(image).__name__}")


def check_texts(texts: Sequence[str], what: str = "text") -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what} {i}: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise PipelineError(f"{what} {i} is empty")


def _batches(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    """(offset of the chunk, chunk) pairs; the offset keeps error messages' positions global."""
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _pick_device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Pipeline:
    """See the module doc. Build with :meth:`from_pretrained`; ``pipeline.xfm`` is the X-FM
    backbone (possibly pruned to a task's parts), ``pipeline.task`` / ``pipeline.task_model`` the
    fine-tuned task and its model (None for a pretrained checkpoint)."""

    def __init__(self, xfm: torch.nn.Module, tokenizer, *, device=None, batch_size: int = 16,
                 task=None, task_model=None, source: str = "<model>", load_report: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _pick_device(device)
        self.xfm = xfm
        self.task, self.task_model = task, task_model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.source = source
        self.load_report = load_report
        self.model_cfg = xfm.config
        (task_model if task_model is not None else xfm).to(self.device).eval()
        self._ctx = TaskContext()
        if tokenizer is not None and getattr(xfm, "text", None) is not None \
                and len(tokenizer) > self.model_cfg.text.vocab_size:
            raise PipelineError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's text vocabulary "
                                f"has {self.model_cfg.text.vocab_size}: it is not the tokenizer this model was "
                                f"trained with")

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer=None, device=None, num_heads: int | None = None,
                        batch_size: int = 16, overrides: dict | None = None) -> "Pipeline":
        """Load a checkpoint (see the module doc). ``tokenizer``: a tokenizer directory or a loaded
        fast tokenizer; default: the one saved in ``path`` (fine-tuned ``best/`` directories and
        Hugging Face directories have one; an export directory needs ``tokenizer=``).
        ``device``: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        ``num_heads``: text/fusion head count of an official or timm checkpoint (see ``xfm.checkpoint``).
        ``overrides``: ModelConfig fields for the parts a single-encoder checkpoint does not fix
        (``{"size": "tiny"}``), as ``xfm-finetune``'s ``model.overrides``."""
        from xfm.finetune.model_io import is_task_dir, load_backbone, load_task_model

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
        tok = _resolve_tokenizer(tokenizer)
        dev = _pick_device(device)
        if is_task_dir(path):
            if num_heads is not None or overrides:
                raise PipelineError(f"{path}: num_heads / overrides: a fine-tuned model's config.yaml fixes its shape")
            if tok is None:
                tok = _tokenizer_in(path, required=True, hint="a fine-tuned model directory normally holds the "
                                                              "tokenizer it was trained with")
            task, model = load_task_model(path, tokenizer=tok, device=dev)
            return cls(model.xfm, tok, device=dev, batch_size=batch_size, task=task, task_model=model,
                       source=str(path), load_report=f"{path}: fine-tuned {task.name} model")
        loaded = load_backbone(path, num_heads=num_heads, overrides=overrides)
        if tok is None:
            # a timm BEiT file fills the vision encoder only: its language encoder is random, so
            # a tokenizer is asked for only when a text method is called
            tok = _tokenizer_in(path, required=loaded.kind != "timm-beit",
                                hint="an xfm-export / pretraining directory holds no tokenizer: pass "
                                     "tokenizer=DIR (xfm-infer: --tokenizer DIR), the one the model was pretrained "
                                     "with, e.g. the directory `xfm-prep tokenizer` wrote")
        return cls(loaded.model, tok, device=dev, batch_size=batch_size, source=str(path),
                   load_report=loaded.report_text)

    def __repr__(self) -> str:
        kind = f"fine-tuned {self.task.name}" if self.task is not None else "pretrained"
        return f"Pipeline({self.source!r}, {kind}, device={self.device}, batch_size={self.batch_size})"

    # ----------------------------------------------------------------------------- parts
    def _has(self, part: str) -> bool:
        """``text``/``vision``/``fusion`` or ``heads.<name>`` present in the backbone."""
        obj = self.xfm
        for name in part.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                return False
        return True

    def _kept_parts(self) -> list[str]:
        kept = [p for p in ("text", "vision", "fusion") if self._has(p)]
        heads = getattr(self.xfm, "heads", None)
        if heads is not None:
            kept += [f"heads.{name}" for name, m in heads.named_children() if m is not None]
        return kept

    def _require(self, parts: Sequence[str], what: str, has_it: str = "a pretrained X-FM") -> None:
        missing = [p for p in parts if not self._has(p)]
        if not missing:
            return
        kept = ""
        if self.task is not None:
            kept = f" (this fine-tuned {self.task.name} model keeps {', '.join(self._kept_parts()) or 'no X-FM part'})"
        raise MissingHeadError(f"{self.source}: this checkpoint has no {what}: {', '.join(missing)} missing{kept}; "
                               f"{has_it} has it")

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise PipelineError(f"{self.source}: no tokenizer; pass tokenizer=DIR to Pipeline.from_pretrained")

    # ----------------------------------------------------------------------------- inputs
    def _pictures(self, images: Sequence[ImageInput], transform=None, start: int = 0) -> list[_Picture]:
        """``start``: position of ``images[0]`` in the caller's list (named in errors)."""
        size = self.model_cfg.vision.image_size
        out = []
        for i, image in enumerate(images, start):
            rgb = to_rgb(image, i)
            pixels = transform(rgb) if transform is not None else eval_transform(rgb, size)
            out.append(_Picture(pixels, rgb.size))
        return out

    def _token_ids(self, texts: Sequence[str], max_len: int | None = None, what: str = "text") -> list[list[int]]:
        self._require_tokenizer()
        check_texts(texts, what)
        cap = text_capacity(self.model_cfg, max_len or self.model_cfg.text.max_position_embeddings)
        return [self.tokenizer(t, truncation=True, max_length=cap)["input_ids"] for t in texts]

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        from xfm.finetune.tasks.glue import pad_ids

        ids, mask = pad_ids(seqs, self.tokenizer.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    def _stack(self, pictures: Sequence[_Picture]) -> torch.Tensor:
        return torch.stack([p.pixels for p in pictures]).to(self.device)

    # ----------------------------------------------------------------------------- encoders
    def _image_states(self, pictures: Sequence[_Picture]) -> torch.Tensor:
        return self.xfm.encode_image(self._stack(pictures))

    def _text_states(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._pad(seqs)
        return self.xfm.encode_text(ids, mask), mask

    @torch.inference_mode()
    def embed_images(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """(N, E) L2-normalised image embeddings (the ITC space), on the CPU."""
        self._require(("vision", "heads.vision_proj"), "image embedding (vision encoder + projection)",
                      _HAS_ITC)
        images, _ = _as_list(images, (Image.Image, str, os.PathLike))
        out = []
        for start, chunk in _batches(images, self.batch_size):
            out.append(self.xfm.image_features(self._image_states(self._pictures(chunk, start=start))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model_cfg.embed_dim)

    @torch.inference_mode()
    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(N, E) L2-normalised text embeddings (the ITC space), on the CPU."""
        self._require(("text", "heads.text_proj"), "text embedding (language encoder + projection)",
                      _HAS_ITC)
        texts, _ = _as_list(texts, str)
        seqs = self._token_ids(texts)
        out = []
        for _, chunk in _batches(seqs, self.batch_size):
            states, _ = self._text_states(list(chunk))
            out.append(self.xfm.text_features(states).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model_cfg.embed_dim)

    def _fused_token0(self, pictures: Sequence[_Picture], seqs: list[list[int]]) -> torch.Tensor:
        """Fusion token 0 of each (picture, text) pair, one batch."""
        text_states, mask = self._text_states(seqs)
        return self.xfm.fuse(self._image_states(pictures), None, text_states, mask)[:, 0]

    # ----------------------------------------------------------------------------- matching
    @torch.inference_mode()
    def match(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> torch.Tensor:
        """ITM probability that text i describes image i (pairs taken in order), shape (N,)."""
        self._require(("text", "vision", "fusion", "heads.itm"), "image-text matching head", _HAS_ITC)
        images, _ = _as_list(images, (Image.Image, str, os.PathLike))
        texts, _ = _as_list(texts, str)
        if len(images) != len(texts):
            raise PipelineError(f"match pairs images and texts in order: got {len(images)} image(s) and "
                                f"{len(texts)} text(s)")
        seqs = self._token_ids(texts)
        out = []
        for start, chunk in _batches(images, self.batch_size):
            fused = self._fused_token0(self._pictures(chunk, start=start), seqs[start:start + self.batch_size])
            out.append(self.xfm.itm_logits(fused).float().softmax(-1)[:, 1].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _itm_logits(self, pictures: Sequence[_Picture], seqs: list[list[int]]) -> torch.Tensor:
        """Raw ITM class-1 logits of pairs (the score retrieval evaluation re-ranks with)."""
        out = []
        for start in range(0, len(pictures), self.batch_size):
            fused = self._fused_token0(pictures[start:start + self.batch_size], seqs[start:start + self.batch_size])
            out.append(self.xfm.itm_logits(fused)[:, 1].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.inference_mode()
    def retrieve(self, query, gallery: Sequence, k: int = 5, *, rerank: bool = False, rerank_k: int | None = None,
                 query_type: str | None = None) -> list[dict]:
        """The ``k`` gallery items nearest to ``query`` in the ITC space, best first, as
        ``{"index", "score"}`` (cosine similarity; with ``rerank`` also ``"itm"``).

        A string query is a text searched against a gallery of pictures (paths or PIL images);
        a PIL image or ``pathlib.Path`` query (or ``query_type="image"`` for a path string) is a
        picture searched against a gallery of texts. ``rerank``: the ITC top ``rerank_k``
        (default ``k``) are re-ordered by the raw ITM match logit, as retrieval evaluation does."""
        if query_type is None:
            query_type = "text" if isinstance(query, str) else "image"
        if query_type not in ("text", "image"):
            raise ValueError(f"query_type must be 'text' or 'image', got {query_type!r}")
        if isinstance(gallery, (str, os.PathLike, Image.Image)):
            raise TypeError("gallery must be a list of items")
        gallery = list(gallery)
        if not gallery:
            raise PipelineError("the gallery is empty")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(gallery))
        n_rerank = min(len(gallery), max(k, rerank_k or k))
        if query_type == "text":
            if not isinstance(query, str):
                raise TypeError(f"a text query must be a string, got {type(query).__name__}")
            q = self.embed_texts([query])
            g = self.embed_images(gallery)
        else:
            check_texts(gallery, "gallery text")
            q = self.embed_images([query])
            g = self.embed_texts(gallery)
        sims = (q @ g.t())[0]
        top = sims.topk(n_rerank if rerank else k)
        results = [{"index": int(i), "score": float(s)} for s, i in zip(top.values, top.indices)]
        if not rerank:
            return results
        self._require(("fusion", "heads.itm"), "image-text matching head (needed to re-rank)", _HAS_ITC)
        cand = [r["index"] for r in results]
        if query_type == "text":
            pictures = self._pictures([gallery[i] for i in cand])
            seqs = self._token_ids([query]) * len(cand)
        else:
            pictures = self._pictures([query]) * len(cand)
            seqs = self._token_ids([gallery[i] for i in cand], what="gallery text")
        itm = self._itm_logits(pictures, seqs)
        for r, s in zip(results, itm.tolist()):
            r["itm"] = s
        results.sort(key=lambda r: -r["itm"])
        return results[:k]

    # ----------------------------------------------------------------------------- zero-shot
    @torch.inference_mode()
    def zero_shot_classify(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str],
                           templates: Sequence[str] = ("a picture of a {}.",)):
        """CLIP-style: each label's text embedding is the mean over ``templates`` (``{}`` -> the
        label) of the normalised embeddings, re-normalised; probabilities are the softmax of
        the cosine similarities divided by the model's ITC temperature. Per image: a list of
        ``{"label", "score"}`` over every label, best first (a list of those for a list)."""
        images, single = _as_list(images, (Image.Image, str, os.PathLike))
        labels = list(labels) if not isinstance(labels, str) else [labels]
        templates = [templates] if isinstance(templates, str) else list(templates)
        if not labels:
            raise PipelineError("zero_shot_classify needs at least one label")
        check_texts(labels, "label")
        if len(set(labels)) != len(labels):
            raise PipelineError(f"labels must be distinct, got {labels}")
        if not templates:
            raise PipelineError("zero_shot_classify needs at least one template")
        for i, t in enumerate(templates):
            if not isinstance(t, str) or "{}" not in t:
                raise PipelineError(f"template {i} ({t!r}) must be a string with a '{{}}' where the label goes")
        self._require(("text", "vision", "heads.text_proj", "heads.vision_proj", "heads.temp"),
                      "image-text contrastive (ITC) head", _HAS_ITC)
        texts = [t.format(label) for label in labels for t in templates]
        label_emb = self.embed_texts(texts).view(len(labels), len(templates), -1).mean(1)
        label_emb = F.normalize(label_emb, dim=-1)
        image_emb = self.embed_images(images)
        temp = float(self.xfm.heads.temp())
        probs = (image_emb @ label_emb.t() / temp).softmax(-1)
        out = [sorted(({"label": lab, "score": float(p)} for lab, p in zip(labels, row.tolist())),
                      key=lambda r: -r["score"]) for row in probs]
        return out[0] if single else out

    # ----------------------------------------------------------------------------- grounding
    @torch.inference_mode()
    def ground(self, images: ImageInput | Sequence[ImageInput], phrases: str | Sequence[str]):
        """Box ``[x, y, w, h]`` in pixels of the picture as given (EXIF orientation applied) for
        each (image, phrase) pair: the box head on fusion token 0, as grounding evaluation maps
        it (not clipped to the picture). A fine-tuned grounding model runs its task's own
        collation and prediction."""
        from xfm.finetune.metrics import normalized_cxcywh_to_xywh

        self._require(("text", "vision", "fusion", "heads.bbox"), "box head",
                      "a pretrained X-FM or one fine-tuned with xfm-finetune --task grounding")
        images, single = _as_list(images, (Image.Image, str, os.PathLike))
        phrases, single_text = _as_list(phrases, str)
        if len(images) != len(phrases):
            raise PipelineError(f"ground pairs images and phrases in order: got {len(images)} image(s) and "
                                f"{len(phrases)} phrase(s)")
        grounding = self.task is not None and self.task.name == "grounding"
        seqs = self._token_ids(phrases, self.task.task_cfg.max_len if grounding else None, "phrase")
        boxes = []
        for start, chunk_images in _batches(images, self.batch_size):
            pics = self._pictures(chunk_images, start=start)
            chunk = seqs[start:start + self.batch_size]
            if grounding:
                items = [{"image": p.pixels, "ids": ids, "target": torch.zeros(4), "size": p.size}
                         for p, ids in zip(pics, chunk)]
                batch = _to_device(self.task.collate(items, False), self.device)
                pred = self.task.predict(self.task_model, batch, self._ctx)["box"]
            else:
                pred = self.xfm.predict_bbox(self._fused_token0(pics, chunk))
            wh = torch.tensor([p.size for p in pics], dtype=torch.float64)
            boxes.extend(normalized_cxcywh_to_xywh(pred.double().cpu().numpy(), wh[:, 0].numpy(),
                                                   wh[:, 1].numpy()).tolist())
        return boxes[0] if single and single_text else boxes

    # ----------------------------------------------------------------------------- classifiers
    @torch.inference_mode()
    def classify(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5):
        """A fine-tuned ``image_cls`` / ``image_probe`` model's ``top_k`` classes per image as
        ``{"label", "index", "score"}`` (softmax probability), best first; the picture goes
        through the task's own evaluation transform, the class names are the ones the task
        recorded (its training folder's sub-folders)."""
        if self.task is None or self.task.name not in _CLASSIFIER_TASKS:
            kind = f"a fine-tuned {self.task.name} model" if self.task is not None else "a pretrained checkpoint"
            raise MissingHeadError(f"{self.source}: this checkpoint ({kind}) has no image classification head; "
                                   f"fine-tune one with xfm-finetune --task image_cls (or image_probe), or use "
                                   f"zero_shot_classify with label names")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        from xfm.finetune.tasks.image_cls import eval_image_transform

        images, single = _as_list(images, (Image.Image, str, os.PathLike))
        transform = eval_image_transform(self.task.task_cfg, self.model_cfg.vision.image_size)
        classes = list(self.task.classes)
        k = min(top_k, len(classes))
        out = []
        for start, chunk in _batches(images, self.batch_size):
            items = [{"image": p.pixels, "label": 0} for p in self._pictures(chunk, transform, start)]
            batch = _to_device(self.task.collate(items, False), self.device)
            if self.task.name == "image_probe":  # its predict takes the frozen encoder's features
                batch = {"features": self.task.encode_features(self.task_model, batch, self._ctx),
                         "label": batch["label"]}
            probs = self.task.predict(self.task_model, batch, self._ctx)["logits"].float().softmax(-1).cpu()
            top = probs.topk(k, dim=-1)
            for values, indices in zip(top.values.tolist(), top.indices.tolist()):
                out.append([{"label": classes[i], "index": i, "score": v} for v, i in zip(values, indices)])
        return out[0] if single else out

    # ----------------------------------------------------------------------------- vqa / captioning
    def _require_task(self, name: str, what: str) -> None:
        if self.task is None or self.task.name != name:
            kind = f"a fine-tuned {self.task.name} model" if self.task is not None else "a pretrained checkpoint"
            raise MissingHeadError(f"{self.source}: this checkpoint ({kind}) has no {what} head; fine-tune with "
                                   f"xfm-finetune --task {name}")

    @torch.inference_mode()
    def answer(self, images: ImageInput | Sequence[ImageInput], questions: str | Sequence[str]):
        """A fine-tuned ``vqa`` model's answer to each (image, question) pair, as its evaluation
        gives it: the question cleaned up as the task does, then ranking over the task's answer
        list (``inference: rank``) or free decoding (``inference: generate``)."""
        self._require_task("vqa", "VQA")
        from xfm.finetune.tasks.vqa import pre_question

        images, single = _as_list(images, (Image.Image, str, os.PathLike))
        questions, single_q = _as_list(questions, str)
        if len(images) != len(questions):
            raise PipelineError(f"answer pairs images and questions in order: got {len(images)} image(s) and "
                                f"{len(questions)} question(s)")
        check_texts(questions, "question")
        task = self.task
        max_words = max(task.task_cfg.max_question_words, 50)  # the task's evaluation cut
        seqs = [self.tokenizer(pre_question(q, max_words), truncation=True, max_length=task.q_len)["input_ids"]
                for q in questions]
        if task.task_cfg.inference == "rank":
            try:
                task.answer_list
            except (OSError, ValueError) as e:
                raise PipelineError(f"{self.source}: this VQA model ranks the answers of task.answer_list "
                                    f"({task.task_cfg.answer_list}), which cannot be read: {e}") from None
        out = []
        for start, chunk in _batches(images, self.batch_size):
            pics = self._pictures(chunk, start=start)
            items = [{"image": p.pixels, "ids": ids} for p, ids in zip(pics, seqs[start:start + self.batch_size])]
            batch = _to_device(task.collate(items, False), self.device)
            out.extend(task.predicted_answers(task.predict(self.task_model, batch, self._ctx)))
        return out[0] if single and single_q else out

    @torch.inference_mode()
    def caption(self, images: ImageInput | Sequence[ImageInput]):
        """A fine-tuned ``captioning`` model's caption of each picture, decoded with its task's
        settings (prompt, beams, lengths); the text after the prompt."""
        self._require_task("captioning", "captioning")
        images, single = _as_list(images, (Image.Image, str, os.PathLike))
        out = []
        for start, chunk in _batches(images, self.batch_size):
            items = [{"image": p.pixels} for p in self._pictures(chunk, start=start)]
            batch = _to_device(self.task.collate(items, False), self.device)
            out.extend(self.task.captions(self.task.predict(self.task_model, batch, self._ctx)))
        return out[0] if single else out


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _resolve_tokenizer(tokenizer):
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        from xfm.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    if not callable(tokenizer) or getattr(tokenizer, "pad_token_id", None) is None:
        raise TypeError(f"tokenizer must be a directory or a Hugging Face fast tokenizer with a pad token, "
                        f"got {type(tokenizer).__name__}")
    return tokenizer


def _tokenizer_in(path: Path, required: bool, hint: str):
    """The tokenizer saved in a checkpoint directory, or None when not ``required``."""
    from xfm.tokenizer import load_tokenizer

    if path.is_dir():
        try:
            return load_tokenizer(path)
        except (ValueError, FileNotFoundError) as e:
            err = str(e)
    else:
        err = f"{path} is a file"
    if not required:
        return None
    raise PipelineError(f"{path}: no tokenizer found ({err}); {hint}")
