"""``xfm-infer MODEL COMMAND ...``: the inference pipeline (``xfm.Pipeline``) on the command line,
one JSON document on stdout.

Commands (images are file paths; ``retrieve`` also takes directories, read as their image files
in name order):

  embed-images IMG...                      {"images": [...], "embeddings": [[...], ...]}
  embed-texts TEXT...                      {"texts": [...], "embeddings": [[...], ...]}
  match --image IMG... --text TEXT...      {"pairs": [{"image", "text", "probability"}, ...]}
  retrieve --query TEXT --gallery IMG_OR_DIR... [-k 5] [--rerank]
  retrieve --query-image IMG --gallery TEXT... [-k 5] [--rerank]
                                           {"query", "results": [{"rank", "index", "item", "score", "itm"?}]}
  ground --image IMG --text PHRASE         {"image", "text", "box": [x, y, w, h], "size": [w, h]}
  answer --image IMG... --question Q...    {"results": [{"image", "question", "answer"}]}   (a vqa model)
  caption --image IMG...                   {"results": [{"image", "caption"}]}   (a captioning model)
  classify --image IMG... [--top-k 5]      {"results": [{"image", "classes": [{"label", "index", "score"}]}]}
  zero-shot --image IMG... --labels A B... [--template "a picture of a {}."...]
                                           {"results": [{"image", "scores": [{"label", "score"}]}]}

Errors (a missing or unreadable file, an empty text, a head the checkpoint lacks) are one line
on stderr and exit status 2 (bad usage) or 1 (everything else).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def expand_images(items: list[str]) -> list[str]:
    """Files as given; a directory -> its image files (by suffix), sorted by name."""
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: directory holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xfm-infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint: xfm-export dir, fine-tuned best/ dir, official .th, HF or timm weights")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the one saved with the model)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-heads", type=int, help="text/fusion heads of an official or timm checkpoint")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("embed-images", help="ITC image embeddings")
    s.add_argument("images", nargs="+", metavar="IMG")
    s = sub.add_parser("embed-texts", help="ITC text embeddings")
    s.add_argument("texts", nargs="+", metavar="TEXT")
    s = sub.add_parser("match", help="ITM probability of each (image, text) pair, in order")
    s.add_argument("--image", nargs="+", required=True, metavar="IMG")
    s.add_argument("--text", nargs="+", required=True, metavar="TEXT")
    s = sub.add_parser("retrieve", help="nearest gallery items to a text (images) or an image (texts)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", metavar="TEXT", help="a text; the gallery is images / image directories")
    q.add_argument("--query-image", metavar="IMG", help="a picture; the gallery is texts")
    s.add_argument("--gallery", nargs="+", required=True)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--rerank", action="store_true", help="re-order the ITC top-k by the ITM match logit")
    s = sub.add_parser("ground", help="box of a phrase in a picture")
    s.add_argument("--image", required=True, metavar="IMG")
    s.add_argument("--text", required=True, metavar="PHRASE")
    s = sub.add_parser("answer", help="a fine-tuned VQA model's answer to each (image, question) pair")
    s.add_argument("--image", nargs="+", required=True, metavar="IMG")
    s.add_argument("--question", nargs="+", required=True, metavar="Q")
    s = sub.add_parser("caption", help="a fine-tuned captioning model's caption of each picture")
    s.add_argument("--image", nargs="+", required=True, metavar="IMG")
    s = sub.add_parser("classify", help="a fine-tuned image classifier's top classes")
    s.add_argument("--image", nargs="+", required=True, metavar="IMG")
    s.add_argument("--top-k", type=int, default=5)
    s = sub.add_parser("zero-shot", help="ITC zero-shot classification against label names")
    s.add_argument("--image", nargs="+", required=True, metavar="IMG")
    s.add_argument("--labels", nargs="+", required=True)
    s.add_argument("--template", nargs="+", default=["a picture of a {}."], dest="templates")
    return p


def run(args, pipe) -> dict:
    cmd = args.command
    if cmd == "embed-images":
        return {"images": args.images, "embeddings": pipe.embed_images(args.images).tolist()}
    if cmd == "embed-texts":
        return {"texts": args.texts, "embeddings": pipe.embed_texts(args.texts).tolist()}
    if cmd == "match":
        probs = pipe.match(args.image, args.text).tolist()
        return {"pairs": [{"image": i, "text": t, "probability": p}
                          for i, t, p in zip(args.image, args.text, probs)]}
    if cmd == "retrieve":
        if args.query is not None:
            gallery = expand_images(args.gallery)
            results = pipe.retrieve(args.query, [Path(g) for g in gallery], k=args.k, rerank=args.rerank)
            query = args.query
        else:
            gallery = args.gallery
            results = pipe.retrieve(Path(args.query_image), gallery, k=args.k, rerank=args.rerank)
            query = args.query_image
        return {"query": query, "results": [{"rank": r + 1, "item": gallery[res["index"]], **res}
                                            for r, res in enumerate(results)]}
    if cmd == "ground":
        from xfm.pipeline import to_rgb

        box = pipe.ground(args.image, args.text)
        return {"image": args.image, "text": args.text, "box": box, "size": list(to_rgb(args.image).size)}
    if cmd == "answer":
        answers = pipe.answer(args.image, args.question)
        return {"results": [{"image": i, "question": q, "answer": a}
                            for i, q, a in zip(args.image, args.question, answers)]}
    if cmd == "caption":
        captions = pipe.caption(args.image)
        return {"results": [{"image": i, "caption": c} for i, c in zip(args.image, captions)]}
    if cmd == "classify":
        results = pipe.classify(args.image, top_k=args.top_k)
        return {"results": [{"image": i, "classes": r} for i, r in zip(args.image, results)]}
    if cmd == "zero-shot":
        results = pipe.zero_shot_classify(args.image, args.labels, templates=args.templates)
        return {"results": [{"image": i, "scores": r} for i, r in zip(args.image, results)]}
    raise AssertionError(cmd)  # argparse allows only the commands above


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # load reports and warnings go to stderr; stdout carries the JSON only
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    from xfm.pipeline import Pipeline

    try:
        pipe = Pipeline.from_pretrained(args.model, tokenizer=args.tokenizer, device=args.device,
                                        num_heads=args.num_heads, batch_size=args.batch_size)
        out = run(args, pipe)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as e:
        # ValueError covers PipelineError, ImageReadError and CheckpointError
        print(f"xfm-infer: error: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
