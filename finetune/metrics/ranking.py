"""Hit-at-K of a scored list where one or more entries are correct, with ties handled exactly.

The original retrieval evaluation sorts with ``np.argsort`` and so breaks ties in whatever order
the sort happens to leave them. Ties are not rare here: every pair outside the re-ranked top-k
scores exactly -100, and an untrained head often scores everything alike. A fixed tie order
would reward whichever items happen to come first. Instead a tie is counted as a uniformly
random order of the tied items and the hit is its exact probability; with distinct scores this
is the plain 0/1 hit of the original, and with all scores equal it is the chance level.

Rank of a row = position of its best-ranked correct entry (0-based), as in ALBEF/X-VLM.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

TIES = ("expected", "pessimistic")

# Rows are processed in blocks so that the boolean masks of a 5k x 25k score matrix never exist
# all at once.
_BLOCK_ELEMENTS = 1 << 24


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def prob_first_correct_within(above: np.ndarray, tied_wrong: np.ndarray, tied_correct: np.ndarray,
                              k: int, ties: str = "expected") -> np.ndarray:
    """P(rank < k) per row, where ``above`` wrong entries score strictly higher than the best
    correct entry, and that best score is shared by ``tied_wrong`` wrong and ``tied_correct``
    (>= 1) correct entries.

    Under a random order of the tie group, the number W of wrong entries placed before the first
    correct one has P(W >= t) = prod_{u<t} (g - u) / (g + m - u)  (g wrong, m correct), and the
    row hits iff above + W < k.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    above = np.asarray(above, dtype=np.int64)
    g = np.asarray(tied_wrong, dtype=np.int64)
    m = np.asarray(tied_correct, dtype=np.int64)
    if ties == "pessimistic":
        return (above + g < k).astype(np.float64)
    # Beyond t = g + 1 the product is already 0; capping keeps every denominator >= m >= 1.
    t = np.minimum(np.clip(k - above, 0, None), g + 1)
    p_at_least = np.ones(above.shape, dtype=np.float64)
    for u in range(int(t.max(initial=0))):
        active = u < t
        factor = np.maximum(g - u, 0) / np.maximum(g + m - u, 1)
        p_at_least = np.where(active, p_at_least * factor, p_at_least)
    return 1.0 - p_at_least


def hit_rates(scores: np.ndarray, correct_rows: Callable[[int, int], np.ndarray],
              ks: Sequence[int], ties: str, what: str) -> np.ndarray:
    """Mean over rows of P(rank < k) for each k; ``correct_rows(start, stop)`` gives the boolean
    correctness of rows start:stop (built per block, so callers need not materialise it)."""
    if scores.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D score matrix, got shape {tuple(scores.shape)}")
    n_rows, n_cols = scores.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"{what}: empty score matrix {tuple(scores.shape)}")
    if np.isnan(scores).any():
        row = int(np.argwhere(np.isnan(scores))[0, 0])
        raise ValueError(f"{what}: scores contain NaN (first in row {row})")
    totals = np.zeros(len(ks), dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n_cols)
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        s = scores[start:stop]
        c = np.asarray(correct_rows(start, stop), dtype=bool)
        if c.shape != s.shape:
            raise ValueError(f"{what}: correctness rows have shape {c.shape}, scores {s.shape}")
        n_correct = c.sum(axis=1)
        if (n_correct == 0).any():
            row = start + int(np.argmin(n_correct))
            raise ValueError(f"{what}: row {row} has no correct entry, so its rank is undefined")
        best = np.where(c, s, -np.inf).max(axis=1, keepdims=True)
        # A correct entry at -inf still ties with itself; `best` is then -inf and == holds.
        at_best = s == best
        above = (~c & (s > best)).sum(axis=1)
        tied_wrong = (~c & at_best).sum(axis=1)
        tied_correct = (c & at_best).sum(axis=1)
        for i, k in enumerate(ks):
            totals[i] += prob_first_correct_within(above, tied_wrong, tied_correct, k, ties).sum()
    return totals / n_rows
