"""Draw scenes with PIL: grey noisy background, flat-coloured shapes filling their boxes.

Rendering is a pure function of the scene (the noise has its own seed in the scene), and JPEG
bytes are written with fixed options (quality, 4:4:4 chroma, no optimisation passes) so the same
scene always gives the same file.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .world import Obj, Scene

NOISE_STD = 10.0
# 4:4:4 keeps the colour of small shapes from bleeding into the background at 32-64 px.
JPEG_OPTIONS = {"format": "JPEG", "quality": 95, "subsampling": 0, "optimize": False,
                "progressive": False}


def object_mask(obj: Obj, image_size: int) -> np.ndarray:
    """(H, W) bool: the pixels this object covers. Every shape touches all four sides of its
    box, so the box is the tight bounding box of the mask."""
    x, y, w, h = obj.box
    x1, y1 = x + w - 1, y + h - 1
    img = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(img)
    cx, cy = x + (w - 1) // 2, y + (h - 1) // 2
    if obj.shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=255)
    elif obj.shape == "square":
        draw.rectangle([x, y, x1, y1], fill=255)
    elif obj.shape == "triangle":
        # apex as a 2-pixel top edge for even sides so the drawing stays symmetric
        draw.polygon([(cx, y), (x + w // 2, y), (x1, y1), (x, y1)], fill=255)
    elif obj.shape == "diamond":
        draw.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=255)
    elif obj.shape == "cross":
        bar = max(2, w // 3)
        bx = x + (w - bar) // 2
        by = y + (h - bar) // 2
        draw.rectangle([bx, y, bx + bar - 1, y1], fill=255)
        draw.rectangle([x, by, x1, by + bar - 1], fill=255)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    return np.asarray(img) > 0


def render_arrays(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """-> (pixels (H,W,3) uint8, labels (H,W) int: object index, -1 for background)."""
    s = scene.image_size
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, NOISE_STD, size=(s, s, 3))
    pixels = np.clip(scene.background + noise, 0, 255)
    labels = np.full((s, s), -1, dtype=np.int64)
    for i, obj in enumerate(scene.objects):
        mask = object_mask(obj, s)
        pixels[mask] = obj.rgb
        labels[mask] = i
    return pixels.round().astype(np.uint8), labels


def render(scene: Scene) -> Image.Image:
    return Image.fromarray(render_arrays(scene)[0], mode="RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **JPEG_OPTIONS)
    return buf.getvalue()
