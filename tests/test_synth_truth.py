"""The synthetic world's caption semantics (data_prep/synth/truth.py): every caption the world
writes for a scene is true of it, hand-checked cases decide other scenes, a predicate that
always says True (or always False) fails these checks, and the consistency matrix feeds the
retrieval metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xfm.data_prep.synth import language
from xfm.data_prep.synth.truth import (caption_is_true, consistency_matrix, parse_caption,
                                       scene_from_dict)
from xfm.data_prep.synth.world import Obj, Scene, sample_scene
from xfm.finetune.metrics.retrieval import consistent_recall, recall_chance


def _obj(shape, colour, size, box):
    return Obj(shape=shape, colour=colour, size=size, box=box, rgb=(0, 0, 0))


def _scene(image_id, *objects):
    return Scene(image_id=image_id, image_size=64, objects=tuple(objects), background=80,
                 noise_seed=0)


RED_CIRCLE_LEFT = _obj("circle", "red", "large", (4, 20, 26, 26))      # centre (16.5, 32.5)
BLUE_SQUARE_RIGHT = _obj("square", "blue", "small", (44, 24, 14, 14))  # centre (50.5, 30.5)
BLUE_SQUARE_LEFT = _obj("square", "blue", "small", (4, 24, 14, 14))    # centre (10.5, 30.5)
RED_CIRCLE_RIGHT = _obj("circle", "red", "large", (34, 20, 26, 26))    # centre (46.5, 32.5)
RED_CIRCLE_TOP = _obj("circle", "red", "large", (20, 2, 26, 26))       # centre (32.5, 14.5)
GREEN_TRIANGLE_LOW = _obj("triangle", "green", "small", (24, 44, 14, 14))  # centre (30.5, 50.5)

SCENES = {
    "A": _scene(1, RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT),    # circle left of square
    "B": _scene(2, BLUE_SQUARE_LEFT, RED_CIRCLE_RIGHT),    # square left of circle
    "C": _scene(3, RED_CIRCLE_TOP, GREEN_TRIANGLE_LOW),    # circle above triangle
    "D": _scene(4, RED_CIRCLE_LEFT),                       # the circle alone
}
# caption -> the scenes (of A-D) it is true of, decided by hand from the boxes above
HAND_CASES = {
    "a large red circle and a small blue square": {"A"},
    "a small blue square and a large red circle": {"B"},
    # one object above the other: the left-to-right order of the listing asserts nothing
    "a large red circle and a small green triangle": {"C"},
    "a small green triangle and a large red circle": {"C"},
    "a large red circle": {"D"},
    "a red circle left of a blue square": {"A"},
    "a circle right of a square": {"B"},
    "a large circle right of a small square": {"B"},
    "a square left of a circle": {"B"},
    "a circle above a triangle": {"C"},
    "a triangle above a circle": set(),
    "a green circle left of a square": set(),
    "two shapes: one circle and one square": {"A", "B"},
    "two shapes: one circle and one triangle": {"C"},
    "one shape: one circle": {"D"},
    "two shapes: two circles": set(),
    "there is one large red circle and nothing else": {"D"},
    "there is one small red circle and nothing else": set(),
}


def check_hand_cases(predicate):
    for caption, true_of in HAND_CASES.items():
        for name, scene in SCENES.items():
            assert predicate(scene, caption) == (name in true_of), (caption, name)


def check_generated_captions(predicate, n_scenes=400):
    rng = np.random.default_rng(7)
    for k in range(n_scenes):
        scene = sample_scene(rng, k, 64)
        for caption in language.captions(scene, rng):
            assert predicate(scene, caption), (caption, scene)


def test_hand_checked_cases():
    # the relations the cases rely on
    assert language.relation(RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT) == "left of"
    assert language.relation(RED_CIRCLE_TOP, GREEN_TRIANGLE_LOW) == "above"
    check_hand_cases(caption_is_true)


def test_every_generated_caption_is_true_of_its_scene():
    check_generated_captions(caption_is_true)


def test_constant_predicates_fail_the_checks():
    with pytest.raises(AssertionError):
        check_hand_cases(lambda scene, caption: True)
    with pytest.raises(AssertionError):
        check_hand_cases(lambda scene, caption: False)
    with pytest.raises(AssertionError):
        check_generated_captions(lambda scene, caption: False, n_scenes=5)


def test_world_files_agree(synth_world):
    scenes = {r["image_id"]: scene_from_dict(r)
              for r in map(json.loads, synth_world.path("scenes.jsonl").read_text().splitlines())}
    rows = json.loads(synth_world.path("retrieval/test.json").read_text())
    ids = [int(r["image"].rsplit("/", 1)[1].split(".")[0]) for r in rows]
    captions = [c for r in rows for c in r["caption"]]
    owner = np.repeat(np.arange(len(rows)), [len(r["caption"]) for r in rows])
    correct = consistency_matrix([scenes[i] for i in ids], captions)
    assert correct.shape == (len(rows), len(captions))
    assert correct[owner, np.arange(len(captions))].all()   # own captions are true
    assert not correct.all(axis=0).any()                    # no caption is true of every picture
    # a perfect ranking (own image first) scores 100; chance stays well below
    scores = np.where(correct, 1.0, 0.0) + 0.01 * np.random.default_rng(0).random(correct.shape)
    assert consistent_recall(scores, scores.T, correct)["img_r1"] == 100.0
    chance = recall_chance(correct)
    assert 0 < chance["img_r1"] < 50
    # the consistency matrix is exactly the predicate, entry by entry
    for j in range(0, len(captions), 7):
        for i in range(0, len(rows), 3):
            assert correct[i, j] == caption_is_true(scenes[ids[i]], captions[j])


def test_bad_captions_rejected():
    for bad in ["a huge red circle", "two shapes: one circle and one blob",
                "many shapes: one circle", "a red circle near a square", ""]:
        with pytest.raises(ValueError, match="caption"):
            caption_is_true(SCENES["A"], bad)
    with pytest.raises(ValueError, match="not a scenes.jsonl row"):
        scene_from_dict({"image_id": 1})
    assert parse_caption("one shape: one circle") == ("counts", 1, (("circle", 1),))
