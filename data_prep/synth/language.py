"""What is said about scenes: captions, region phrases, questions/answers, true/false statements,
entailment pairs and consistent/inconsistent descriptions. Every function computes its text from
the scene's facts (world.py), so the language is fully determined by the picture; the random
generator only chooses *which* true (or false) thing to say.
"""
from __future__ import annotations

import numpy as np

from .world import (COLOURS, INVERSE_RELATION, PLURALS, RELATIONS, SHAPES, SIZE_NAMES, Obj, Scene,
                    relation)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
ATTRIBUTE_ORDER = ("size", "colour", "shape")
# tried from the shortest: the first set that names exactly one object is its referring expression
_REFERRING_SETS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))


def number_word(n: int) -> str:
    return NUMBER_WORDS[n]


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else PLURALS[shape]


def describe(obj: Obj, attrs=ATTRIBUTE_ORDER, article: str = "a") -> str:
    words = [getattr(obj, a) for a in ATTRIBUTE_ORDER if a in attrs]
    return " ".join([article] + words) if article else " ".join(words)


def matches(obj: Obj, attrs, ref: Obj) -> bool:
    return all(getattr(obj, a) == getattr(ref, a) for a in attrs)


def referring_attrs(scene: Scene, obj: Obj) -> tuple[str, ...]:
    """Shortest attribute set naming only `obj` (always exists: (size, colour, shape) is unique)."""
    for attrs in _REFERRING_SETS:
        if sum(matches(o, attrs, obj) for o in scene.objects) == 1:
            return attrs
    raise ValueError(f"scene {scene.image_id}: object {obj.key} is not uniquely describable")


def refer(scene: Scene, obj: Obj) -> str:
    """'the red circle': the shortest unambiguous name of `obj` in its scene."""
    return describe(obj, referring_attrs(scene, obj), article="the")


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(scene: Scene) -> str:
    """'two circles and one square' (shapes in the fixed SHAPES order)."""
    parts = [f"{number_word(n)} {plural(s, n)}" for s in SHAPES if (n := scene.count(shape=s))]
    return join_list(parts)


