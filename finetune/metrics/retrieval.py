"""Image-text retrieval recall, in the ALBEF/X-VLM convention (values in percent).

- image -> text: an image's rank is the rank of the best-ranked of its captions;
- text -> image: a caption's rank is the rank of its image;
- R@K = 100 * share of queries with rank < K; ``*_r_mean`` = mean over the K's, ``r_mean`` = mean
  of the two directions. Key names are those of the original ``itm_eval``.

``consistent_recall`` is the same measure with a correctness matrix instead of ids: a retrieved
caption counts when it is true of the picture (not only when it was written for it), which is
the fair measure on a synthetic world where many captions describe several pictures.
``recall_chance`` / ``retrieval_chance`` give the exact R@K of a uniformly random ranking.
Ties between scores are resolved as explained in ``ranking``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._arrays import as_numpy
from .ranking import check_ks, hit_rates, prob_first_correct_within

DEFAULT_KS = (1, 5, 10)


def _recall_dict(txt_hits: np.ndarray, img_hits: np.ndarray, ks: tuple[int, ...]) -> dict:
    result = {}
    for k, hit in zip(ks, txt_hits):
        result[f"txt_r{k}"] = 100.0 * float(hit)
    for k, hit in zip(ks, img_hits):
        result[f"img_r{k}"] = 100.0 * float(hit)
    result["txt_r_mean"] = 100.0 * float(np.mean(txt_hits))
    result["img_r_mean"] = 100.0 * float(np.mean(img_hits))
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def _score_matrices(scores_i2t, scores_t2i):
    # Float inputs keep their precision: a COCO 5k x 25k float32 matrix is 0.5 GB, not 1 GB.
    s_i2t = as_numpy(scores_i2t, "scores_i2t")
    s_t2i = as_numpy(scores_t2i, "scores_t2i")
    s_i2t = s_i2t if s_i2t.dtype.kind == "f" else s_i2t.astype(np.float64)
    s_t2i = s_t2i if s_t2i.dtype.kind == "f" else s_t2i.astype(np.float64)
    if s_i2t.ndim != 2 or s_t2i.ndim != 2:
        raise ValueError(f"scores_i2t and scores_t2i must be 2-D, got shapes {s_i2t.shape} and {s_t2i.shape}")
    if s_t2i.shape != s_i2t.shape[::-1]:
        raise ValueError(f"scores_i2t has shape {s_i2t.shape} (images, texts) but scores_t2i has "
                         f"{s_t2i.shape}; expected {s_i2t.shape[::-1]} (texts, images)")
    return s_i2t, s_t2i


def _check_ids(txt2img, img2txt, n_img: int, n_txt: int):
    txt2img = as_numpy(txt2img, "txt2img")
    if txt2img.shape != (n_txt,) or txt2img.dtype.kind not in "iu":
        raise ValueError(f"txt2img must hold one integer image index per text ({n_txt}), "
                         f"got shape {txt2img.shape} dtype {txt2img.dtype}")
    if n_txt and (txt2img.min() < 0 or txt2img.max() >= n_img):
        raise ValueError(f"txt2img: image indices must lie in [0, {n_img}), got "
                         f"[{txt2img.min()}, {txt2img.max()}]")
    if len(img2txt) != n_img:
        raise ValueError(f"img2txt has {len(img2txt)} entries but there are {n_img} images")
    lists = []
    for i, texts in enumerate(img2txt):
        texts = [int(t) for t in texts]
        if not texts:
            raise ValueError(f"img2txt[{i}] is empty: every image needs at least one caption")
        if min(texts) < 0 or max(texts) >= n_txt:
            raise ValueError(f"img2txt[{i}]: text indices must lie in [0, {n_txt}), got {texts}")
        lists.append(texts)
    return txt2img.astype(np.int64), lists


def retrieval_recall(scores_i2t, scores_t2i, txt2img, img2txt, ks: Sequence[int] = DEFAULT_KS,
                     ties: str = "expected") -> dict:
    """R@K in both directions.

    scores_i2t: (n_img, n_txt); scores_t2i: (n_txt, n_img); txt2img: (n_txt,) image index of
    each text; img2txt: per image, the list of its text indices. ``ties``: "expected" (exact
    expectation over random tie orders) or "pessimistic" (tied wrong items rank first).
    Returns {"txt_r1", "txt_r5", "txt_r10", "img_r1", ..., "txt_r_mean", "img_r_mean", "r_mean"}.
    """
    ks = check_ks(ks)
    s_i2t, s_t2i = _score_matrices(scores_i2t, scores_t2i)
    n_img, n_txt = s_i2t.shape
    txt2img, img2txt = _check_ids(txt2img, img2txt, n_img, n_txt)

    def image_rows(start, stop):
        rows = np.zeros((stop - start, n_txt), dtype=bool)
        for r, texts in enumerate(img2txt[start:stop]):
            rows[r, texts] = True
        return rows

    def text_rows(start, stop):
        rows = np.zeros((stop - start, n_img), dtype=bool)
        rows[np.arange(stop - start), txt2img[start:stop]] = True
        return rows

    txt = hit_rates(s_i2t, image_rows, ks, ties, "image->text")
    img = hit_rates(s_t2i, text_rows, ks, ties, "text->image")
    return _recall_dict(txt, img, ks)


def _correct_matrix(correct, n_img: int | None = None, n_txt: int | None = None) -> np.ndarray:
    c = as_numpy(correct, "correct")
    if c.ndim != 2:
        raise ValueError(f"correct must be a 2-D (images, texts) matrix, got shape {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError("correct must be boolean (or 0/1)")
        c = c.astype(bool)
    if n_img is not None and c.shape != (n_img, n_txt):
        raise ValueError(f"correct has shape {c.shape} but the scores are for "
                         f"({n_img} images, {n_txt} texts)")
    return c


def consistent_recall(scores_i2t, scores_t2i, correct, ks: Sequence[int] = DEFAULT_KS,
                      ties: str = "expected") -> dict:
    """R@K where ``correct[i, j]`` (n_img, n_txt) says caption j is true of image i: an image's
    rank is that of its best-ranked true caption, a caption's rank that of its best-ranked
    image it is true of. Same keys as ``retrieval_recall``."""
    ks = check_ks(ks)
    s_i2t, s_t2i = _score_matrices(scores_i2t, scores_t2i)
    c = _correct_matrix(correct, *s_i2t.shape)
    txt = hit_rates(s_i2t, lambda a, b: c[a:b], ks, ties, "image->text")
    img = hit_rates(s_t2i, lambda a, b: c.T[a:b], ks, ties, "text->image")
    return _recall_dict(txt, img, ks)


def _chance_hits(n_correct: np.ndarray, n_items: int, ks: tuple[int, ...], what: str) -> np.ndarray:
    if (n_correct == 0).any():
        raise ValueError(f"{what}: row {int(np.argmin(n_correct))} has no correct entry, "
                         "so its rank is undefined")
    # A random ranking is one big tie: nothing above, n - m wrong and m correct items tied.
    zeros = np.zeros_like(n_correct)
    return np.array([prob_first_correct_within(zeros, n_items - n_correct, n_correct, k).mean()
                     for k in ks])


def recall_chance(correct, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Exact expected R@K of a uniformly random ranking under the correctness matrix ``correct``
    (n_img, n_txt): a row with m correct of n entries hits within K with probability
    1 - C(n-m, K) / C(n, K). Same keys as ``retrieval_recall``."""
    ks = check_ks(ks)
    c = _correct_matrix(correct)
    n_img, n_txt = c.shape
    txt = _chance_hits(c.sum(axis=1), n_txt, ks, "image->text")
    img = _chance_hits(c.sum(axis=0), n_img, ks, "text->image")
    return _recall_dict(txt, img, ks)


def retrieval_chance(txt2img, img2txt, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Expected R@K of a random ranking for the id-based protocol of ``retrieval_recall``."""
    ks = check_ks(ks)
    n_img = len(img2txt)
    n_txt = len(as_numpy(txt2img, "txt2img"))
    _, lists = _check_ids(txt2img, img2txt, n_img, n_txt)
    per_image = np.array([len(set(texts)) for texts in lists])
    txt = _chance_hits(per_image, n_txt, ks, "image->text")
    img = _chance_hits(np.ones(n_txt, dtype=np.int64), n_img, ks, "text->image")
    return _recall_dict(txt, img, ks)
