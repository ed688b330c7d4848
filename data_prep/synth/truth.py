"""Whether a caption of the synthetic world's grammar is true of a scene.

The world knows every scene, so retrieval can be scored by meaning: a retrieved picture is
correct when the caption is true of it, not only when the caption was written for it (many
captions describe several pictures: "one shape: one circle" is true of every picture holding
exactly one circle). This module reads the three caption forms `language.captions` writes and
decides them against a scene's facts:

- listing, "a large red circle, a small blue square and a green cross": the scene holds exactly
  these objects (closed world: the generator lists every object) and no listed object is
  right of an object listed after it (the list runs left to right; for two objects one above
  the other the order says nothing, as the relation of such a pair is "above"/"below");
- a single object, "there is one large red circle and nothing else": exactly that object;
- a relation, "a red circle left of a square": some object matching the first description has
  that relation (`world.relation`, the dominant axis of the centre offset) to another object
  matching the second;
- counts, "three shapes: two circles and one square": the total and every shape's count match
  (shapes not named are absent).

A caption outside this grammar raises ValueError (a silent False would make a scorer quietly
wrong).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

import numpy as np

from .language import NUMBER_WORDS
from .world import COLOURS, PLURALS, RELATIONS, SHAPES, SIZE_NAMES, Obj, Scene, relation

_SHAPE_OF_WORD = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_NUMBER = {w: n for n, w in enumerate(NUMBER_WORDS)}
_DESC = re.compile(r"^(?:(?P<size>{})\s+)?(?:(?P<colour>{})\s+)?(?P<shape>{})$".format(
    "|".join(SIZE_NAMES), "|".join(COLOURS), "|".join(SHAPES)))
_SINGLE = re.compile(r"^there is one (?P<desc>.+) and nothing else$")
_COUNTS = re.compile(r"^(?P<n>\w+) (?:shape|shapes): (?P<parts>.+)$")
_RELATION = re.compile(r"^a (?P<a>.+?) (?P<rel>{}) a (?P<b>.+)$".format("|".join(RELATIONS)))


def scene_from_dict(row: dict) -> Scene:
    """A `Scene` from one line of scenes.jsonl (`world.scene_to_dict`)."""
    try:
        objects = tuple(Obj(shape=o["shape"], colour=o["colour"], size=o["size"],
                            box=tuple(int(v) for v in o["bbox"]), rgb=tuple(o.get("rgb", (0, 0, 0))))
                        for o in row["objects"])
        return Scene(image_id=int(row["image_id"]), image_size=int(row["image_size"]),
                     objects=objects, background=int(row.get("background", 0)),
                     noise_seed=int(row.get("noise_seed", 0)), split=row.get("split", "train"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a scenes.jsonl row ({e!r}): {str(row)[:200]}") from None


def _as_scene(scene) -> Scene:
    return scene if isinstance(scene, Scene) else scene_from_dict(scene)


def _parse_desc(text: str, caption: str) -> dict:
    m = _DESC.match(text)
    if not m:
        raise ValueError(f"caption {caption!r}: {text!r} is not an object description "
                         "([size] [colour] shape)")
    return {k: v for k, v in m.groupdict().items() if v is not None}


def _parse_article_desc(text: str, caption: str) -> dict:
    if not text.startswith("a "):
        raise ValueError(f"caption {caption!r}: expected 'a <description>', got {text!r}")
    return _parse_desc(text[2:], caption)


def _split_list(text: str) -> list[str]:
    head, sep, last = text.rpartition(" and ")
    return (head.split(", ") + [last]) if sep else [text]


def _matches(obj: Obj, desc: dict) -> bool:
    return all(getattr(obj, k) == v for k, v in desc.items())


@lru_cache(maxsize=4096)
def parse_caption(caption: str):
    """The caption's meaning as a tuple: ("list", (desc, ...)), ("single", desc),
    ("relation", desc_a, rel, desc_b) or ("counts", total, ((shape, n), ...)); each desc a
    tuple of (attribute, value) pairs. Raises ValueError outside the grammar."""
    text = caption.strip()
    if (m := _SINGLE.match(text)):
        desc = _parse_desc(m["desc"], caption)
        if set(desc) != {"size", "colour", "shape"}:
            raise ValueError(f"caption {caption!r}: the single object must be fully described")
        return ("single", tuple(sorted(desc.items())))
    if (m := _COUNTS.match(text)):
        if m["n"] not in _NUMBER:
            raise ValueError(f"caption {caption!r}: {m['n']!r} is not a number word")
        counts = []
        for part in _split_list(m["parts"]):
            words = part.split(" ")
            if len(words) != 2 or words[0] not in _NUMBER or words[1] not in _SHAPE_OF_WORD:
                raise ValueError(f"caption {caption!r}: {part!r} is not '<number> <shape(s)>'")
            counts.append((_SHAPE_OF_WORD[words[1]], _NUMBER[words[0]]))
        return ("counts", _NUMBER[m["n"]], tuple(counts))
    if (m := _RELATION.match(text)):
        return ("relation", tuple(sorted(_parse_desc(m["a"], caption).items())), m["rel"],
                tuple(sorted(_parse_desc(m["b"], caption).items())))
    items = [_parse_article_desc(p, caption) for p in _split_list(text)]
    for d in items:
        if set(d) != {"size", "colour", "shape"}:
            raise ValueError(f"caption {caption!r}: listed objects must be fully described")
    return ("list", tuple(tuple(sorted(d.items())) for d in items))


def caption_is_true(scene, caption: str) -> bool:
    """True when `caption` (one of the world's caption forms) holds of `scene` (a `Scene` or a
    scenes.jsonl row). Raises ValueError for a caption outside the grammar."""
    sc = _as_scene(scene)
    meaning = parse_caption(caption)
    kind = meaning[0]
    if kind == "single":
        return len(sc.objects) == 1 and _matches(sc.objects[0], dict(meaning[1]))
    if kind == "counts":
        _, total, counts = meaning
        said = dict(counts)
        if len(said) != len(counts):   # a shape counted twice is not a form the world writes
            return False
        return (len(sc.objects) == total
                and all(sc.count(shape=s) == said.get(s, 0) for s in SHAPES))
    if kind == "relation":
        _, da, rel, db = meaning
        da, db = dict(da), dict(db)
        return any(a is not b and _matches(a, da) and _matches(b, db) and relation(a, b) == rel
                   for a in sc.objects for b in sc.objects)
    listed = [dict(d) for d in meaning[1]]
    if len(listed) != len(sc.objects):
        return False
    by_key = {o.key: o for o in sc.objects}   # (size, colour, shape) is unique within a scene
    objs = []
    for d in listed:
        o = by_key.get((d["size"], d["colour"], d["shape"]))
        if o is None or any(o is p for p in objs):
            return False
        objs.append(o)
    return all(relation(objs[i], objs[j]) != "right of"
               for i in range(len(objs)) for j in range(i + 1, len(objs)))


def consistency_matrix(scenes: Sequence, captions: Sequence[str]) -> np.ndarray:
    """(n_scenes, n_captions) bool: entry [i, j] says caption j is true of scene i (the
    `correct` matrix of `xfm.finetune.metrics.consistent_recall` / `recall_chance`)."""
    scs = [_as_scene(s) for s in scenes]
    out = np.zeros((len(scs), len(captions)), dtype=bool)
    for j, cap in enumerate(captions):
        parse_caption(cap)  # raise for a bad caption even with no scenes
        for i, sc in enumerate(scs):
            out[i, j] = caption_is_true(sc, cap)
    return out
