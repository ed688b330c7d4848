"""Zero-shot image-text retrieval (ITC similarity) of a model on the synthetic world, scored two
ways: plain R@K (a caption's own picture) and consistent R@K (any picture the caption is true
of, decided by the world's ground truth), each beside the exact R@K of a random ranking.

    python scripts/demo_eval.py --model runs/demo/export --world data/world --metrics out.json

Values are fractions in [0, 1]. `--random-init` also scores the same architecture with random
weights (a second baseline beside the computed chance level).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from xfm import XFM
from xfm.data_prep.synth.truth import consistency_matrix, scene_from_dict
from xfm.finetune.images import eval_transform, load_image
from xfm.finetune.metrics.retrieval import (consistent_recall, recall_chance, retrieval_chance,
                                            retrieval_recall)
from xfm.tokenizer import load_tokenizer

KS = (1, 5, 10)


def read_split(world: Path, split: str):
    """(image paths, captions, caption -> image index, scenes) of a retrieval split."""
    path = world / "retrieval" / f"{split}.json"
    try:
        rows = json.loads(path.read_text())
        scenes = {r["image_id"]: r for r in map(json.loads, (world / "scenes.jsonl").open())}
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"demo_eval: cannot read the world under {world}: {e}")
    images = [r["image"] for r in rows]
    captions = [c for r in rows for c in r["caption"]]
    owner = np.repeat(np.arange(len(rows)), [len(r["caption"]) for r in rows])
    ids = [int(Path(name).stem) for name in images]
    return images, captions, owner, [scene_from_dict(scenes[i]) for i in ids]


@torch.no_grad()
def similarity(model: XFM, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               batch: int = 128) -> np.ndarray:
    """(n_images, n_captions) cosine similarity of the ITC features."""
    img = torch.cat([model.image_features(model.encode_image(pixels[i:i + batch]))
                     for i in range(0, len(pixels), batch)])
    txt = torch.cat([model.text_features(model.encode_text(ids[i:i + batch], mask[i:i + batch]))
                     for i in range(0, len(ids), batch)])
    return (img @ txt.t()).float().numpy()


def score(sim: np.ndarray, owner: np.ndarray, correct: np.ndarray) -> dict:
    img2txt = [np.nonzero(owner == i)[0].tolist() for i in range(sim.shape[0])]
    plain = retrieval_recall(sim, sim.T, owner, img2txt, KS)
    consistent = consistent_recall(sim, sim.T, correct, KS)
    return {"plain": {k: v / 100 for k, v in plain.items()},
            "consistent": {k: v / 100 for k, v in consistent.items()}}


def chance(owner: np.ndarray, correct: np.ndarray) -> dict:
    img2txt = [np.nonzero(owner == i)[0].tolist() for i in range(correct.shape[0])]
    return {"plain": {k: v / 100 for k, v in retrieval_chance(owner, img2txt, KS).items()},
            "consistent": {k: v / 100 for k, v in recall_chance(correct, KS).items()}}


def evaluate(model_dir, world, split: str = "test", random_init: bool = False,
             max_len: int = 40) -> dict:
    """Scores of the model (and optionally of random weights) with the chance levels, plus the
    data the examples figure needs (similarity matrix, captions, images, correctness)."""
    world = Path(world)
    torch.manual_seed(0)
    model = XFM.from_pretrained(str(model_dir)).eval()
    images, captions, owner, scenes = read_split(world, split)
    tok = load_tokenizer(world / "tokenizer")
    max_len = min(max_len, model.config.text.max_position_embeddings)
    enc = tok(captions, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    size = model.config.vision.image_size
    pixels = torch.stack([eval_transform(load_image(world / name), size) for name in images])
    correct = consistency_matrix(scenes, captions)
    sim = similarity(model, pixels, enc["input_ids"], enc["attention_mask"])
    result = {"split": split, "images": len(images), "captions": len(captions),
              "trained": score(sim, owner, correct), "chance": chance(owner, correct)}
    if random_init:
        rand = XFM(model.config).eval()
        result["random_init"] = score(similarity(rand, pixels, enc["input_ids"], enc["attention_mask"]),
                                      owner, correct)
    examples = {"sim": sim, "captions": captions, "images": [str(world / n) for n in images],
                "correct": correct, "owner": owner}
    return result, examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="exported model directory (xfm-export) or a best/ dir")
    ap.add_argument("--world", required=True, help="synthetic world directory")
    ap.add_argument("--split", default="test")
    ap.add_argument("--random-init", action="store_true", help="also score random weights")
    ap.add_argument("--metrics", help="write the figures here as JSON")
    args = ap.parse_args(argv)
    result, _ = evaluate(args.model, args.world, args.split, args.random_init)
    rows = [("trained", result["trained"]), ("chance", result["chance"])]
    if "random_init" in result:
        rows.append(("random_init", result["random_init"]))
    for name, r in rows:
        for kind in ("consistent", "plain"):
            m = r[kind]
            print(f"{name:12s} {kind:10s} text->image R@1 {m['img_r1']:.3f} R@5 {m['img_r5']:.3f} | "
                  f"image->text R@1 {m['txt_r1']:.3f} R@5 {m['txt_r5']:.3f}")
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
