"""Image-text retrieval (COCO, Flickr30k and the synthetic world's retrieval set).

Training (the X-VLM / X-FM retrieval recipe): ITC over features gathered from every rank, with
soft targets spread over every pair that shows the same image, plus ITM on the local batch with
hard negatives that never pick a pair of the same image. Unlike pretraining, the language
encoder is trained through the fusion encoder too (no stop-gradient). The temperature is the
pretrained, learnable one (``heads.temp()``).

Evaluation: every image and text is encoded once (texts padded to ``max_len``), sharded over
ranks and gathered; the ITC similarity of all pairs is the dot product of the normalised
features (no temperature); for each query its ``k_test`` most similar candidates are re-scored
with the raw ITM class-1 logit, every other pair scores -100. The re-ranking rows are split over
ranks (padded so every rank makes the same fusion calls, as ZeRO-3 needs) and the scores
gathered; recall comes from ``retrieval_recall``. Every rank holds the states of the whole
gallery for the re-ranking (COCO 5k test: 5k x 577 image tokens and 25k x 40 text tokens in the
engine's dtype, about 6 GB in bf16 at base size), as the original evaluation does.

Both public layouts are read (``read_retrieval`` tells them apart by content): the X-VLM/ALBEF
JSON (``coco_train.json`` + ``coco_val.json`` + ``coco_test.json``) and the Karpathy
``dataset_coco.json`` / ``dataset_flickr30k.json`` (one file for every split: point
``train_files``, ``val_file`` and ``test_file`` at it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from xfm.finetune.formats import check_images, read_retrieval, read_retrieval_train
from xfm.finetune.images import TrainAugment, TrainTransform, eval_transform, load_image, swap_left_right
from xfm.finetune.metrics import retrieval_recall
from xfm.finetune.registry import register
from xfm.finetune.sampling import PAD_INDEX
from xfm.finetune.task import Task, pad_ids, text_capacity
from xfm.objectives.losses import LossContext, itc_loss, itm_loss

WORLD = "${XFM_DATA:-data}/world"
# score of a pair outside the re-ranked top-k (the original evaluation's fill value)
OUTSIDE_TOP_K = -100.0
# heads the retrieval model carries but never uses: frozen (no gradient, no optimizer state) and
# kept, so best/ stays a complete X-FM checkpoint
UNUSED_HEADS = ("bbox", "fusion_mlm", "text_mlm")


@dataclass
class RetrievalConfig:
    # one file (either layout) or several X-VLM JSON files, concatenated
    train_files: list[str] = field(default_factory=lambda: [f"{WORLD}/retrieval/train.json"])
    val_file: str = f"{WORLD}/retrieval/val.json"
    test_file: str = f"{WORLD}/retrieval/test.json"
    image_root: str = WORLD
    max_len: int = 40               # text tokens (X-VLM max_tokens); capped by the position table
    k_test: int = 256               # candidates re-scored by ITM per query (clamped to the gallery)
    rerank_batch_size: int = 256    # image-text pairs per fusion call during re-ranking
    augment: TrainAugment = field(default_factory=TrainAugment)
    swap_left_right: bool = True    # a flipped picture's caption says left for right

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if not self.train_files:
            raise ValueError("train_files must name at least one file")
        if self.k_test < 1 or self.rerank_batch_size < 1:
            raise ValueError("k_test and rerank_batch_size must be >= 1")


# ------------------------------------------------------------------------------ data
class TrainPairs(torch.utils.data.Dataset):
    def __init__(self, pairs, tokenizer, max_len: int, transform: TrainTransform, swap: bool):
        self.pairs, self.tokenizer, self.max_len = pairs, tokenizer, max_len
        self.transform, self.swap = transform, swap

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        pair = self.pairs[i]
        image, flipped = self.transform(load_image(pair.image.path))
        caption = swap_left_right(pair.caption) if flipped and self.swap else pair.caption
        ids = self.tokenizer(caption, truncation=True, max_length=self.max_len)["input_ids"]
        return {"image": image, "ids": ids, "image_id": pair.image_id}


class GalleryImages(torch.utils.data.Dataset):
    def __init__(self, refs, size: int):
        self.refs, self.size = refs, size

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        return {"image": eval_transform(load_image(self.refs[i].path), self.size)}


class GalleryTexts(torch.utils.data.Dataset):
    def __init__(self, texts, tokenizer, max_len: int):
        self.texts, self.tokenizer, self.max_len = texts, tokenizer, max_len

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return {"ids": self.tokenizer(self.texts[i], truncation=True, max_length=self.max_len)["input_ids"]}


@dataclass
class EvalData:
    """One evaluation split: the records and the two galleries to encode."""

    records: object          # RetrievalEvalSet
    images: GalleryImages
    texts: GalleryTexts

    def __len__(self):
        return len(self.records.texts)


# ------------------------------------------------------------------------------ re-ranking plan
def rerank_rows(n_rows: int, rank: int, world: int) -> tuple[list[int], int]:
    """Rows (queries) this rank re-ranks: a contiguous block of ceil(n / world), padded with
    row 0 to that length so every rank makes the same fusion calls -> (rows, number real)."""
    per_rank = math.ceil(n_rows / world) if n_rows else 0
    mine = list(range(rank * per_rank, min(n_rows, (rank + 1) * per_rank)))
    return mine + [0] * (per_rank - len(mine)), len(mine)


def topk_candidates(sims: torch.Tensor, rows: list[int], k: int) -> torch.Tensor:
    """(len(rows), k) indices of the k most similar candidates of each row."""
    if not rows:
        return torch.zeros((0, k), dtype=torch.long, device=sims.device)
    return sims[torch.tensor(rows, device=sims.device)].topk(k, dim=1).indices


def assemble_scores(parts, shape) -> torch.Tensor:
    """Full score matrix from every rank's (rows, candidates, scores): -100 outside the top-k."""
    out = torch.full(shape, OUTSIDE_TOP_K, dtype=torch.float32)
    for rows, cand, scores in parts:
        if len(rows):
            out[torch.as_tensor(rows).unsqueeze(1), cand] = scores
    return out


