"""Hard-negative sampling: never a positive, follows the softmax weights, one batched draw."""
import pytest
import torch

from xfm import hard_negatives
from xfm.hard_negatives import NoNegativeError, sample_hard_negatives


def _chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; p-value from the regularised upper incomplete gamma."""
    n = counts.sum()
    expected = probs / probs.sum() * n
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         stat.double() / 2.0))


def _draw_counts(sim_i2t, sim_t2i, image_ids, draws, seed=0):
    b = sim_i2t.shape[0]
    gen = torch.Generator().manual_seed(seed)
    img_counts = torch.zeros(b, b, dtype=torch.float64)
    txt_counts = torch.zeros(b, b, dtype=torch.float64)
    rows = torch.arange(b)
    for _ in range(draws):
        neg_img, neg_txt = sample_hard_negatives(sim_i2t, sim_t2i, image_ids, generator=gen)
        img_counts[rows, neg_img] += 1
        txt_counts[rows, neg_txt] += 1
    return img_counts, txt_counts


def test_never_picks_positive_with_repeated_ids():
    torch.manual_seed(0)
    b = 16
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 8])
    # make same-image columns the most similar ones so a bug would pick them often
    same = ids[:, None] == ids[None, :]
    sim = torch.randn(b, b) + 8.0 * same.float()
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        neg_img, neg_txt = sample_hard_negatives(sim, sim.t().contiguous(), ids, generator=gen)
        assert neg_img.dtype == torch.long and neg_img.shape == (b,)
        assert not (ids[neg_img] == ids).any()
        assert not (ids[neg_txt] == ids).any()


def test_never_picks_diagonal_without_ids():
    b = 8
    sim = 20.0 * torch.eye(b)  # positive dominates the softmax: negatives only via the floor
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        neg_img, neg_txt = sample_hard_negatives(sim, sim, generator=gen)
        assert not (neg_img == torch.arange(b)).any()
        assert not (neg_txt == torch.arange(b)).any()


@pytest.mark.parametrize("with_ids", [False, True])
def test_follows_softmax_weights(with_ids):
    torch.manual_seed(3)
    b = 6
    sim_i2t = 1.5 * torch.randn(b, b)
    sim_t2i = 1.5 * torch.randn(b, b)
    ids = torch.tensor([0, 1, 1, 2, 3, 4]) if with_ids else None
    positives = (ids[:, None] == ids[None, :]) if with_ids else torch.eye(b, dtype=torch.bool)
    draws = 3000
    img_counts, txt_counts = _draw_counts(sim_i2t, sim_t2i, ids, draws)
    assert (img_counts[positives] == 0).all() and (txt_counts[positives] == 0).all()
    for counts, sim in ((img_counts, sim_t2i), (txt_counts, sim_i2t)):
        weights = torch.softmax(sim.double(), 1) + 1e-5
        for i in range(b):
            keep = ~positives[i]
            p = _chi_square_pvalue(counts[i, keep], weights[i, keep])
            assert p > 1e-3, f"row {i}: counts {counts[i].tolist()} do not follow the softmax (p={p})"
            # the test has power: the same counts clearly reject a uniform choice
            p_uniform = _chi_square_pvalue(counts[i, keep], torch.ones(int(keep.sum())))
            assert p_uniform < 1e-6


def test_harder_negatives_are_drawn_more_often():
    b = 4
    sim = torch.tensor([[5.0, 4.0, 0.0, -4.0]] * b)
    sim = sim.clone()
    img_counts, _ = _draw_counts(sim, sim, None, 500)
    row = img_counts[0]  # column 0 is the positive of row 0
    assert row[0] == 0 and row[1] > row[2] > row[3]


def test_one_batched_multinomial_per_direction(monkeypatch):
    calls = []
    real = torch.multinomial

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(hard_negatives.torch, "multinomial", counting)
    b = 64
    neg_img, neg_txt = sample_hard_negatives(torch.randn(b, b), torch.randn(b, b))
    assert calls == [(b, b), (b, b)]
    assert neg_img.shape == neg_txt.shape == (b,)


def test_reproducible_with_generator_and_no_grad():
    b = 12
    sim = torch.randn(b, b, requires_grad=True)
    a = sample_hard_negatives(sim, sim.t(), generator=torch.Generator().manual_seed(7))
    c = sample_hard_negatives(sim, sim.t(), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert not a[0].requires_grad


def test_low_precision_logits():
    b = 10
    sim = (30 * torch.randn(b, b)).to(torch.bfloat16)
    neg_img, neg_txt = sample_hard_negatives(sim, sim, generator=torch.Generator().manual_seed(0))
    assert not (neg_img == torch.arange(b)).any() and not (neg_txt == torch.arange(b)).any()


def test_no_negative_is_a_clear_error():
    with pytest.raises(NoNegativeError, match="no negative"):
        sample_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), torch.tensor([5, 5, 5]))
    with pytest.raises(NoNegativeError, match="1 of 1"):
        sample_hard_negatives(torch.randn(1, 1), torch.randn(1, 1))


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="square"):
        sample_hard_negatives(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="sim_t2i"):
        sample_hard_negatives(torch.randn(3, 3), torch.randn(4, 4))
    with pytest.raises(ValueError, match="image_ids has 2 entries"):
        sample_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), torch.tensor([0, 1]))


def test_host_ids_decide_the_no_negative_check_without_reading_the_device_ids(monkeypatch):
    """With ``host_image_ids`` the check reads only them (no device -> host copy of the ids),
    and the draw itself is the same as without them."""
    sim = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 0, 1, 1])
    plain = sample_hard_negatives(sim, sim.t(), ids, generator=torch.Generator().manual_seed(1))
    with_host = sample_hard_negatives(sim, sim.t(), ids, generator=torch.Generator().manual_seed(1),
                                      host_image_ids=ids.clone())
    assert all(torch.equal(a, b) for a, b in zip(plain, with_host))
    # the host copy is what is checked: it says "one picture", so no row has a negative
    with pytest.raises(NoNegativeError):
        sample_hard_negatives(sim, sim.t(), ids, host_image_ids=torch.zeros(4, dtype=torch.long))
    # and the device ids are never copied to the host for the check
    calls = []
    orig = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    sample_hard_negatives(sim, sim.t(), ids, host_image_ids=ids.clone())
    assert not calls


def test_to_device_keeps_host_copies_of_the_ids_it_moves_off_the_host():
    from xfm.runtime.process import to_device

    batch = {"image_ids": torch.tensor([3, 4]), "text_ids": torch.tensor([[1, 2]])}
    moved = to_device(batch, "meta")  # any non-CPU device
    assert moved["image_ids"].device.type == "meta" and moved["text_ids"].device.type == "meta"
    assert torch.equal(moved["image_ids_host"], batch["image_ids"])
    assert "text_ids_host" not in moved
    assert "image_ids_host" not in to_device(batch, "cpu")  # nothing to save on the host itself
