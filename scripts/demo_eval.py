"""Demo check that pretraining learned something: zero-shot image-text retrieval (ITC) on the
synthetic world's held-out pictures, for the exported model and for the same architecture with
random weights. Prints R@1/R@5 in both directions and writes them as JSON.

    python scripts/demo_eval.py --model runs/demo/export --world data/world --metrics out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from xfm import XFM
from xfm.pretrain.data.config import IMAGE_MEAN, IMAGE_STD
from xfm.tokenizer import load_tokenizer


def load_rows(world: Path, split: str):
    path = world / "retrieval" / f"{split}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"demo_eval: cannot read {path}: {e}")
    images = [r["image"] for r in rows]
    captions, owner = [], []
    for i, r in enumerate(rows):
        for c in r["caption"]:
            captions.append(c)
            owner.append(i)
    return images, captions, torch.tensor(owner)


def pixels(world: Path, names, size: int) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    out = []
    for name in names:
        img = Image.open(world / name).convert("RGB").resize((size, size), Image.BICUBIC)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
        out.append((t.permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(out)


@torch.no_grad()
def retrieval(model: XFM, px, ids, mask, owner) -> dict:
    img_feat, _ = model.features(model.encode_image(px), model.encode_text(ids[:1], mask[:1]))
    _, txt_feat = model.features(model.encode_image(px[:1]), model.encode_text(ids, mask))
    sim = img_feat @ txt_feat.t()  # images x captions
    n_img = sim.shape[0]
    # image -> text: rank of the best-ranked correct caption
    i2t_rank = []
    for i in range(n_img):
        order = sim[i].argsort(descending=True)
        i2t_rank.append(int((owner[order] == i).nonzero()[0]))
    # text -> image: rank of the caption's picture
    t2i_order = sim.t().argsort(dim=1, descending=True)
    t2i_rank = (t2i_order == owner[:, None]).float().argmax(1)
    i2t = torch.tensor(i2t_rank)
    return {
        "i2t_r1": float((i2t < 1).float().mean()), "i2t_r5": float((i2t < 5).float().mean()),
        "t2i_r1": float((t2i_rank < 1).float().mean()), "t2i_r5": float((t2i_rank < 5).float().mean()),
        "images": n_img, "captions": len(owner),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="exported model directory (xfm-export)")
    ap.add_argument("--world", required=True, help="synthetic world directory")
    ap.add_argument("--split", default="test")
    ap.add_argument("--metrics", help="write the figures here as JSON")
    args = ap.parse_args(argv)
    world = Path(args.world)
    torch.manual_seed(0)
    model = XFM.from_pretrained(args.model).eval()
    random_model = XFM(model.config).eval()
    tok = load_tokenizer(world / "tokenizer")
    images, captions, owner = load_rows(world, args.split)
    enc = tok(captions, padding="max_length", truncation=True, max_length=30, return_tensors="pt")
    px = pixels(world, images, model.config.vision.image_size)
    result = {"trained": retrieval(model, px, enc["input_ids"], enc["attention_mask"], owner),
              "random_init": retrieval(random_model, px, enc["input_ids"], enc["attention_mask"], owner)}
    for name, r in result.items():
        print(f"{name:12s} image->text R@1 {r['i2t_r1']:.3f} R@5 {r['i2t_r5']:.3f} | "
              f"text->image R@1 {r['t2i_r1']:.3f} R@5 {r['t2i_r5']:.3f} "
              f"({r['images']} images, {r['captions']} captions)")
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
