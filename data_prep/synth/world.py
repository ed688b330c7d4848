"""Scenes of the synthetic world: what is in a picture, as plain data.

A scene is a square canvas holding 1-4 coloured shapes whose boxes never touch. Everything the
language side says (captions, phrases, answers, statements) is computed from these facts, and
the pixels are drawn from the same facts (render.py), so text and picture always agree.

Sampling rules that keep the language unambiguous (so a small model can learn it exactly):
- no two objects share (size, colour, shape): "the large red circle" always names one object;
- boxes are separated by a gap, so a phrase's box covers exactly its shape's pixels;
- every pair of objects has one clear spatial relation: the dominant axis of the centre
  offset decides between left/right and above/below, and near-diagonal pairs are rejected.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "diamond": "diamonds", "cross": "crosses"}
# Saturated, well separated hues; the background is grey so no colour can be mistaken for it.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 210, 220),
}
SIZE_NAMES = ("small", "large")
# Side of an object's box as a fraction of the canvas side: the two ranges are far apart so
# "small" and "large" are a matter of the picture, not of a threshold on noise.
SIZE_RANGES = {"small": (0.20, 0.24), "large": (0.36, 0.44)}
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MAX_OBJECTS = 4
COLOUR_JITTER = 18          # per channel, so colour names cover a small range, not one value
BOX_GAP = 2                 # pixels between any two boxes
DIAGONAL_MARGIN = 0.06      # reject pairs with | |dx| - |dy| | below this fraction of the side


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]   # x, y, w, h in pixels; x..x+w-1 and y..y+h-1 are drawn
    rgb: tuple[int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + (w - 1) / 2.0, y + (h - 1) / 2.0)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    image_id: int
    image_size: int
    objects: tuple[Obj, ...]
    background: int                  # grey level of the background
    noise_seed: int                  # seeds the background noise: rendering is a pure function
    split: str = "train"

    def count(self, shape: str | None = None, colour: str | None = None,
              size: str | None = None) -> int:
        return sum(1 for o in self.objects
                   if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
                   and (size is None or o.size == size))

    def left_to_right(self) -> list[Obj]:
        return sorted(self.objects, key=lambda o: (o.centre[0], o.centre[1]))

    def signature(self) -> tuple:
        """What makes two scenes the same picture (used to prove splits are disjoint)."""
        return (self.image_size, self.background, self.noise_seed,
                tuple((o.key, o.box, o.rgb) for o in self.objects))


def relation(a: Obj, b: Obj) -> str:
    """Where `a` is relative to `b`: the axis with the larger centre offset decides (image y
    grows downwards, so a smaller y is "above")."""
    dx = a.centre[0] - b.centre[0]
    dy = a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _boxes_clear(box, others, gap: int) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        if not (x + w + gap <= ox or ox + ow + gap <= x or y + h + gap <= oy or oy + oh + gap <= y):
            return False
    return True


def _relation_clear(box, others, image_size: int) -> bool:
    cx, cy = box[0] + (box[2] - 1) / 2.0, box[1] + (box[3] - 1) / 2.0
    for ox, oy, ow, oh in others:
        dx = abs(cx - (ox + (ow - 1) / 2.0))
        dy = abs(cy - (oy + (oh - 1) / 2.0))
        if abs(dx - dy) < DIAGONAL_MARGIN * image_size:
            return False
    return True


def _jitter_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour], dtype=np.int64)
    rgb = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)
    return tuple(int(v) for v in rgb)


def _side(rng: np.random.Generator, size: str, image_size: int) -> int:
    lo, hi = SIZE_RANGES[size]
    return int(round(rng.uniform(lo, hi) * image_size))


def _place(rng, side: int, image_size: int, boxes: list, tries: int = 200):
    for _ in range(tries):
        x = int(rng.integers(1, image_size - side))
        y = int(rng.integers(1, image_size - side))
        box = (x, y, side, side)
        if _boxes_clear(box, boxes, BOX_GAP) and _relation_clear(box, boxes, image_size):
            return box
    return None


def sample_scene(rng: np.random.Generator, image_id: int, image_size: int, split: str = "train",
                 n_objects: int | None = None,
                 count_weights=(0.15, 0.35, 0.30, 0.20)) -> Scene:
    """Draw one scene. The number of objects follows `count_weights` (1..4) unless given."""
    if image_size < 24:
        raise ValueError(f"image_size {image_size} too small for the synthetic world (min 24)")
    while True:
        n = n_objects or int(rng.choice(np.arange(1, MAX_OBJECTS + 1), p=count_weights))
        objects: list[Obj] = []
        keys: set = set()
        for _ in range(n):
            for _attempt in range(50):
                key = (str(rng.choice(SIZE_NAMES)), str(rng.choice(list(COLOURS))),
                       str(rng.choice(SHAPES)))
                if key not in keys:
                    break
            else:
                continue
            box = _place(rng, _side(rng, key[0], image_size), image_size, [o.box for o in objects])
            if box is None:
                break
            keys.add(key)
            objects.append(Obj(shape=key[2], colour=key[1], size=key[0], box=box,
                               rgb=_jitter_rgb(rng, key[1])))
        if len(objects) == n:
            break  # else the canvas was too crowded for this draw: draw the scene again
    return _finish(rng, image_id, image_size, objects, split)


def sample_class_scene(rng: np.random.Generator, image_id: int, image_size: int, label: str,
                       split: str = "train") -> Scene:
    """An image whose class is the shape of its one large object; 0-2 small distractors of
    other shapes make the class a property of the dominant shape, not of any shape present."""
    while True:
        objects = []
        colour = str(rng.choice(list(COLOURS)))
        box = _place(rng, _side(rng, "large", image_size), image_size, [])
        objects.append(Obj(shape=label, colour=colour, size="large", box=box,
                           rgb=_jitter_rgb(rng, colour)))
        others = [s for s in SHAPES if s != label]
        for _ in range(int(rng.integers(0, 3))):
            shape, colour = str(rng.choice(others)), str(rng.choice(list(COLOURS)))
            if any(o.key == ("small", colour, shape) for o in objects):
                continue
            box = _place(rng, _side(rng, "small", image_size), image_size, [o.box for o in objects])
            if box is not None:
                objects.append(Obj(shape=shape, colour=colour, size="small", box=box,
                                   rgb=_jitter_rgb(rng, colour)))
        if objects[0].box is not None:
            break
    return _finish(rng, image_id, image_size, objects, split)


def _finish(rng, image_id, image_size, objects, split) -> Scene:
    background = int(rng.integers(45, 115))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    return Scene(image_id=image_id, image_size=image_size, objects=tuple(objects),
                 background=background, noise_seed=noise_seed, split=split)


def scene_to_dict(scene: Scene) -> dict:
    return {"image_id": scene.image_id, "image_size": scene.image_size, "split": scene.split,
            "background": scene.background, "noise_seed": scene.noise_seed,
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                         "bbox": list(o.box), "rgb": list(o.rgb)} for o in scene.objects]}
