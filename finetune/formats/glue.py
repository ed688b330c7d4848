"""The GLUE benchmark's TSV files, each task with its own column layout.

Files are tab-separated with no quoting at all (a `"` inside a sentence is just a character),
so they are read with `csv.QUOTE_NONE`, as the GLUE baselines do. Headered files are read by
column name; CoLA's train/dev files have no header and are read by position. Test files carry
no labels. Label lists (and so label ids) follow the order the GLUE baselines and
`transformers` use; STS-B is a regression on [0, 5]."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fields import Loc
from .files import display


@dataclass(frozen=True)
class GlueExample:
    text_a: str
    text_b: str | None
    label: int | float | None       # class index, regression target, or None for test files
    guid: str
    origin: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class GlueTask:
    name: str
    labels: tuple[str, ...] | None  # None for regression
    text_a: str                     # column names (headered files)
    text_b: str | None
    label: str
    files: dict                     # split -> file name
    metrics: tuple[str, ...]        # what the benchmark reports for this task
    id_column: str | None = None    # column used for the guid when present
    headerless_train: tuple[int, int, int] | None = None   # (n columns, text column, label column)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_COLA_LIKE = dict(labels=("0", "1"), text_a="sentence", text_b=None, label="label", files=_SPLITS,
                  metrics=("matthews_corr",), id_column="index", headerless_train=(4, 3, 1))
_RTE_LIKE = dict(labels=("entailment", "not_entailment"), text_a="sentence1", text_b="sentence2",
                 label="label", files=_SPLITS, metrics=("accuracy",), id_column="index")

GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("CoLA", **_COLA_LIKE),
    GlueTask("SST-2", labels=("0", "1"), text_a="sentence", text_b=None, label="label", files=_SPLITS,
             metrics=("accuracy",), id_column="index"),
    GlueTask("MRPC", labels=("0", "1"), text_a="#1 String", text_b="#2 String", label="Quality",
             files=_SPLITS, metrics=("f1", "accuracy"), id_column="index"),
    GlueTask("QQP", labels=("0", "1"), text_a="question1", text_b="question2", label="is_duplicate",
             files=_SPLITS, metrics=("accuracy", "f1"), id_column="id"),
    GlueTask("STS-B", labels=None, text_a="sentence1", text_b="sentence2", label="score", files=_SPLITS,
             metrics=("pearson", "spearman"), id_column="index"),
    GlueTask("MNLI", labels=("contradiction", "entailment", "neutral"), text_a="sentence1",
             text_b="sentence2", label="gold_label",
             files={"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                    "dev_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                    "test_mismatched": "test_mismatched.tsv"},
             metrics=("accuracy",), id_column="index"),
    GlueTask("QNLI", **{**_RTE_LIKE, "text_a": "question", "text_b": "sentence"}),
    GlueTask("RTE", **_RTE_LIKE),
    # the synthetic world's two tasks, in the RTE and CoLA layouts
    GlueTask("SynthRTE", **_RTE_LIKE),
    GlueTask("SynthCoLA", **_COLA_LIKE),
]}


def glue_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def read_glue(task: str, data_dir, split: str, *, bad_rows: list | None = None) -> list[GlueExample]:
    """`data_dir/<the split's file name>` of a task (e.g. `glue_data/MNLI`, "dev_matched")."""
    t = glue_task(task)
    if split not in t.files:
        raise ValueError(f"{t.name} has no split {split!r}; splits: {', '.join(t.files)}")
    return read_glue_file(task, Path(data_dir) / t.files[split], split, bad_rows=bad_rows)


def read_glue_file(task: str, path, split: str, *, bad_rows: list | None = None) -> list[GlueExample]:
    """One TSV file; `split` says which layout it has (test files have no labels).

    A row whose column count differs from the header's is an error, unless `bad_rows` is a
    list: then the row is left out and its error appended there, for the caller to report
    (the original release of QQP's train.tsv has a few rows with a missing column)."""
    t = glue_task(task)
    is_test = split.startswith("test")
    name = display(path)
    # utf-8-sig: MRPC's files start with a byte-order mark before "Quality"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [(reader.line_num, row) for reader in [csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
                for row in reader if row]
    if t.headerless_train and not is_test:
        return [_headerless(t, name, split, line, row) for line, row in rows]
    if not rows:
        raise Loc(name, "line", 1).error("header", "the file is empty (expected a header row)")
    header_line, header = rows[0]
    wanted = {"text_a": t.text_a, "text_b": t.text_b, "label": None if is_test else t.label}
    cols = {}
    for role, column in wanted.items():
        if column is None:
            continue
        if column not in header:
            raise Loc(name, "line", header_line).error(
                column, f"column missing from the header (header: {' | '.join(header)})")
        cols[role] = header.index(column)
    id_col = header.index(t.id_column) if t.id_column in header else None
    out = []
    for line, row in rows[1:]:
        loc = Loc(name, "line", line)
        if len(row) != len(header):
            error = loc.error(header[min(len(row), len(header) - 1)],
                              f"expected {len(header)} tab-separated columns as in the header, got {len(row)}")
            if bad_rows is None:
                raise error
            bad_rows.append(error)
            continue
        guid = f"{split}-{row[id_col] if id_col is not None else line}"
        label = _label(t, loc, t.label, row[cols["label"]]) if "label" in cols else None
        text_b = row[cols["text_b"]] if "text_b" in cols else None
        out.append(GlueExample(row[cols["text_a"]], text_b, label, guid, str(loc)))
    return out


def _headerless(t: GlueTask, name: str, split: str, line: int, row: list[str]) -> GlueExample:
    n, text_col, label_col = t.headerless_train
    loc = Loc(name, "line", line)
    if len(row) != n:
        raise loc.error("sentence" if len(row) < n else "row",
                        f"expected {n} tab-separated columns (source, label, judgement, sentence), got {len(row)}")
    return GlueExample(row[text_col], None, _label(t, loc, "label", row[label_col]), f"{split}-{line}", str(loc))


def _label(t: GlueTask, loc: Loc, column: str, value: str):
    if t.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise loc.error(column, f"expected a number, got {value!r}") from None
        if not 0.0 <= score <= 5.0:
            raise loc.error(column, f"score {score} outside [0, 5]")
        return score
    if value not in t.labels:
        raise loc.error(column, f"unknown label {value!r} (expected one of {', '.join(t.labels)})")
    return t.labels.index(value)


def glue_files(task: str, data_dir) -> dict:
    """split -> path of the files of a task that exist under `data_dir`."""
    t = glue_task(task)
    return {s: Path(data_dir) / f for s, f in t.files.items() if os.path.exists(Path(data_dir) / f)}
