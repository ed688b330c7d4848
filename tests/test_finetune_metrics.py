"""Metric functions of the downstream tasks against hand-computed values and reference rules."""
import itertools
import math

import numpy as np
import pytest
import torch

from xfm.finetune.metrics import (
    GLUE_TASKS, accuracy, average_ranks, box_iou_inclusive, caption_scores, consistent_recall,
    f1_binary, glue_main_metric, glue_metrics, glue_task, grounding_accuracy,
    grounding_accuracy_by_split, matthews_corrcoef, normalize_vqa_answer,
    normalized_cxcywh_to_xywh, pearson, pearson_spearman, ptb_tokenize, recall_chance,
    retrieval_chance, retrieval_recall, spearman, tokenized_caption_sets, topk_accuracy,
    vqa_accuracy, vqa_score)
from xfm.finetune.metrics.ranking import prob_first_correct_within


# ----------------------------------------------------------------------------- retrieval
def _scores_from_orders(orders, n_cols):
    """Row r scores its columns so that they sort exactly as orders[r] (best first)."""
    scores = np.zeros((len(orders), n_cols))
    for r, order in enumerate(orders):
        assert sorted(order) == list(range(n_cols))
        scores[r, order] = np.arange(n_cols, 0, -1)
    return scores


def _five_caption_setup():
    n_img, n_txt = 3, 15
    img2txt = [list(range(5 * i, 5 * i + 5)) for i in range(n_img)]
    txt2img = np.arange(n_txt) // 5
    others = lambda i: [j for j in range(n_txt) if j // 5 != i]
    # image 0: own caption first (rank 0); image 1: three foreign captions first (rank 3);
    # image 2: seven foreign captions first (rank 7).
    orders = [img2txt[0] + others(0),
              others(1)[:3] + [7] + others(1)[3:] + [5, 6, 8, 9],
              others(2)[:7] + [12, 10, 11, 13, 14] + others(2)[7:]]
    s_i2t = _scores_from_orders(orders, n_txt)
    # texts: 9 find their image first, 4 second, 2 third.
    t_ranks = [0] * 9 + [1] * 4 + [2] * 2
    t_orders = []
    for j, rank in enumerate(t_ranks):
        wrong = [i for i in range(n_img) if i != txt2img[j]]
        t_orders.append(wrong[:rank] + [int(txt2img[j])] + wrong[rank:])
    s_t2i = _scores_from_orders(t_orders, n_img)
    return s_i2t, s_t2i, txt2img, img2txt


def test_retrieval_recall_five_captions_per_image_hand_values():
    s_i2t, s_t2i, txt2img, img2txt = _five_caption_setup()
    r = retrieval_recall(s_i2t, s_t2i, txt2img, img2txt)
    expected = {"txt_r1": 100 / 3, "txt_r5": 200 / 3, "txt_r10": 100.0,
                "img_r1": 60.0, "img_r5": 100.0, "img_r10": 100.0}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value), key
    assert r["txt_r_mean"] == pytest.approx(200 / 3)
    assert r["img_r_mean"] == pytest.approx(260 / 3)
    assert r["r_mean"] == pytest.approx(230 / 3)
    assert set(r) == {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10",
                      "txt_r_mean", "img_r_mean", "r_mean"}


def _argsort_ranks(scores, correct_sets):
    """The original protocol: sort descending, rank = position of the best correct item."""
    ranks = []
    for row, correct in zip(scores, correct_sets):
        order = list(np.argsort(-row, kind="stable"))
        ranks.append(min(order.index(c) for c in correct))
    return np.array(ranks)


def test_retrieval_recall_equals_argsort_protocol_on_distinct_scores():
    rng = np.random.default_rng(0)
    n_img, per = 12, 5
    n_txt = n_img * per
    s_i2t = rng.standard_normal((n_img, n_txt))
    s_t2i = rng.standard_normal((n_txt, n_img))
    img2txt = [list(range(per * i, per * i + per)) for i in range(n_img)]
    txt2img = np.arange(n_txt) // per
    r = retrieval_recall(s_i2t, s_t2i, txt2img, img2txt, ks=(1, 2, 5, 10))
    i_ranks = _argsort_ranks(s_i2t, img2txt)
    t_ranks = _argsort_ranks(s_t2i, [[t] for t in txt2img])
    for k in (1, 2, 5, 10):
        assert r[f"txt_r{k}"] == pytest.approx(100 * np.mean(i_ranks < k))
        assert r[f"img_r{k}"] == pytest.approx(100 * np.mean(t_ranks < k))
    # torch tensors (bfloat16 widened) give the same numbers as numpy
    r_torch = retrieval_recall(torch.tensor(s_i2t), torch.tensor(s_t2i), torch.tensor(txt2img),
                               img2txt, ks=(1, 2, 5, 10))
    assert r_torch == pytest.approx(r)


