"""The decoded-picture cache of fine-tuning runs (``train.image_cache_mb``): the pictures it
hands out equal a fresh decode, a cached picture is never read from disk again, what a caller
does to its copy does not reach the cache, the byte budget holds, and the EXIF flag is part of
the key. (That a whole run gives the same numbers with it: test_finetune_image_cls.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xfm.finetune.config import TrainConfig
from xfm.finetune.image_cache import active_cache, decoded_image_cache
from xfm.finetune.images import ImageReadError, load_image


def _picture(path, w=40, h=24, seed=0, orientation=None):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if orientation is None:
        img.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # 6: the viewer turns the stored picture 90 degrees
        img.save(path, quality=95, exif=exif)
    return path


def test_cached_pictures_equal_a_fresh_decode_and_skip_the_disk(tmp_path):
    path = _picture(tmp_path / "a.jpg")
    fresh = np.asarray(load_image(path))
    with decoded_image_cache(1.0) as cache:
        first = load_image(path)
        path.unlink()  # from now on only the cache can answer
        second = load_image(path)
        assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    np.testing.assert_array_equal(np.asarray(first), fresh)
    np.testing.assert_array_equal(np.asarray(second), fresh)
    assert active_cache() is None  # off again after the run's block
    with pytest.raises(ImageReadError, match="a.jpg: image file not found"):
        load_image(path)


def test_a_callers_changes_do_not_reach_the_cache(tmp_path):
    path = _picture(tmp_path / "a.jpg")
    with decoded_image_cache(1.0):
        mine = load_image(path)
        mine.paste((0, 0, 0), (0, 0, mine.width, mine.height))  # in place
        again = load_image(path)
    assert np.asarray(again).max() > 0


def test_the_budget_holds(tmp_path):
    a, b = _picture(tmp_path / "a.jpg", seed=0), _picture(tmp_path / "b.jpg", seed=1)
    one_picture_mb = 40 * 24 * 3 / 2**20
    with decoded_image_cache(one_picture_mb * 1.5) as cache:
        load_image(a)
        load_image(b)  # does not fit: decoded, handed out, not kept
        assert cache.stats()["pictures"] == 1 and cache.stats()["over_budget"] == 1
        assert cache.used <= cache.max_bytes
        b.unlink()
        with pytest.raises(ImageReadError, match="b.jpg"):
            load_image(b)
        a.unlink()
        load_image(a)  # kept


def test_the_exif_flag_is_part_of_the_key(tmp_path):
    path = _picture(tmp_path / "turned.jpg", orientation=6)
    with decoded_image_cache(1.0):
        viewed = load_image(path)
        stored = load_image(path, apply_exif=False)  # the frame boxes are annotated in
    assert viewed.size == (24, 40) and stored.size == (40, 24)


def test_a_broken_picture_is_not_remembered(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg")
    with decoded_image_cache(1.0) as cache:
        for _ in range(2):
            with pytest.raises(ImageReadError, match="broken.jpg: cannot read image"):
                load_image(path)
        assert cache.stats()["pictures"] == 0 and cache.stats()["misses"] == 2


def test_off_and_bad_settings():
    with decoded_image_cache(0) as cache:
        assert cache is None and active_cache() is None
    with pytest.raises(ValueError, match="train.image_cache_mb must be >= 0"):
        TrainConfig(image_cache_mb=-1)