# ---------------------------------------------------------------- captions and regions
def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Three captions (COCO has several per image): a left-to-right list, a relation, counts."""
    objs = scene.left_to_right()
    listing = join_list([describe(o) for o in objs])
    if len(objs) == 1:
        rel = f"there is one {describe(objs[0], article='')} and nothing else"
    else:
        i, j = rng.choice(len(objs), size=2, replace=False)
        a, b = objs[int(i)], objs[int(j)]
        rel = f"{describe(a, referring_attrs(scene, a))} {relation(a, b)} {describe(b, referring_attrs(scene, b))}"
    n = len(objs)
    counts = f"{number_word(n)} {'shape' if n == 1 else 'shapes'}: {count_phrase(scene)}"
    return [listing, rel, counts]


def region_items(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """Visual-Genome-style region descriptions: one per object ('a large red circle', its exact
    box) and, with two or more objects, one relation phrase whose box is the union of both."""
    items = [{"phrase": describe(o), "bbox": list(o.box), "objects": [k]}
             for k, o in enumerate(scene.objects)]
    if len(scene.objects) >= 2:
        i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
        a, b = scene.objects[i], scene.objects[j]
        x0, y0 = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])
        x1 = max(a.box[0] + a.box[2], b.box[0] + b.box[2])
        y1 = max(a.box[1] + a.box[3], b.box[1] + b.box[3])
        items.append({"phrase": f"{describe(a, referring_attrs(scene, a))} {relation(a, b)} "
                                f"{describe(b, referring_attrs(scene, b))}",
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "objects": [i, j]})
    return items


# ---------------------------------------------------------------- VQA
def answer_vocabulary() -> list[str]:
    """Every answer a question can have (the VQA answer list)."""
    return ([str(n) for n in range(0, 5)] + list(COLOURS) + list(SHAPES) + list(SIZE_NAMES)
            + ["yes", "no"])


def _q_count_shape(scene, rng):
    present = [o.shape for o in scene.objects]
    shape = str(rng.choice(present)) if rng.random() < 0.7 else str(rng.choice(SHAPES))
    return f"how many {PLURALS[shape]} are there?", str(scene.count(shape=shape)), "count"


def _q_count_all(scene, rng):
    return "how many shapes are there?", str(len(scene.objects)), "count"


def _q_colour_of(scene, rng):
    singles = [o for o in scene.objects if scene.count(shape=o.shape) == 1]
    if not singles:
        return None
    o = singles[int(rng.integers(len(singles)))]
    return f"what colour is the {o.shape}?", o.colour, "colour"


def _q_shape_of(scene, rng):
    singles = [o for o in scene.objects if scene.count(colour=o.colour) == 1]
    if not singles:
        return None
    o = singles[int(rng.integers(len(singles)))]
    return f"what shape is the {o.colour} object?", o.shape, "shape"


def _q_size_of(scene, rng):
    singles = [o for o in scene.objects if scene.count(colour=o.colour, shape=o.shape) == 1]
    if not singles:
        return None
    o = singles[int(rng.integers(len(singles)))]
    return f"what size is the {o.colour} {o.shape}?", o.size, "size"


def _q_exists(scene, rng):
    if rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        colour, shape = o.colour, o.shape
    else:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    ans = "yes" if scene.count(shape=shape, colour=colour) else "no"
    return f"is there a {colour} {shape}?", ans, "yes/no"


def _q_relation(scene, rng):
    if len(scene.objects) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
    a, b = scene.objects[i], scene.objects[j]
    asked = str(rng.choice(RELATIONS))
    ans = "yes" if relation(a, b) == asked else "no"
    return f"is {refer(scene, a)} {asked} {refer(scene, b)}?", ans, "yes/no"


QUESTION_TEMPLATES = (_q_count_shape, _q_count_all, _q_colour_of, _q_shape_of, _q_size_of,
                      _q_exists, _q_relation)


def questions(scene: Scene, rng: np.random.Generator, k: int) -> list[tuple[str, str, str]]:
    """`k` distinct (question, answer, answer_type) about the scene."""
    out, seen = [], set()
    for _ in range(20 * k):
        if len(out) == k:
            break
        qa = QUESTION_TEMPLATES[int(rng.integers(len(QUESTION_TEMPLATES)))](scene, rng)
        if qa is None or qa[0] in seen:
            continue
        seen.add(qa[0])
        out.append(qa)
    return out


# ---------------------------------------------------------------- NLVR2 statements about a pair
# Each template chooses what to say from the (left, right) pair it is given and returns the
# sentence with its test: a function deciding it on any pair, so that NLVR2 rows can show one
# sentence with a pair it is true of and a pair it is false of.
def _s_side_has(left, right, rng):
    side = "left" if rng.random() < 0.5 else "right"
    pool = list(left.objects + right.objects)
    o = pool[int(rng.integers(len(pool)))]
    return (f"the {side} image contains a {o.colour} {o.shape}",
            lambda l, r: (l if side == "left" else r).count(shape=o.shape, colour=o.colour) > 0)


def _s_both_have(left, right, rng):
    shape = str(rng.choice([o.shape for o in left.objects + right.objects]))
    return f"both images contain a {shape}", lambda l, r: l.count(shape=shape) > 0 and r.count(shape=shape) > 0


def _s_total(left, right, rng):
    shape = str(rng.choice([o.shape for o in left.objects + right.objects]))
    true_n = left.count(shape=shape) + right.count(shape=shape)
    n = true_n if rng.random() < 0.5 else int(rng.integers(1, 5))
    verb = "is" if n == 1 else "are"
    return (f"there {verb} {number_word(n)} {plural(shape, n)} in total",
            lambda l, r: l.count(shape=shape) + r.count(shape=shape) == n)


def _s_more(left, right, rng):
    a, b = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    return (f"the {a} image has more shapes than the {b} image",
            lambda l, r: (len(l.objects) > len(r.objects)) if a == "left" else (len(r.objects) > len(l.objects)))


def _s_exactly_one(left, right, rng):
    colour = str(rng.choice([o.colour for o in left.objects + right.objects]))
    return (f"exactly one image contains a {colour} object",
            lambda l, r: (l.count(colour=colour) > 0) != (r.count(colour=colour) > 0))


STATEMENT_TEMPLATES = (_s_side_has, _s_both_have, _s_total, _s_more, _s_exactly_one)


def pair_statement_with_test(left: Scene, right: Scene, rng: np.random.Generator, want: bool):
    """(sentence, holds) about the (left, right) pair, with ``holds(left, right) == want`` when
    such a sentence can be found; ``holds`` decides the same sentence on any other pair."""
    sentence, holds = None, None
    for _ in range(100):
        sentence, holds = STATEMENT_TEMPLATES[int(rng.integers(len(STATEMENT_TEMPLATES)))](left, right, rng)
        if holds(left, right) == want:
            break
    return sentence, holds


def pair_statement(left: Scene, right: Scene, rng: np.random.Generator, want: bool) -> tuple[str, bool]:
    """A sentence about the (left, right) pair whose truth is `want` when one can be found
    (labels then stay balanced); the returned label is always the computed truth."""
    sentence, holds = pair_statement_with_test(left, right, rng, want)
    return sentence, bool(holds(left, right))


# ---------------------------------------------------------------- text-only tasks
def scene_description(scene: Scene, rng: np.random.Generator) -> str:
    """Sentences that fully describe a scene (closed world: what is not said is not there)."""
    objs = scene.left_to_right()
    n = len(objs)
    sents = [f"there {'is' if n == 1 else 'are'} {number_word(n)} {'shape' if n == 1 else 'shapes'}: "
             f"{join_list([describe(o) for o in objs])}."]
    # every pair, so any relation a hypothesis mentions can be read off the text alone
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            sents.append(f"{refer(scene, a)} is {relation(a, b)} {refer(scene, b)}.")
    return " ".join(sents)


def _false_fact(scene: Scene, rng) -> str:
    kind = int(rng.integers(4))
    if kind == 0 and len(scene.objects) >= 2:
        i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
        a, b = scene.objects[i], scene.objects[j]
        wrong = str(rng.choice([r for r in RELATIONS if r != relation(a, b)]))
        return f"{refer(scene, a)} is {wrong} {refer(scene, b)}."
    if kind == 1:
        shape = str(rng.choice(SHAPES))
        n = scene.count(shape=shape)
        wrong = int(rng.choice([k for k in range(0, 5) if k != n]))
        return f"there {'is' if wrong == 1 else 'are'} {number_word(wrong)} {plural(shape, wrong)}."
    if kind == 2:
        absent = [(c, s) for c in COLOURS for s in SHAPES if not scene.count(shape=s, colour=c)]
        c, s = absent[int(rng.integers(len(absent)))]
        return f"there is a {c} {s}."
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    other = "small" if o.size == "large" else "large"
    if scene.count(colour=o.colour, shape=o.shape) > 1:
        return f"there is no {o.colour} {o.shape}."
    return f"the {o.colour} {o.shape} is {other}."


def _true_fact(scene: Scene, rng) -> str:
    kind = int(rng.integers(4))
    if kind == 0 and len(scene.objects) >= 2:
        i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
        a, b = scene.objects[i], scene.objects[j]
        return f"{refer(scene, a)} is {relation(a, b)} {refer(scene, b)}."
    if kind == 1:
        shape = str(rng.choice(SHAPES))
        n = scene.count(shape=shape)
        return f"there {'is' if n == 1 else 'are'} {number_word(n)} {plural(shape, n)}."
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    if kind == 2:
        return f"there is a {o.colour} {o.shape}."
    if scene.count(colour=o.colour, shape=o.shape) > 1:
        return f"there is a {o.size} {o.colour} {o.shape}."
    return f"the {o.colour} {o.shape} is {o.size}."


def entailment_pair(scene: Scene, rng: np.random.Generator, entailed: bool) -> tuple[str, str]:
    """(premise, hypothesis): the premise describes the whole scene; the hypothesis is a fact
    that follows from it (entailed) or one that contradicts it."""
    premise = scene_description(scene, rng)
    hypothesis = _true_fact(scene, rng) if entailed else _false_fact(scene, rng)
    return premise, hypothesis


def consistency_sentence(scene: Scene, rng: np.random.Generator, acceptable: bool) -> str:
    """A one-sentence description that is self-consistent or not, decidable from the sentence
    alone: its announced count must match its list, and a stated relation and its restatement
    must agree."""
    objs = scene.left_to_right()
    if len(objs) >= 2 and rng.random() < 0.5:
        i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
        a, b = objs[i], objs[j]
        r = relation(a, b)
        back = INVERSE_RELATION[r] if acceptable else str(rng.choice(
            [x for x in RELATIONS if x != INVERSE_RELATION[r]]))
        return f"{refer(scene, a)} is {r} {refer(scene, b)}, so {refer(scene, b)} is {back} {refer(scene, a)}."
    n = len(objs)
    said = n if acceptable else int(rng.choice([k for k in range(1, 6) if k != n]))
    return (f"there {'is' if said == 1 else 'are'} {number_word(said)} "
            f"{'shape' if said == 1 else 'shapes'}: {join_list([describe(o) for o in objs])}.")


def document(scene: Scene, rng: np.random.Generator, other: Scene | None = None) -> str:
    """A text-corpus document: a description, some questions with answers, and a true fact;
    with `other`, a left/right pair of descriptions and a true statement about the pair. Together
    they hold the words of every task, so the tokenizer learns them as whole tokens."""
    if other is not None:
        sentence, truth = pair_statement(scene, other, rng, want=True)
        if truth:
            return (f"left image: {scene_description(scene, rng)} right image: "
                    f"{scene_description(other, rng)} {sentence}.")
    parts = [scene_description(scene, rng)]
    for q, a, _ in questions(scene, rng, 2):
        parts.append(f"{q} {a}.")
    parts.append(_true_fact(scene, rng))
    return " ".join(parts)