def test_tied_scores_count_as_chance_not_as_hits():
    s_i2t, s_t2i, txt2img, img2txt = _five_caption_setup()
    constant_i2t, constant_t2i = np.zeros_like(s_i2t), np.zeros_like(s_t2i)
    r = retrieval_recall(constant_i2t, constant_t2i, txt2img, img2txt)
    # 5 correct of 15 captions: P(hit@K) = 1 - C(10, K) / C(15, K); 1 image of 3: K / 3.
    for k in (1, 5, 10):
        assert r[f"txt_r{k}"] == pytest.approx(100 * (1 - math.comb(10, k) / math.comb(15, k)))
    assert r["img_r1"] == pytest.approx(100 / 3)
    assert r["img_r5"] == pytest.approx(100.0)
    assert r == pytest.approx(retrieval_chance(txt2img, img2txt))
    # Control: the argsort protocol with a fixed tie order hands image 0 every R@1 hit because
    # its captions happen to come first - the bias the exact tie rule removes.
    assert _argsort_ranks(constant_i2t, img2txt)[0] == 0
    pessimistic = retrieval_recall(constant_i2t, constant_t2i, txt2img, img2txt, ties="pessimistic")
    assert pessimistic["txt_r1"] == 0.0 and pessimistic["txt_r10"] == 0.0  # 10 wrong + ties ahead


def test_outside_topk_scores_of_minus_100_tie_exactly():
    # Re-ranked top-2 get ITM logits, the other 4 captions -100: image 0's caption 5 is among
    # the -100 ones, so R@1/2 miss and R@K (K>2) is the chance of drawing it from 4 tied items.
    # Image 1 (true of captions 0-4) ranks caption 0 first and always hits.
    s_i2t = np.array([[3.0, 2.0, -100, -100, -100, -100],
                      [5.0, 2.0, -100, -100, -100, -100]])
    correct = np.array([[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 0]], dtype=bool)
    r = consistent_recall(s_i2t, s_i2t.T, correct, ks=(1, 2, 3, 4, 5, 6))
    for k, p in zip((1, 2, 3, 4, 5, 6), (0, 0, 1 / 4, 2 / 4, 3 / 4, 1)):
        assert r[f"txt_r{k}"] == pytest.approx(100 * (p + 1) / 2), k


@pytest.mark.parametrize("seed", range(6))
def test_tie_probability_equals_enumeration_of_tie_orders(seed):
    rng = np.random.default_rng(seed)
    n = 6
    scores = rng.integers(0, 3, size=n).astype(float)
    correct = rng.random(n) < 0.4
    correct[rng.integers(n)] = True
    best = scores[correct].max()
    above = int(np.sum(~correct & (scores > best)))
    g = int(np.sum(~correct & (scores == best)))
    m = int(np.sum(correct & (scores == best)))
    for k in range(1, n + 1):
        hits = []
        for tiebreak in itertools.permutations(range(n)):
            order = sorted(range(n), key=lambda j: (-scores[j], tiebreak[j]))
            rank = min(order.index(j) for j in range(n) if correct[j])
            hits.append(rank < k)
        assert prob_first_correct_within(np.array([above]), np.array([g]), np.array([m]), k)[0] \
            == pytest.approx(np.mean(hits)), (k, scores, correct)


