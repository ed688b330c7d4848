"""Can a checkpoint learn the grounding box at all? A plain PyTorch loop over a grounding set.

    python bench/grounding_learnability.py --checkpoint CKPT --world DATA/world
        [--steps 1200] [--lr 3e-4] [--batch 32] [--abs-pos-embed sincos] [--every 400] [--seed 0]

The fine-tuning task (``xfm-finetune --task grounding``) answers "how good is the fine-tuned
model"; this answers the question before it, cheaply (one process, no DeepSpeed, the whole set in
memory, ~30 s per 1000 steps of the tiny model on 2 cores): does training the box head on
fusion token 0 of (picture, phrase) with the task's loss (L1 + GIoU) move the *validation*
boxes towards the objects? Every ``--every`` steps it prints, on the val split:

- ``acc@0.5`` and ``mean IoU`` (the task's inclusive-pixel IoU),
- ``centre-in``: share of predicted box centres inside the true box, a lenient sign of
  localisation (the best constant box already scores it on the objects at the centre),
- ``spread``: standard deviation of the predicted boxes over the val phrases (0 = one box for all),
- and the training loss next to the loss of the best constant box.

``--abs-pos-embed sincos`` runs the checkpoint's weights with the vision encoder's fixed 2-D
sine-cosine position table switched on (``vision.abs_pos_embed``; X-FM's BEiT-v2 encoder has
none, only the relative position bias, which starts at zero), to test whether missing absolute
positions are what stops the learning. The table has no parameters, so every weight is the
checkpoint's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xfm.finetune.tasks.grounding import box_loss, predict_boxes


def load_split(world: Path, split: str, tokenizer, model_cfg):
    """The split as the grounding task's evaluation sees it (its reader, eval transform and
    normalised target), stacked: (pictures, ids, mask, target cx/cy/w/h, picture sizes)."""
    from xfm.finetune.task import pad_ids, text_capacity
    from xfm.finetune.tasks.grounding import (GroundingAugment, GroundingConfig, GroundingItems,
                                              read_grounding_split)

    cfg = GroundingConfig(files={split: [str(world / "grounding" / f"refcoco_{split}.jsonl")]}, image_root=str(world))
    items = GroundingItems(read_grounding_split(cfg, split), tokenizer, text_capacity(model_cfg, cfg.max_len),
                           model_cfg.vision.image_size, train=False, aug=GroundingAugment())
    rows = [items[i] for i in range(len(items))]
    ids, mask = pad_ids([r["ids"] for r in rows], tokenizer.pad_token_id)
    return (torch.stack([r["image"] for r in rows]), ids, mask, torch.stack([r["target"] for r in rows]),
            torch.tensor([r["size"] for r in rows], dtype=torch.float32))


def load_model(checkpoint: str, abs_pos_embed: str | None):
    """The checkpoint's model, with the vision position table switched as asked (same weights:
    the table has none; the loader applies the override)."""
    from xfm.model import XFM

    return XFM.from_pretrained(checkpoint, **({"vision__abs_pos_embed": abs_pos_embed} if abs_pos_embed else {}))


def constant_box_loss(target, steps: int = 500) -> float:
    """The loss of the best single box for every phrase (what a model that ignores its inputs reaches)."""
    logit = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=0.05)
    for _ in range(steps):
        loss = box_loss(logit.sigmoid().expand_as(target), target)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def evaluate(model, split) -> dict:
    from xfm.finetune.metrics import box_iou_inclusive, grounding_accuracy
    from xfm.finetune.tasks.grounding import IOU_THRESHOLD, GroundingTask

    images, ids, mask, target, size = split
    model.eval()
    with torch.no_grad():
        pred = predict_boxes(model, images, ids, mask)
    model.train()
    pred_px, true_px = (GroundingTask.pixel_boxes({"box": b, "size": size}) for b in (pred, target))
    centre_in = ((pred[:, 0] - target[:, 0]).abs() < target[:, 2] / 2) & ((pred[:, 1] - target[:, 1]).abs() < target[:, 3] / 2)
    return {"acc@0.5": grounding_accuracy(pred_px, true_px, IOU_THRESHOLD),
            "mean_iou": float(np.mean(box_iou_inclusive(pred_px, true_px))),
            "centre_in": float(centre_in.float().mean()), "spread": float(pred.std(0).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an xfm-export directory (XFM.from_pretrained)")
    ap.add_argument("--world", required=True, help="a synthetic world (grounding/refcoco_{train,val}.jsonl, tokenizer/)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--abs-pos-embed", choices=["none", "sincos"], default=None,
                    help="switch the vision encoder's absolute position table (default: the checkpoint's)")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    world = Path(args.world)
    model = load_model(args.checkpoint, args.abs_pos_embed)
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    train, val = (load_split(world, split, tokenizer, model.config) for split in ("train", "val"))
    print(json.dumps({"train_phrases": len(train[0]), "val_phrases": len(val[0]),
                      "constant_box_train_loss": round(constant_box_loss(train[3]), 4)}), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    t0, losses = time.time(), []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            rec = {"step": step, "train_loss": round(float(np.mean(losses)), 4) if losses else None,
                   **{k: round(v, 4) for k, v in evaluate(model, val).items()}, "time_s": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            losses = []
        if step == args.steps:
            break
        idx = torch.randint(0, len(train[0]), (args.batch,), generator=gen)
        images, ids, mask, target, _ = (x[idx] for x in train)
        loss = box_loss(predict_boxes(model, images, ids, mask), target)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
