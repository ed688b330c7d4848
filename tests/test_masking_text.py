"""Text MLM masking: whole words for both tokenizer kinds, rates, cap, 80/10/10, spans, specials."""
import math
import pickle

import numpy as np
import pytest
import torch

from fixtures_tokenizer import make_sentences
from xfm.masking import (FUSION_MLM, IGNORE_INDEX, TEXT_MLM, TextMasker, WordBoundaries,
                         fusion_mlm_masker, text_mlm_masker)

KINDS = ["bpe", "wordpiece"]


@pytest.fixture(scope="module", params=KINDS)
def tok(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


@pytest.fixture(scope="module")
def boundaries(tok):
    return WordBoundaries.from_tokenizer(tok)


@pytest.fixture(scope="module")
def encoded(tok):
    """(ids, word_ids) of held-out sentences (another seed than the tokenizer's corpus)."""
    sentences = make_sentences(300, seed=11)
    out = []
    for s in sentences:
        enc = tok(s)
        out.append((np.array(enc.input_ids), enc.word_ids()))
    return out


def _words(word_ids, ids, special):
    """token positions of every word per the tokenizer (specials incl. [UNK] excluded)."""
    words = {}
    for pos, w in enumerate(word_ids):
        if w is not None and not special[ids[pos]]:
            words.setdefault(w, []).append(pos)
    return list(words.values())


def _sigma_bound(p, n, k=5.0):
    return k * math.sqrt(p * (1 - p) / n)


def test_kind_detected(tok, boundaries):
    expected = "bpe" if "Roberta" in type(tok).__name__ else "wordpiece"
    assert boundaries.kind == expected
    assert boundaries.mask_token_id == tok.mask_token_id
    assert boundaries.special[tok.all_special_ids].all()
    assert boundaries.special.sum() == len(set(tok.all_special_ids))


def test_word_index_matches_tokenizer_word_ids(boundaries, encoded):
    multi_piece_words = 0
    for ids, word_ids in encoded:
        ours = boundaries.word_index(ids)
        groups = {}
        for pos, w in enumerate(word_ids):
            if boundaries.special[ids[pos]]:
                assert ours[pos] == -1
                continue
            groups.setdefault(w, set()).add(int(ours[pos]))
        # same partition: one of our words per tokenizer word, and no two share one
        assert all(len(v) == 1 for v in groups.values()), (ids, word_ids, ours)
        assert len({next(iter(v)) for v in groups.values()}) == len(groups)
        multi_piece_words += sum(word_ids.count(w) > 1 for w in set(word_ids) if w is not None)
    assert multi_piece_words > 200  # the small vocabularies really split words


def test_bpe_word_boundaries_beyond_leading_space(bpe_tokenizer):
    """RoBERTa words need more than the Ġ marker: first word, punctuation, digits, contractions."""
    wb = WordBoundaries.from_tokenizer(bpe_tokenizer)
    enc = bpe_tokenizer("Zebra's refrigerator,broccoli 2024giraffe!")
    ours = wb.word_index(np.array(enc.input_ids))
    ref = [-1 if w is None else w for w in enc.word_ids()]
    assert [a == b for a, b in zip(ours[1:], ours[:-1])] == [a == b for a, b in zip(ref[1:], ref[:-1])]
    assert len(set(ours.tolist()) - {-1}) == len(set(ref) - {-1}) >= 7


@pytest.mark.parametrize("dir_fixture", ["bpe_tokenizer_dir", "wordpiece_tokenizer_dir"])
def test_added_tokens_are_words_of_their_own(request, dir_fixture):
    from xfm.tokenizer import load_tokenizer

    tok = load_tokenizer(request.getfixturevalue(dir_fixture))  # a private copy to modify
    tok.add_tokens(["xobjx"])
    wb = WordBoundaries.from_tokenizer(tok)
    added_id = tok.convert_tokens_to_ids("xobjx")
    assert not wb.special[added_id] and wb.starts_word[added_id]
    for text in ["refrigeratorxobjx giraffe", "a xobjxzebra, isn't it", "xobjx"]:
        enc = tok(text)
        ours = wb.word_index(np.array(enc.input_ids))
        ref = [-1 if w is None else w for w in enc.word_ids()]
        assert [a == b for a, b in zip(ours[1:], ours[:-1])] == \
            [a == b for a, b in zip(ref[1:], ref[:-1])], (tok.convert_ids_to_tokens(enc.input_ids), ours, ref)


@pytest.mark.parametrize("factory", [text_mlm_masker, fusion_mlm_masker])
def test_whole_word_masking_masks_whole_words_only(boundaries, encoded, factory):
    masker = factory(boundaries)
    rng = np.random.default_rng(0)
    masked_multi = 0
    for ids, word_ids in encoded:
        _, labels = masker(ids, rng)
        selected = labels != IGNORE_INDEX
        for positions in _words(word_ids, ids, boundaries.special):
            flags = selected[positions]
            assert flags.all() or not flags.any(), (
                f"word at {positions} partly masked: ids {ids.tolist()} labels {labels.tolist()}")
            masked_multi += bool(flags.all() and len(positions) > 1)
    assert masked_multi > 50  # multi-piece words were masked, as whole words


def test_token_level_masking_does_cut_words(boundaries, encoded):
    """Control for the test above: without whole_word, words are cut (the check can fail)."""
    masker = fusion_mlm_masker(boundaries, whole_word=False)
    rng = np.random.default_rng(0)
    partial = 0
    for ids, word_ids in encoded:
        selected = masker(ids, rng)[1] != IGNORE_INDEX
        for positions in _words(word_ids, ids, boundaries.special):
            flags = selected[positions]
            partial += bool(flags.any() and not flags.all())
    assert partial > 20


def test_specials_never_masked_or_inserted(tok, boundaries):
    rng = np.random.default_rng(1)
    masker = TextMasker(boundaries, mask_prob=0.9, max_masks=100, random_frac=0.5, mask_frac=0.3)
    pairs = make_sentences(200, seed=3)
    enc = tok(pairs[:100], pairs[100:], padding="max_length", max_length=96, truncation=True)
    special_ids = set(tok.all_special_ids)
    inserted = 0
    for row in enc.input_ids:
        ids = np.array(row)
        masked, labels = masker(ids, rng)
        is_special = np.isin(ids, list(special_ids))
        assert (labels[is_special] == IGNORE_INDEX).all()
        assert (masked[is_special] == ids[is_special]).all()
        changed = masked != ids
        assert not (changed & (labels == IGNORE_INDEX)).any()  # only selected positions change
        replaced = masked[changed & (masked != tok.mask_token_id)]
        assert not np.isin(replaced, list(special_ids)).any()
        inserted += replaced.size
    assert inserted > 100


@pytest.mark.parametrize("rates", [TEXT_MLM, FUSION_MLM])
def test_rate_and_cap(boundaries, rates):
    rng = np.random.default_rng(2)
    random_ids = boundaries.random_ids
    cls_id, sep_id = np.flatnonzero(boundaries.special)[:2]
    for whole_word in (False, True):
        masker = TextMasker(boundaries, whole_word=whole_word, **rates)
        for n in (4, 10, 30, 60, 126):
            budget = min(rates["max_masks"], max(1, round(n * rates["mask_prob"])))
            counts = []
            for _ in range(60):
                body = rng.choice(random_ids, size=n)
                ids = np.concatenate([[cls_id], body, [sep_id]])
                counts.append(int((masker(ids, rng)[1] != IGNORE_INDEX).sum()))
            counts = np.array(counts)
            assert counts.max() <= rates["max_masks"]  # the hard cap
            assert counts.min() >= 1  # every sample has something to predict
            if whole_word:
                # words are never cut: a word that does not fit the target is skipped, unless
                # no word fits at all (then one word, so short sequences may get more)
                if budget >= 5:
                    assert 0.8 * budget <= counts.mean() <= budget, (n, budget, counts.mean())
            else:
                assert (counts == budget).all(), (n, budget, counts)


def test_rate_on_real_captions(boundaries, encoded):
    masker = text_mlm_masker(boundaries)
    rng = np.random.default_rng(3)
    selected = real = 0
    for ids, _ in encoded:
        selected += int((masker(ids, rng)[1] != IGNORE_INDEX).sum())
        real += int((~boundaries.special[ids]).sum())
    assert 0.13 <= selected / real <= 0.19


def test_80_10_10_split(boundaries):
    masker = TextMasker(boundaries, mask_prob=0.5, max_masks=64, whole_word=False)
    rng = np.random.default_rng(4)
    cls_id, sep_id = np.flatnonzero(boundaries.special)[:2]
    mask_id = boundaries.mask_token_id
    n_sel = n_mask = n_changed_other = n_same = 0
    for _ in range(400):
        ids = np.concatenate([[cls_id], rng.choice(boundaries.random_ids, size=100), [sep_id]])
        masked, labels = masker(ids, rng)
        sel = labels != IGNORE_INDEX
        n_sel += int(sel.sum())
        n_mask += int((masked[sel] == mask_id).sum())
        n_changed_other += int(((masked[sel] != mask_id) & (masked[sel] != ids[sel])).sum())
        n_same += int((masked[sel] == ids[sel]).sum())
    assert n_sel == 400 * 50
    # a random replacement equals the original with probability 1/|random ids|
    p_keep_by_chance = 0.1 / boundaries.random_ids.size
    for observed, p in ((n_mask, 0.8), (n_changed_other, 0.1 - p_keep_by_chance),
                        (n_same, 0.1 + p_keep_by_chance)):
        assert abs(observed / n_sel - p) < _sigma_bound(p, n_sel), (observed / n_sel, p)


def test_span_rate(boundaries):
    rng = np.random.default_rng(5)
    cls_id, sep_id = np.flatnonzero(boundaries.special)[:2]
    masker = TextMasker(boundaries, mask_prob=0.15, max_masks=20, whole_word=False)
    picks = []
    for _ in range(1500):
        ids = np.concatenate([[cls_id], rng.choice(boundaries.random_ids, size=100), [sep_id]])
        picks += masker.select(ids, rng)[1]
    picks = np.array(picks)
    spans = picks >= 2
    assert abs(spans.mean() - 0.2) < _sigma_bound(0.2, picks.size)
    assert set(picks.tolist()) == {1, 2, 3}
    assert abs((picks[spans] == 2).mean() - 0.5) < _sigma_bound(0.5, int(spans.sum()))
    # visible in the output: runs of >= 2 consecutive masked tokens are common with spans on
    # and rare without
    def multi_token_run_share(span_prob):
        m = TextMasker(boundaries, 0.15, 20, span_prob=span_prob, whole_word=False)
        runs = []
        for _ in range(300):
            ids = np.concatenate([[cls_id], rng.choice(boundaries.random_ids, size=100), [sep_id]])
            sel = m(ids, rng)[1] != IGNORE_INDEX
            edges = np.flatnonzero(np.diff(np.concatenate([[0], sel.astype(int), [0]])))
            runs += (edges[1::2] - edges[::2]).tolist()
        return np.mean(np.array(runs) >= 2)
    assert multi_token_run_share(0.2) > multi_token_run_share(0.0) + 0.1


def test_numpy_and_torch_inputs_agree_and_resume(boundaries, encoded):
    masker = text_mlm_masker(boundaries)
    ids = encoded[0][0]
    a_ids, a_lab = masker(ids, np.random.default_rng(42))
    b_ids, b_lab = masker(torch.from_numpy(ids), np.random.default_rng(42))
    assert isinstance(b_ids, torch.Tensor) and b_ids.dtype == torch.long
    assert np.array_equal(a_ids, b_ids.numpy()) and np.array_equal(a_lab, b_lab.numpy())
    c_ids, c_lab = pickle.loads(pickle.dumps(masker))(ids, np.random.default_rng(42))
    assert np.array_equal(a_ids, c_ids) and np.array_equal(a_lab, c_lab)


def test_masker_from_tokenizer_directly(tok, boundaries, encoded):
    ids = encoded[1][0]
    a = TextMasker(tok, **TEXT_MLM)(ids, np.random.default_rng(9))
    b = TextMasker(boundaries, **TEXT_MLM)(ids, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(TypeError, match="WordBoundaries"):
        TextMasker(object(), **TEXT_MLM)


def test_only_specials_gives_no_labels(boundaries):
    specials = np.flatnonzero(boundaries.special)
    masked, labels = text_mlm_masker(boundaries)(specials, np.random.default_rng(0))
    assert (labels == IGNORE_INDEX).all() and np.array_equal(masked, specials)


def test_bad_inputs_are_clear_errors(boundaries):
    masker = text_mlm_masker(boundaries)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="out of range"):
        masker(np.array([0, boundaries.vocab_size + 5]), rng)
    with pytest.raises(ValueError, match="1-D"):
        masker(np.zeros((2, 3), dtype=np.int64), rng)
    with pytest.raises(ValueError, match="integers"):
        masker(np.array([0.5, 1.0]), rng)
    with pytest.raises(ValueError, match="mask_prob"):
        TextMasker(boundaries, mask_prob=0.0, max_masks=5)
    with pytest.raises(ValueError, match="mask_frac"):
        TextMasker(boundaries, mask_prob=0.1, max_masks=5, mask_frac=0.8, random_frac=0.3)


def _synthetic_wordpiece(n_starts=8, n_cont=7):
    """ids 0-4 specials ([PAD] [UNK] [CLS] [SEP] [MASK]), then word starts, then ``##`` pieces."""
    size = 5 + n_starts + n_cont
    special = np.zeros(size, dtype=bool)
    special[:5] = True
    starts = np.zeros(size, dtype=bool)
    starts[5:5 + n_starts] = True
    zeros = np.zeros(size, dtype=np.int8)
    return WordBoundaries(kind="wordpiece", starts_word=starts, first_class=zeros, last_class=zeros,
                          special=special, mask_token_id=4)


def test_whole_word_spans_count_tokens_then_widen_to_words():
    """A span is k tokens widened to word boundaries (X-VLM), not k words: in a text of 3-piece
    words every span of 2 or 3 tokens is exactly one word; in a text of 1-piece words a span of k
    tokens is k words."""
    wb = _synthetic_wordpiece()
    rng = np.random.default_rng(6)
    masker = TextMasker(wb, mask_prob=0.15, max_masks=20, span_prob=1.0, span_lengths=(2, 3))
    three_piece = [5, 13, 14] * 20  # 20 words of 3 pieces: budget 9 = three whole words
    n_picks = n_selected = 0
    for _ in range(200):
        ids = np.array([2] + three_piece + [3])
        selected, picks = masker.select(ids, rng)
        assert set(picks) <= {2, 3}
        assert len(picks) * 3 == selected.sum() == 9, (picks, selected.astype(int))
        n_picks += len(picks)
        n_selected += int(selected.sum())
    assert n_picks == 600
    one_piece = TextMasker(wb, mask_prob=0.5, max_masks=40, span_prob=1.0, span_lengths=(3,))
    for _ in range(100):
        ids = np.array([2] + [6] * 30 + [3])
        selected, picks = one_piece.select(ids, rng)
        # 15 tokens in picks of 3 one-piece words (a few cut short by their chosen neighbours)
        assert selected.sum() == 15 and 5 <= len(picks) <= 8, picks


def test_paper_rates_are_the_defaults(boundaries):
    """docs/METHOD.md: text MLM 15% (max 20), 80/10/10, spans of 2-3 tokens with p 0.2, whole
    words; fusion MLM 50% (max 15)."""
    assert TEXT_MLM == {"mask_prob": 0.15, "max_masks": 20}
    assert FUSION_MLM == {"mask_prob": 0.5, "max_masks": 15}
    text, fusion = text_mlm_masker(boundaries), fusion_mlm_masker(boundaries)
    assert (text.mask_prob, text.max_masks, fusion.mask_prob, fusion.max_masks) == (0.15, 20, 0.5, 15)
    for m in (text, fusion):
        assert (m.mask_frac, m.random_frac, m.span_prob, tuple(m.span_lengths), m.whole_word) == \
            (0.8, 0.1, 0.2, (2, 3), True)


def test_bpe_table_rule_without_pre_tokenizer_matches_word_ids(bpe_tokenizer):
    """The fallback when no pre-tokenizer can be used (a normalizer in front of it, bytes that are
    not UTF-8): character-class changes, as the GPT-2 regex splits, still agree with word_ids()."""
    from dataclasses import replace

    wb = replace(WordBoundaries.from_tokenizer(bpe_tokenizer), pre_tokenizer=None)
    checked = 0
    for text in make_sentences(200, seed=12) + ["Zebra's refrigerator,broccoli 2024giraffe!"]:
        enc = bpe_tokenizer(text)
        ours = wb.word_index(np.array(enc.input_ids))
        ref = [-1 if w is None else w for w in enc.word_ids()]
        assert [a == b for a, b in zip(ours[1:], ours[:-1])] == \
            [a == b for a, b in zip(ref[1:], ref[:-1])], (text, bpe_tokenizer.convert_ids_to_tokens(enc.input_ids))
        checked += 1
    assert checked == 201