@register("retrieval")
class RetrievalTask(Task):
    Config = RetrievalConfig
    parts = ("text", "vision", "fusion", "heads")
    main_metric = "r_mean"
    float_inputs = ("image",)
    head_prefixes = ("head.",)  # no new layers: the ITM head and projections are pretrained

    def __init__(self, cfg, task_cfg, model_cfg, tokenizer):
        super().__init__(cfg, task_cfg, model_cfg, tokenizer)
        self.max_len = text_capacity(model_cfg, task_cfg.max_len)
        self.image_size = model_cfg.vision.image_size

    # --- model ---------------------------------------------------------------------------
    def build_model(self, xfm):
        # fine-tuning trains the language encoder through ITM too (stop-gradient is pretraining only)
        xfm.config = replace(xfm.config, stop_text_grad=False)
        tied = xfm.text.embeddings.word_embeddings.weight
        for name in UNUSED_HEADS:
            for p in getattr(xfm.heads, name).parameters():
                if p is not tied:
                    p.requires_grad_(False)
        return super().build_model(xfm)

    # --- data ----------------------------------------------------------------------------
    def dataset(self, split, train):
        cfg = self.task_cfg
        if split == "train":
            files = cfg.train_files
            pairs = read_retrieval(files[0], "train", cfg.image_root) if len(files) == 1 \
                else read_retrieval_train(files, cfg.image_root)
            check_images(pairs)
            transform = TrainTransform(self.image_size, cfg.augment)
            return TrainPairs(pairs, self.tokenizer, self.max_len, transform, cfg.swap_left_right)
        path = {"val": cfg.val_file, "test": cfg.test_file}.get(split)
        if path is None:
            raise ValueError(f"retrieval has splits train, val and test, not {split!r}")
        records = read_retrieval(path, split, cfg.image_root)
        check_images(records)
        return EvalData(records, GalleryImages(records.images, self.image_size),
                        GalleryTexts(records.texts, self.tokenizer, self.max_len))

    def collate(self, items, train):
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id)
        return {"image": torch.stack([it["image"] for it in items]), "ids": ids, "mask": mask,
                "image_id": torch.tensor([it["image_id"] for it in items], dtype=torch.long)}

    def collate_images(self, items):
        return {"image": torch.stack([it["image"] for it in items]),
                "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}

    def collate_texts(self, items):
        # padded to max_len, as the original evaluation does
        ids, mask = pad_ids([it["ids"] for it in items], self.tokenizer.pad_token_id, self.max_len)
        return {"ids": ids, "mask": mask, "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}

    # --- training ------------------------------------------------------------------------
    def loss(self, model, batch, ctx):
        xfm = model.xfm
        image_states = xfm.encode_image(batch["image"])
        text_states = xfm.encode_text(batch["ids"], batch["mask"])
        image_feat, text_feat = xfm.features(image_states, text_states)
        temp = xfm.heads.temp()
        lctx = LossContext(group=ctx.group, world_size=ctx.world_size, rank=ctx.rank, generator=ctx.generator)
        ids = batch["image_id"]
        itc = itc_loss(xfm, image_feat, text_feat, temp, lctx, ids)
        itm = itm_loss(xfm, image_states, None, text_states, batch["mask"], image_feat, text_feat, temp, lctx, ids)
        return itc + itm, {"itc": itc.detach(), "itm": itm.detach()}

    # --- evaluation: the engine methods ----------------------------------------------------
    def encode_images(self, model, batch, ctx):
        states = model.xfm.encode_image(batch["image"])
        return {"states": states, "feat": model.xfm.image_features(states)}

    def encode_texts(self, model, batch, ctx):
        states = model.xfm.encode_text(batch["ids"], batch["mask"])
        return {"states": states, "feat": model.xfm.text_features(states), "mask": batch["mask"]}

    def itm_scores(self, model, batch, ctx):
        fused = model.xfm.fuse(batch["image_states"], None, batch["text_states"], batch["text_mask"])
        return model.xfm.itm_logits(fused)[:, 1].float()

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self, runner, split):
        records = runner.dataset(split, False).records
        scores = self.score_matrices(runner, split)
        metrics = retrieval_recall(*scores, records.txt2img, records.img2txt) if runner.is_main else {}
        return runner.broadcast(metrics)

    @torch.no_grad()
    def score_matrices(self, runner, split, timings: dict | None = None):
        """(scores_i2t (images, texts), scores_t2i (texts, images)) on rank 0, None elsewhere.
        Collective: every rank calls it. ``timings`` (optional) gets the seconds spent encoding,
        on the ITC similarity + top-k, and on the ITM re-ranking."""
        data = runner.dataset(split, False)
        clock = _Clock(runner.device, timings)
        runner.engine.eval()
        try:
            img = self._encode(runner, split, data.images, "encode_images", self.collate_images)
            txt = self._encode(runner, split, data.texts, "encode_texts", self.collate_texts)
            clock.lap("encode_s")
            sims = img["feat"].float() @ txt["feat"].float().t()          # (images, texts)
            n_img, n_txt = sims.shape
            k_i2t, k_t2i = min(self.task_cfg.k_test, n_txt), min(self.task_cfg.k_test, n_img)
            i2t_rows, i2t_cand, i2t_n = self._candidates(runner, sims, k_i2t)
            t2i_rows, t2i_cand, t2i_n = self._candidates(runner, sims.t(), k_t2i)
            clock.lap("itc_s")
            # image -> text: image i with its k most similar texts
            i2t = self._rerank(runner, i2t_rows, i2t_cand, i2t_n,
                               lambda q, c: (img["states"][q], txt["states"][c], txt["mask"][c]))
            # text -> image: text j with its k most similar images
            t2i = self._rerank(runner, t2i_rows, t2i_cand, t2i_n,
                               lambda q, c: (img["states"][c], txt["states"][q], txt["mask"][q]))
            clock.lap("itm_s")
        finally:
            runner.engine.train()
        if not runner.is_main:
            return None
        return assemble_scores(i2t, (n_img, n_txt)), assemble_scores(t2i, (n_txt, n_img))

    def _encode(self, runner, split, dataset, mode, collate) -> dict[str, torch.Tensor]:
        """Encode a gallery sharded over ranks; every rank gets every row, in gallery order."""
        rows, idx = {}, []
        for batch in runner.eval_loader(split, dataset=dataset, collate=collate):
            index = batch.pop("index")
            out = runner.engine(mode, runner.to_device(batch), runner.context())
            idx.append(index)
            for k, v in out.items():
                rows.setdefault(k, []).append(v.detach().cpu())
        local = ({k: torch.cat(v) for k, v in rows.items()}, torch.cat(idx))
        gathered = runner.gather_objects(local)
        index = torch.cat([g[1] for g in gathered])
        keep = index != PAD_INDEX
        order = torch.argsort(index[keep])
        if int(keep.sum()) != len(dataset) or not torch.equal(index[keep][order], torch.arange(len(dataset))):
            raise RuntimeError(f"retrieval {split}: encoded {int(keep.sum())} of {len(dataset)} gallery items")
        return {k: torch.cat([g[0][k] for g in gathered])[keep][order].to(runner.device) for k in local[0]}

    @staticmethod
    def _candidates(runner, sims, k):
        rows, n_real = rerank_rows(sims.shape[0], runner.rank, runner.world)
        return rows, topk_candidates(sims, rows, k), n_real

    def _rerank(self, runner, rows, cand, n_real, inputs):
        """ITM scores of this rank's query rows against their top-k candidates, gathered: a
        list over ranks of (rows, candidates (R, k), scores (R, k))."""
        k = cand.shape[1]
        device = cand.device
        query = torch.tensor(rows, dtype=torch.long, device=device).repeat_interleave(k)
        flat = cand.reshape(-1)
        scores = []
        step = self.task_cfg.rerank_batch_size
        # every rank has the same number of (padded) rows, so the same number of fusion calls
        for start in range(0, flat.numel(), step):
            image_states, text_states, text_mask = inputs(query[start:start + step], flat[start:start + step])
            batch = {"image_states": image_states, "text_states": text_states, "text_mask": text_mask}
            scores.append(runner.engine("itm_scores", batch, runner.context()).cpu())
        scores = torch.cat(scores).view(len(rows), k) if scores else torch.zeros((0, k))
        return runner.gather_objects((rows[:n_real], cand[:n_real].cpu(), scores[:n_real]))


class _Clock:
    """Laps of wall-clock (device-synchronised) and process CPU seconds into an optional dict
    (``name`` and ``name`` with ``_s`` -> ``_cpu_s``)."""

    def __init__(self, device, out: dict | None):
        self.device, self.out = device, out
        self.t, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        if self.out is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now, cpu = time.perf_counter(), time.process_time()
        cpu_name = name[:-2] + "_cpu_s" if name.endswith("_s") else name + "_cpu"
        self.out[name] = self.out.get(name, 0.0) + now - self.t
        self.out[cpu_name] = self.out.get(cpu_name, 0.0) + cpu - self.cpu
        self.t, self.cpu = now, cpu
