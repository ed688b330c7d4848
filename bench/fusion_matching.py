"""Does a checkpoint's fusion encoder match text to pictures, or only add the two up?

    python bench/fusion_matching.py --checkpoint CKPT [--tokenizer DIR] \
        [--captions ${XFM_DATA:-data}/world/retrieval/test.json] [--image-root ${XFM_DATA:-data}/world] \
        [--n 32] [--caption-index 0] [--threads 1]

Takes the first N pictures of an X-VLM style caption file (``{image, caption: [...]}`` rows) and
caption number ``--caption-index`` of each, fuses every (picture, caption) pair of the N x N grid
and reports:

- how the fusion token-0 state varies over the grid, split as in a two-way analysis of variance
  into a part that depends on the picture alone, a part that depends on the caption alone and
  the interaction (what is left: the part that depends on which picture goes with which
  caption). Image-text matching, NLVR2 and VQA need the interaction; a fusion encoder whose
  token 0 is "picture summary + caption summary" gives every caption the same ranking of
  pictures, whatever the head on top.
- the ITM head on the grid: the spread of its match probability, and how well it picks each
  caption's own picture (the diagonal): the probability that a matching pair scores above a
  non-matching one (AUC) and text->picture R@1 among the N. In the synthetic world a caption
  can be true of other pictures too; the first caption (the full listing of a scene's shapes)
  rarely is.

One JSON line on stdout. CKPT: anything ``xfm.Pipeline.from_pretrained`` loads (an export, a
pretraining run directory, an official ``.th``, a fine-tuned ``best/``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def variance_shares(states: torch.Tensor) -> dict:
    """(I, S, D) states of I pictures x S texts -> the shares of their total variance (summed over
    D) that depend on the picture alone, the text alone, and on the pair (the interaction); the
    three sum to 1."""
    if states.dim() != 3 or states.shape[0] < 2 or states.shape[1] < 2:
        raise ValueError(f"need (pictures >= 2, texts >= 2, dim) states, got {tuple(states.shape)}")
    x = states.double()
    grand = x.mean(dim=(0, 1), keepdim=True)
    by_picture = x.mean(dim=1, keepdim=True) - grand
    by_text = x.mean(dim=0, keepdim=True) - grand
    interaction = x - grand - by_picture - by_text
    total = (x - grand).pow(2).sum()
    if total == 0:
        raise ValueError("the states do not vary over the grid")
    n_text, n_picture = x.shape[1], x.shape[0]
    return {"picture": float(by_picture.pow(2).sum() * n_text / total),
            "text": float(by_text.pow(2).sum() * n_picture / total),
            "interaction": float(interaction.pow(2).sum() / total)}


def offset_and_spread(states: torch.Tensor) -> dict:
    """(..., D) states -> {"mean_abs": mean over D of |mean|, "spread": mean over D of the std},
    mean and std taken over every state."""
    flat = states.reshape(-1, states.shape[-1]).double()
    return {"mean_abs": float(flat.mean(0).abs().mean()), "spread": float(flat.std(0).mean())}


def diagonal_auc(scores: torch.Tensor) -> float:
    """(N, N) scores, pair (i, i) matching: P(score of a matching pair > a non-matching one), ties 1/2."""
    n = scores.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    pos, neg = scores[eye], scores[~eye]
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def text_to_picture_r1(scores: torch.Tensor) -> float:
    """(N pictures, N texts) scores, text i describing picture i: the retrieval task's text->image
    R@1 (ties counted at their expected rank), as a fraction."""
    from xfm.finetune.metrics import retrieval_recall

    n = scores.shape[0]
    s = scores.double().numpy()
    return retrieval_recall(s, s.T, list(range(n)), [[i] for i in range(n)], ks=(1,))["img_r1"] / 100.0


def main(argv=None) -> int:
    data = os.environ.get("XFM_DATA", "data")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tokenizer", default=None, help="default: the one in CKPT (a best/ has one)")
    p.add_argument("--captions", default=f"{data}/world/retrieval/test.json")
    p.add_argument("--image-root", default=f"{data}/world")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--caption-index", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from xfm.finetune.formats import read_retrieval_eval
    from xfm.pipeline import Pipeline

    gallery = read_retrieval_eval(args.captions, args.image_root)
    images = [ref.path for ref in gallery.images[:args.n]]
    if len(images) < 2:
        raise SystemExit(f"{args.captions}: need at least 2 pictures, found {len(images)}")
    captions = []
    for i, texts in enumerate(gallery.img2txt[:len(images)]):
        if len(texts) <= args.caption_index:
            raise SystemExit(f"{args.captions}: {images[i]} has no caption number {args.caption_index}")
        captions.append(gallery.texts[texts[args.caption_index]])
    pipe = Pipeline.from_pretrained(args.checkpoint, tokenizer=args.tokenizer, device="cpu")
    n = len(images)
    with torch.inference_mode():
        pictures = pipe._pictures(images)
        seqs = pipe._token_ids(captions)
        states, itm = [], []
        for i in range(n):  # picture i with every caption
            fused = pipe._fused_token0([pictures[i]] * n, seqs)
            states.append(fused.float().cpu())
            itm.append(pipe.xfm.itm_logits(fused).float().softmax(-1)[:, 1].cpu())
    states, itm = torch.stack(states), torch.stack(itm)   # (pictures, captions, D), (pictures, captions)
    out = {"checkpoint": str(args.checkpoint), "pictures": n, "caption_index": args.caption_index,
           "fusion_token0_variance": variance_shares(states),
           "fusion_token0_offset": offset_and_spread(states),
           "itm_prob_mean": float(itm.mean()), "itm_prob_std": float(itm.std()),
           "itm_diagonal_auc": diagonal_auc(itm), "itm_text_to_picture_r1": text_to_picture_r1(itm),
           "chance_r1": 1.0 / n}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
