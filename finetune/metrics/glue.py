"""Each GLUE task's official metric set and the metric used to pick the best checkpoint.

Key names and scale (fractions) are those of the GLUE metric the X-FM GLUE code reports through
(``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``). Where a task has
two metrics, the selection metric is their mean, which is also the task's score on the GLUE
leaderboard: ``acc_and_f1`` (MRPC, QQP) and ``corr`` (STS-B).
"""
from __future__ import annotations

from dataclasses import dataclass

from ._arrays import as_numpy
from .classification import accuracy, f1_binary, matthews_corrcoef, pearson_spearman


@dataclass(frozen=True)
class GlueTask:
    name: str
    num_labels: int          # 1 = regression
    metrics: tuple[str, ...]  # the keys glue_metrics returns
    main_metric: str          # the key to select checkpoints on (higher is better)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


_ACC = ("accuracy",)
GLUE_TASKS = {
    "cola": GlueTask("cola", 2, ("matthews_correlation",), "matthews_correlation"),
    "sst2": GlueTask("sst2", 2, _ACC, "accuracy"),
    "mrpc": GlueTask("mrpc", 2, ("accuracy", "f1", "acc_and_f1"), "acc_and_f1"),
    "qqp": GlueTask("qqp", 2, ("accuracy", "f1", "acc_and_f1"), "acc_and_f1"),
    "stsb": GlueTask("stsb", 1, ("pearson", "spearmanr", "corr"), "corr"),
    "mnli": GlueTask("mnli", 3, _ACC, "accuracy"),
    "mnli_mismatched": GlueTask("mnli_mismatched", 3, _ACC, "accuracy"),
    "qnli": GlueTask("qnli", 2, _ACC, "accuracy"),
    "rte": GlueTask("rte", 2, _ACC, "accuracy"),
    "wnli": GlueTask("wnli", 2, _ACC, "accuracy"),
}

_ALIASES = {"mnlim": "mnli", "mnlimatched": "mnli", "mnlimm": "mnli_mismatched",
            "mnlimismatched": "mnli_mismatched"}


def glue_task(name: str) -> GlueTask:
    """The task spec for a GLUE task name, in any of its usual spellings (``SST-2``, ``sst2``,
    ``STS-B``, ``MNLI-mm``, ``mnli_mismatched``, ...)."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE_TASKS)} "
                         "(mnli-m / mnli-mm for the two MNLI validation sets)")
    return GLUE_TASKS[key]


def glue_main_metric(task: str) -> str:
    return glue_task(task).main_metric


def glue_metrics(task: str, preds, labels) -> dict:
    """The task's official metrics. ``preds``: class ids (N,) or logits (N, classes), which are
    arg-maxed; for STS-B, scores (N,) or (N, 1)."""
    spec = glue_task(task)
    if spec.is_regression:
        result = pearson_spearman(preds, labels)
        result["corr"] = (result["pearson"] + result["spearmanr"]) / 2
        return result
    array = as_numpy(preds, "preds")
    if array.ndim == 2 and array.shape[1] > 1:
        if array.shape[1] != spec.num_labels:
            raise ValueError(f"{spec.name}: logits have {array.shape[1]} classes, "
                             f"the task has {spec.num_labels}")
        array = array.argmax(axis=1)
    if spec.name == "cola":
        return {"matthews_correlation": matthews_corrcoef(array, labels)}
    result = {"accuracy": accuracy(array, labels)}
    if "f1" in spec.metrics:
        result["f1"] = f1_binary(array, labels)
        result["acc_and_f1"] = (result["accuracy"] + result["f1"]) / 2
    return result