def test_consistent_recall_counts_any_true_caption_and_chance_is_exact():
    # 2 images, 4 captions; caption 1 is true of both pictures.
    correct = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)
    s_i2t = np.array([[0.1, 0.9, 0.5, 0.0],    # image 0 ranks caption 1 first: true -> hit
                      [0.9, 0.1, 0.2, 0.8]])   # image 1: captions 0, 3 first, then 2 (true)
    s_t2i = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.3, 0.4]])  # caption 3: true of none
    with pytest.raises(ValueError, match="row 3 has no correct entry"):
        consistent_recall(s_i2t, s_t2i, correct, ks=(1, 2))
    correct[1, 3] = True
    r = consistent_recall(s_i2t, s_t2i, correct, ks=(1, 2))
    assert r["txt_r1"] == pytest.approx(50.0)        # image 1's best true caption (3) is rank 1
    assert r["txt_r2"] == pytest.approx(100.0)
    # captions: 0 -> img0 hit; 1 -> img1 (true) hit; 2 -> img0 first (false) miss; 3 -> hit
    assert r["img_r1"] == pytest.approx(75.0)
    chance = recall_chance(correct, ks=(1, 2))
    # image rows: 2 of 4 true -> 1/2 at K=1, 1 - C(2,2)/C(4,2) = 5/6 at K=2 ; image 1: 3 of 4 true
    assert chance["txt_r1"] == pytest.approx(100 * (2 / 4 + 3 / 4) / 2)
    assert chance["txt_r2"] == pytest.approx(100 * ((1 - 1 / 6) + 1.0) / 2)
    # caption rows: captions 0, 2, 3 are true of one of 2 images, caption 1 of both
    assert chance["img_r1"] == pytest.approx(100 * (0.5 + 1 + 0.5 + 0.5) / 4)


def test_retrieval_rejects_bad_input_with_a_clear_message():
    s = np.zeros((2, 4))
    with pytest.raises(ValueError, match="expected \\(4, 2\\)"):
        retrieval_recall(s, s, [0, 0, 1, 1], [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="img2txt\\[1\\]"):
        retrieval_recall(s, s.T, [0, 0, 1, 1], [[0, 1], [2, 9]])
    bad = s.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN \\(first in row 1\\)"):
        retrieval_recall(bad, s.T, [0, 0, 1, 1], [[0, 1], [2, 3]])


# ----------------------------------------------------------------------------- grounding
@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),                # identical
    ([0, 0, 10, 10], [5, 0, 10, 10], 50 / 150),           # half overlap
    ([0, 0, 10, 10], [8, 0, 10, 10], 20 / 180),           # two pixel columns shared
    ([0, 0, 10, 10], [8.5, 0, 10, 10], 15 / 185),         # fractional overlap, 1.5 px wide
    ([0, 0, 10, 10], [10, 0, 10, 10], 0.0),               # touching edges
    ([0, 0, 10, 10], [9, 0, 10, 10], 0.0),                # one shared column: original counts 0
    ([0, 0, 10, 10], [20, 20, 5, 5], 0.0),                # disjoint
    ([2, 2, 4, 4], [0, 0, 10, 10], 16 / 100),             # contained
    ([0, 0, 10, 10], [0, 0, 10, 5], 0.5),                 # exactly the threshold
    ([5, 5, 0, 0], [5, 5, 0, 0], 0.0),                    # two zero-area boxes: no 0/0
    ([5, 5, 0, 0], [0, 0, 10, 10], 0.0),                  # zero-area inside a box
    ([0, 0, 0, 10], [0, 0, 10, 10], 0.0),                 # zero width
])
def test_box_iou_inclusive_hand_values(a, b, expected):
    with np.errstate(all="raise"):
        assert box_iou_inclusive(a, b) == pytest.approx(expected)
        assert box_iou_inclusive(b, a) == pytest.approx(expected)


def test_box_iou_vectorised_matches_pairs_and_handles_bad_boxes():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 20, (50, 4))
    b = rng.uniform(0, 20, (50, 4))
    batched = box_iou_inclusive(torch.tensor(a), b)
    assert batched == pytest.approx([box_iou_inclusive(x, y) for x, y in zip(a, b)])
    # A diverged prediction is a miss, a broken ground truth is an error.
    assert box_iou_inclusive([np.nan, 0, 1, 1], [0, 0, 10, 10]) == 0.0
    with pytest.raises(ValueError, match="b: boxes contain NaN"):
        box_iou_inclusive([0, 0, 1, 1], [np.nan, 0, 10, 10])
    with pytest.raises(ValueError, match="width and height must be >= 0"):
        box_iou_inclusive([0, 0, -1, 1], [0, 0, 10, 10])
    with pytest.raises(ValueError, match="shape"):
        box_iou_inclusive([0, 0, 1], [0, 0, 10, 10])


