"""The demo's figures (matplotlib, no display needed): pretraining and fine-tuning loss curves,
and retrieval examples (for a few test captions, the pictures ITC ranks first, framed green
when the caption is true of the picture and red when it is not)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "step" in r and any(k.startswith("loss") for k in r):
            out.append(r)
    return out


def loss_curves(runs: Path, path: Path) -> None:
    """One panel per pretraining stream (each objective's loss against the step) and one with
    every fine-tuning task's training loss."""
    pre = _rows(runs / "pretrain" / "metrics.jsonl")
    streams = sorted({k.split("/")[1] for r in pre for k in r if k.count("/") == 2 and k.startswith("loss/")})
    tasks = {p.parent.name: _rows(p) for p in sorted((runs / "finetune").glob("*/metrics.jsonl"))}
    tasks = {k: v for k, v in tasks.items() if any("loss" in r for r in v)}
    panels = len(streams) + (1 if tasks else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(4.2 * max(panels, 1), 3.4), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        keys = sorted({k for r in pre for k in r if k.startswith(f"loss/{stream}/")})
        for key in keys:
            pts = [(r["step"], r[key]) for r in pre if key in r]
            ax.plot(*zip(*pts), marker=".", label=key.rsplit("/", 1)[1])
        ax.set_title(f"pretraining: {stream}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if tasks:
        ax = axes[0][len(streams)]
        for name, rows in tasks.items():
            pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
            first = pts[0][1] or 1.0
            ax.plot([p[0] for p in pts], [p[1] / first for p in pts], marker=".", label=name)
        ax.set_title("fine-tuning loss / first loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def retrieval_examples(examples: dict, path: Path, n_queries: int = 6, top: int = 4) -> None:
    sim, correct = np.asarray(examples["sim"]), np.asarray(examples["correct"])
    captions, images = examples["captions"], examples["images"]
    # evenly spread queries, so every caption form appears
    queries = np.linspace(0, len(captions) - 1, n_queries).astype(int)
    fig, axes = plt.subplots(n_queries, top, figsize=(1.9 * top, 2.1 * n_queries), squeeze=False)
    for row, q in enumerate(queries):
        order = np.argsort(-sim[:, q], kind="stable")[:top]
        for col, i in enumerate(order):
            ax = axes[row][col]
            ax.imshow(Image.open(images[i]).convert("RGB"))
            ok = bool(correct[i, q])
            for s in ax.spines.values():
                s.set_edgecolor("green" if ok else "red")
                s.set_linewidth(4)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"#{col + 1} {'true' if ok else 'false'}", fontsize=7)
        axes[row][0].set_title(captions[q], fontsize=7, loc="left")
    fig.suptitle("text -> image (ITC): top pictures per caption; green = caption true of it", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
