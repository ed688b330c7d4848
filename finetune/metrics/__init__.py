"""Metrics of the downstream tasks: pure functions on numpy arrays, torch tensors and lists.

Each number comes on the scale of the code its published figures come from:

- retrieval (``retrieval_recall``, ``consistent_recall``, ``recall_chance``,
  ``retrieval_chance``): percent, the keys of the original ``itm_eval``;
- grounding (``grounding_accuracy``, ``grounding_accuracy_by_split``, ``box_iou_inclusive``):
  fraction;
- NLVR2 and GLUE (``accuracy``, ``f1_binary``, ``matthews_corrcoef``, ``pearson_spearman``,
  ``glue_metrics``): fraction;
- image classification (``topk_accuracy``): percent;
- VQA (``vqa_score``): percent (``vqa_accuracy`` of one question: fraction);
- captioning (``caption_scores``: BLEU-4, CIDEr-D via pycocoevalcap): fraction.

Ties between scores (retrieval, top-k) count as a random order of the tied items, evaluated
exactly (see ``ranking``), so equal scores never earn a hit by position.
"""
from .captioning import caption_scores, ptb_tokenize, tokenized_caption_sets
from .classification import (accuracy, average_ranks, f1_binary, matthews_corrcoef, pearson,
                             pearson_spearman, spearman, topk_accuracy)
from .glue import GLUE_TASKS, GlueTask, glue_main_metric, glue_metrics, glue_task
from .grounding import (box_iou_inclusive, grounding_accuracy, grounding_accuracy_by_split,
                        normalized_cxcywh_to_xywh)
from .retrieval import consistent_recall, recall_chance, retrieval_chance, retrieval_recall
from .vqa import normalize_vqa_answer, vqa_accuracy, vqa_score

__all__ = [
    "retrieval_recall", "consistent_recall", "recall_chance", "retrieval_chance",
    "box_iou_inclusive", "grounding_accuracy", "grounding_accuracy_by_split",
    "normalized_cxcywh_to_xywh",
    "accuracy", "topk_accuracy", "f1_binary", "matthews_corrcoef", "pearson", "spearman",
    "pearson_spearman", "average_ranks",
    "GlueTask", "GLUE_TASKS", "glue_task", "glue_metrics", "glue_main_metric",
    "normalize_vqa_answer", "vqa_accuracy", "vqa_score",
    "caption_scores", "ptb_tokenize", "tokenized_caption_sets",
]
