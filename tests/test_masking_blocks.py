"""BEiT block-wise image masking: exactly num_masks patches, every masked patch inside an allowed
block (area >= min_block, aspect within range), deterministic per seed, scaled small-grid variant."""
import math

import numpy as np
import pytest

from xfm.masking import BlockMasker, block_masker_for


def covered_by_blocks(mask2d: np.ndarray, min_block: int, aspect=(0.3, 1 / 0.3)) -> np.ndarray:
    """Cells of ``mask2d`` that lie in some fully masked rectangle of area >= min_block with
    height/width in ``aspect`` (independent of BlockMasker's own bookkeeping)."""
    g = mask2d.shape[0]
    full = np.zeros((g + 1, g + 1), dtype=np.int64)
    full[1:, 1:] = np.cumsum(np.cumsum(mask2d, 0), 1)
    covered = np.zeros_like(mask2d)
    for h in range(1, g + 1):
        for w in range(1, g + 1):
            if h * w < min_block or not aspect[0] - 1e-9 <= h / w <= aspect[1] + 1e-9:
                continue
            for top in range(g - h + 1):
                for left in range(g - w + 1):
                    inside = (full[top + h, left + w] - full[top, left + w]
                              - full[top + h, left] + full[top, left])
                    if inside == h * w:
                        covered[top:top + h, left:left + w] = True
    return covered


def components(mask2d):
    """4-connected components of the masked cells (sizes)."""
    g = mask2d.shape[0]
    seen = np.zeros_like(mask2d)
    sizes = []
    for r in range(g):
        for c in range(g):
            if mask2d[r, c] and not seen[r, c]:
                stack, size = [(r, c)], 0
                seen[r, c] = True
                while stack:
                    y, x = stack.pop()
                    size += 1
                    for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                        if 0 <= ny < g and 0 <= nx < g and mask2d[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                sizes.append(size)
    return sizes


def test_beit_setting_exact_count_and_blocks():
    masker = BlockMasker(14, 75, min_block=16)
    frequency = np.zeros(196)
    distinct = set()
    for seed in range(300):
        mask = masker(np.random.default_rng(seed))
        assert mask.shape == (196,) and mask.dtype == bool
        assert mask.sum() == 75, seed
        grid = mask.reshape(14, 14)
        assert (covered_by_blocks(grid, 16) == grid).all(), f"seed {seed}: patches outside blocks"
        assert min(components(grid)) >= 16
        frequency += mask
        distinct.add(mask.tobytes())
    assert len(distinct) == 300  # varied masks
    assert frequency.min() > 0  # every patch gets masked sometimes (no positional blind spot)
    # block-like, not scattered: on average a few large regions, as in BEiT
    n_regions = np.mean([len(components(masker(np.random.default_rng(s)).reshape(14, 14)))
                         for s in range(50)])
    assert 1.0 <= n_regions <= 4.5


def test_checker_rejects_scattered_patches():
    """Control: the block check above does fail on a random (non-block) mask."""
    rng = np.random.default_rng(0)
    mask = np.zeros(196, dtype=bool)
    mask[rng.choice(196, 75, replace=False)] = True
    grid = mask.reshape(14, 14)
    assert not (covered_by_blocks(grid, 16) == grid).all()


def test_deterministic_per_seed():
    masker = BlockMasker(14, 75)
    a = masker(np.random.default_rng(123))
    b = masker(np.random.default_rng(123))
    assert np.array_equal(a, b)


def test_small_grid_variant():
    masker = block_masker_for(4)
    assert (masker.grid, masker.num_masks, masker.min_block) == (4, 6, 4)
    seen = set()
    for seed in range(300):
        mask = masker(np.random.default_rng(seed))
        assert mask.shape == (16,) and mask.sum() == 6
        grid = mask.reshape(4, 4)
        assert (covered_by_blocks(grid, 4) == grid).all()
        seen.add(mask.tobytes())
    assert len(seen) > 10


@pytest.mark.parametrize("grid", [7, 8, 14, 16])
def test_scaled_defaults(grid):
    masker = block_masker_for(grid)
    assert masker.num_masks == round(75 / 196 * grid * grid)
    if grid == 14:
        assert (masker.num_masks, masker.min_block) == (75, 16)
    for seed in range(40):
        mask = masker(np.random.default_rng(seed)).reshape(grid, grid)
        assert mask.sum() == masker.num_masks
        assert (covered_by_blocks(mask, masker.min_block) == mask).all()


def test_fallback_path_is_still_exact():
    masker = BlockMasker(14, 75, restarts=0)  # every draw takes the fallback
    for seed in range(20):
        mask = masker(np.random.default_rng(seed)).reshape(14, 14)
        assert mask.sum() == 75 and (covered_by_blocks(mask, 16) == mask).all()


def test_infeasible_settings_are_clear_errors():
    with pytest.raises(ValueError, match="exactly 17"):
        BlockMasker(14, 17, min_block=16)  # no union of >=16-patch rectangles has 17 patches
    with pytest.raises(ValueError, match="num_masks"):
        BlockMasker(4, 17)
    with pytest.raises(ValueError, match="min_block"):
        BlockMasker(14, 10, min_block=16)
    with pytest.raises(ValueError, match="aspect"):
        BlockMasker(14, 75, aspect=(2.0, 1.0))


def test_zero_masks():
    assert not BlockMasker(14, 0)(np.random.default_rng(0)).any()


def test_speed_is_fine_for_loader_workers():
    import time
    masker = BlockMasker(14, 75)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(200):
        masker(rng)
    per_call = (time.perf_counter() - start) / 200
    assert per_call < 0.01, f"{per_call * 1e3:.2f} ms per mask"
    assert math.isfinite(per_call)