def _iou_rule(a, b):
    """The published rule, one pair at a time: inclusive corners x .. x+w-1, intersection only
    when the corners are strictly ordered, union from the plain areas."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2 = min(a[0] + a[2] - 1, b[0] + b[2] - 1)
    iy2 = min(a[1] + a[3] - 1, b[1] + b[3] - 1)
    inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if ix1 < ix2 and iy1 < iy2 else 0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_box_iou_equals_the_published_rule_on_integer_and_float_boxes():
    rng = np.random.default_rng(2)
    integer = rng.integers(0, 8, (400, 4)) + np.array([0, 0, 1, 1])  # many touching / 1-px cases
    floats = rng.uniform(0, 8, (400, 4)) + np.array([0, 0, 0.5, 0.5])
    for boxes in (integer, floats):
        a, b = boxes[:200], boxes[200:]
        expected = [_iou_rule(x, y) for x, y in zip(a.tolist(), b.tolist())]
        assert box_iou_inclusive(a, b) == pytest.approx(expected, abs=1e-12)


def test_grounding_accuracy_threshold_splits_and_head_conversion():
    gt = [[0, 0, 10, 10]] * 4
    pred = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [10, 0, 10, 10]]  # IoU 1, .5, .4, 0
    assert grounding_accuracy(pred, gt) == pytest.approx(0.5)
    assert grounding_accuracy(pred, gt, threshold=0.4) == pytest.approx(0.75)
    by_split = grounding_accuracy_by_split(pred, gt, ["val", "testA", "val", "testB"])
    assert by_split == {"val": 0.5, "testA": 1.0, "testB": 0.0}
    boxes = normalized_cxcywh_to_xywh([[0.5, 0.5, 0.2, 0.4]], [100], [50])
    assert boxes.tolist() == [[40.0, 15.0, 20.0, 20.0]]


# ------------------------------------------------------------------- classification / GLUE
def test_matthews_correlation_hand_values():
    # TP=3, TN=4, FP=1, FN=2
    labels = [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    preds = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert matthews_corrcoef(preds, labels) == pytest.approx((3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6))
    # swapping which class is "positive" does not change it
    assert matthews_corrcoef(1 - np.array(preds), 1 - np.array(labels)) == pytest.approx(
        matthews_corrcoef(preds, labels))
    assert matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - np.array(labels), labels) == pytest.approx(-1.0)
    assert matthews_corrcoef([1] * 10, labels) == 0.0  # constant prediction: undefined -> 0
    # three classes: trace 4 of 6, true counts (2, 2, 2), predicted counts (2, 3, 1)
    assert matthews_corrcoef([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx(
        (4 * 6 - (2 * 2 + 2 * 3 + 2 * 1)) / math.sqrt((36 - 14) * (36 - 12)))


def test_pearson_spearman_hand_values_with_ties():
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26))
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    both = pearson_spearman(torch.tensor([[0.5], [1.0], [1.0], [4.0]]), [1, 3, 2, 4])
    assert both["spearmanr"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert both["pearson"] == pytest.approx(np.corrcoef([0.5, 1, 1, 4], [1, 3, 2, 4])[0, 1])
    # monotone but not linear: Spearman 1, Pearson below 1
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 8, 27, 1000]) < 0.9
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_accuracy_f1_and_topk_hand_values():
    assert accuracy([0, 1, 2, 2], torch.tensor([0, 1, 1, 2])) == pytest.approx(0.75)
    # TP=2, FP=1, FN=1 -> 4 / 6
    assert f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)
    assert f1_binary([0, 0], [0, 0]) == 0.0
    logits = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9],    # label 1: second -> top-1 miss
                       [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],    # label 0: first
                       [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # label 5: last
                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])   # label 1: fifth
    result = topk_accuracy(logits, [1, 0, 5, 1], ks=(1, 2, 5))
    assert result == pytest.approx({"top1": 25.0, "top2": 50.0, "top5": 75.0})
    # all-equal logits over 4 classes: chance, not a hit for whichever class comes first
    assert topk_accuracy(np.zeros((3, 4)), [0, 1, 2], ks=(1, 5)) == pytest.approx(
        {"top1": 25.0, "top5": 100.0})
    with pytest.raises(ValueError, match="labels must lie in"):
        topk_accuracy(logits, [1, 0, 6, 1])
    with pytest.raises(ValueError, match="whole numbers"):
        accuracy([0.5, 1], [0, 1])


def test_glue_dispatcher_metric_sets_and_main_metrics():
    labels = np.array([1, 0, 1, 1, 0, 0])
    preds = np.array([1, 0, 0, 1, 1, 0])
    assert set(glue_metrics("CoLA", preds, labels)) == {"matthews_correlation"}
    for task in ("SST-2", "QNLI", "RTE", "WNLI"):
        assert glue_metrics(task, preds, labels) == {"accuracy": pytest.approx(4 / 6)}
    mrpc = glue_metrics("MRPC", preds, labels)
    assert mrpc == pytest.approx({"accuracy": 4 / 6, "f1": 4 / 6, "acc_and_f1": 4 / 6})
    assert set(glue_metrics("qqp", preds, labels)) == {"accuracy", "f1", "acc_and_f1"}
    three = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]])
    assert glue_metrics("mnli-mm", three, [0, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    assert glue_task("MNLI-m").name == "mnli" and glue_task("mnli_mismatched").name == "mnli_mismatched"
    stsb = glue_metrics("STS-B", [0.5, 1.0, 1.0, 4.0], [1, 3, 2, 4])
    assert stsb["corr"] == pytest.approx((stsb["pearson"] + stsb["spearmanr"]) / 2)
    assert {name: glue_main_metric(name) for name in GLUE_TASKS} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "acc_and_f1",
        "qqp": "acc_and_f1", "stsb": "corr", "mnli": "accuracy", "mnli_mismatched": "accuracy",
        "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert glue_task("stsb").is_regression and glue_task("mnli").num_labels == 3
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        glue_metrics("squad", preds, labels)
    with pytest.raises(ValueError, match="logits have 3 classes, the task has 2"):
        glue_metrics("rte", three, [0, 1, 1])


# ----------------------------------------------------------------------------- VQA
@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("a dog.", "dog"), ("dont", "don't"), ("The Cat!", "cat"),
    ("1,000", "1000"),               # digit,digit: punctuation deleted, not spaced
    ("yes, it is", "yes it is"),     # comma next to a space: deleted
    ("black/white", "black white"),  # otherwise replaced by a space
    ("3.5", "3.5"),                  # a period before a digit stays
    ("none", "0"), ("ten", "10"), ("eleven", "eleven"),
    ("  an apple\tpie\n", "apple pie"),
    ("isnt it", "isn't it"), ("Im", "im"),  # the table is applied after lower-casing
])
def test_vqa_answer_normalisation(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out_hand_values():
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", answers) == pytest.approx(1.0)
    assert vqa_accuracy("4", answers) == 0.0
    two = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("red", two) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    one = ["green"] + ["blue"] * 9
    assert vqa_accuracy("green", one) == pytest.approx(9 * (1 / 3) / 10)
    tied = ["yes"] * 5 + ["no"] * 5
    assert vqa_accuracy("yes", tied) == vqa_accuracy("no", tied) == pytest.approx(1.0)
    # normalisation applies because the humans disagree
    assert vqa_accuracy("Two.", ["2"] * 9 + ["3"]) == pytest.approx(1.0)
    assert vqa_accuracy("a Dog", ["dog", "the dog", "dogs"] + ["cat"] * 7) == pytest.approx(
        (2 * 1 / 3 + 8 * 2 / 3) / 10)
    # unanimous humans: the official rules compare without normalising
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Two", ["2"] * 10, always_normalize=True) == pytest.approx(1.0)


def test_vqa_score_overall_and_per_type():
    rows = [
        {"question_id": 1, "answers": [{"answer": "yes"}] * 10, "answer_type": "yes/no",
         "question_type": "is the"},
        {"question_id": 2, "answer": ["2"] * 3 + ["3"] * 7, "answer_type": "number",
         "question_type": "how many"},
        {"question_id": 3, "answer": ["red"] * 2 + ["blue"] * 8, "answer_type": "other",
         "question_type": "what color"},
    ]
    result = vqa_score([{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"},
                        {"question_id": 3, "answer": "green"}], rows)
    assert result["overall"] == pytest.approx(100 * (1.0 + 0.9 + 0.0) / 3)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 90.0, "other": 0.0})
    assert result["per_question_type"]["how many"] == pytest.approx(90.0)
    assert result["count"] == 3
    with pytest.raises(ValueError, match="rows\\[2\\]: no prediction for question_id 3"):
        vqa_score({1: "yes", 2: "2"}, rows)
    with pytest.raises(ValueError, match="question_id 9"):
        vqa_score({1: "yes", 2: "2", 3: "x", 9: "y"}, rows)
    with pytest.raises(ValueError, match="rows\\[0\\] \\(question_id 5\\): field 'answer' must be"):
        vqa_score({5: "x"}, [{"question_id": 5, "answer": "x"}])


# ----------------------------------------------------------------------------- captioning
@pytest.mark.parametrize("raw, expected", [
    ("A dog's ball.", "a dog 's ball"),
    ("Don't run!", "do n't run"),
    ("I can't, won't", "i ca n't wo n't"),
    ("1,000 people at 3:30: lunch", "1,000 people at 3:30 lunch"),
    ("a black-and-white photo -- old", "a black-and-white photo old"),
    ('He said "hi" (twice)', "he said hi twice"),
    ("the dogs' toys.", "the dogs toys"),
    ("3.5 m... wait", "3.5 m wait"),
    ("$5 or 50%", "$ 5 or 50 %"),
    ("A man.\nA dog", "a man a dog"),
])
def test_ptb_style_tokenizer(raw, expected):
    assert ptb_tokenize(raw) == expected


def test_bleu4_and_ciderd_hand_values():
    # one image: n-gram precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5)
    single = caption_scores({7: ["A dog runs on grass."]}, {7: ["a dog runs on the grass"]})
    assert single["BLEU-4"] == pytest.approx(math.exp(-0.2) * (0.75 * (2 / 3) * 0.5) ** 0.25, abs=1e-8)
    assert single["CIDEr"] == 0.0  # idf is log(1 image) - log(df = 1) = 0
    # two images, idf log 2 for every reference n-gram. Image 1 is exact: unigram and bigram
    # cosines 1, no 3/4-grams -> 10 * 2 / 4 = 5. Image 2 adds "x": cosines 2/sqrt(6) and
    # 1/sqrt(2), length penalty exp(-1 / (2 * 6^2)).
    pair = caption_scores({1: "a b", 2: ["c d x"]}, {1: ["a b"], 2: ["c d"]})
    image2 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert pair["CIDEr"] == pytest.approx((5.0 + image2) / 2)


def test_caption_scores_equal_pycocoevalcap_on_the_same_tokens():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    results = {1: ["A dog's ball, red."], 2: ["Two cats sit on a mat!"], 3: ["a man rides a horse"]}
    references = {1: ["a red ball of a dog", "The dog's red ball."],
                  2: ["two cats on a mat", "cats sitting on the mat", "Two cats sit on a rug."],
                  3: ["A man riding a brown horse.", "a person on a horse"]}
    gts = {1: ["a red ball of a dog", "the dog 's red ball"],
           2: ["two cats on a mat", "cats sitting on the mat", "two cats sit on a rug"],
           3: ["a man riding a brown horse", "a person on a horse"]}
    res = {1: ["a dog 's ball red"], 2: ["two cats sit on a mat"], 3: ["a man rides a horse"]}
    assert tokenized_caption_sets(results, references) == (gts, res)
    ours = caption_scores(results, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert ours == {"BLEU-4": pytest.approx(bleu[3], abs=0), "CIDEr": pytest.approx(cider, abs=0)}
    assert 0 < ours["BLEU-4"] < 1 and ours["CIDEr"] > 0


def test_caption_scores_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="1 without a caption"):
        caption_scores({1: ["a"]}, {1: ["a"], 2: ["b"]})
    with pytest.raises(ValueError, match="expected one caption"):
        caption_scores({1: ["a", "b"]}, {1: ["a"]})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({1: ["a"]}, {1: "a"})
