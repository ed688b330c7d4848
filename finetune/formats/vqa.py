"""Visual question answering sets (VQAv2, VG-QA) in the public layouts.

- Official VQAv2: `v2_OpenEnded_mscoco_<subtype>_questions.json` (`{data_subtype, questions:
  [{question_id, image_id, question}]}`) + `v2_mscoco_<subtype>_annotations.json`
  (`{annotations: [{question_id, image_id, answers: [{answer, ...}] (10), answer_type,
  multiple_choice_answer, ...}]}`; absent for test). Images: `COCO_<subtype>_<image_id:012d>.jpg`
  in the given image folder.
- X-VLM JSON rows: `{image, question, question_id, answer: [...], answer_type?, dataset?}`;
  `answer` may be missing in test files. Rows with `dataset: "vg"` are VG-QA extra training
  rows: their images resolve against the VG image root, `answer` may be one string (as
  X-VLM's `vg_qa.json` writes it) and `question_id` may be absent.
- An answer list: a JSON array of distinct strings (the candidates the ranking scores)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DataFormatError
from .fields import Loc, get_id, get_int, get_list, get_str, get_str_list, require_object, type_name
from .files import as_paths, display, load_json, load_json_object, load_records
from .images import ImageRef, resolve

VQA_DATASETS = ("vqa", "vg")


@dataclass(frozen=True)
class VqaExample:
    question_id: int | str | None
    image: ImageRef
    question: str
    answers: list[str]              # the human answers (10 for VQAv2), [] when unknown (test)
    answer_type: str | None = None
    dataset: str = "vqa"
    origin: str = field(default="", compare=False, repr=False)

    def image_refs(self):
        yield self.origin, "image", self.image


def read_vqa_json(paths, image_root=None, *, vg_image_root=None, require_answers: bool = True) -> list[VqaExample]:
    """X-VLM VQA rows (training, validation, or with `require_answers=False` test rows)."""
    out, seen = [], {}
    for path in as_paths(paths):
        for loc, row in load_records(path):
            dataset = get_str(row, loc, "dataset", optional=True) or "vqa"
            if dataset not in VQA_DATASETS:
                raise loc.error("dataset", f"unknown dataset {dataset!r} (expected one of {', '.join(VQA_DATASETS)})")
            is_vg = dataset == "vg"
            qid = get_id(row, loc, "question_id", optional=is_vg)
            if qid is not None:
                loc = loc.with_key("question_id", qid)
                if not is_vg:
                    if qid in seen:
                        raise loc.error("question_id", f"duplicate of {seen[qid]}")
                    seen[qid] = str(loc)
            image = resolve(vg_image_root if is_vg and vg_image_root is not None else image_root,
                            get_str(row, loc, "image"))
            question = get_str(row, loc, "question")
            if is_vg and isinstance(row.get("answer"), str):
                answers = [get_str(row, loc, "answer")]
            else:
                answers = get_str_list(row, loc, "answer", optional=not require_answers) or []
            out.append(VqaExample(qid, image, question, answers,
                                  get_str(row, loc, "answer_type", optional=True), dataset, str(loc)))
    return out


def coco_image_name(subtype: str, image_id: int) -> str:
    return f"COCO_{subtype}_{image_id:012d}.jpg"


def read_vqa_official(questions_path, annotations_path=None, image_dir=None, *,
                      subtype: str | None = None) -> list[VqaExample]:
    """Official VQAv2 questions (+ annotations, when the split has them), in question order.
    `subtype` (e.g. "val2014") names the image files; default: the questions file's
    `data_subtype`."""
    qname = display(questions_path)
    qobj = load_json_object(questions_path, required=("questions",))
    if subtype is None:
        subtype = get_str(qobj, Loc(qname, "top level"), "data_subtype")
    questions = qobj["questions"]
    if not isinstance(questions, list):
        raise DataFormatError(f"{qname}: field 'questions': expected a list, got {type_name(questions)}")
    answers = _read_annotations(annotations_path) if annotations_path is not None else None
    out, seen = [], set()
    for i, row in enumerate(questions):
        loc = Loc(qname, "record", i)
        row = require_object(row, loc)
        qid = get_int(row, loc, "question_id")
        loc = loc.with_key("question_id", qid)
        if qid in seen:
            raise loc.error("question_id", "duplicate question id")
        seen.add(qid)
        image_id = get_int(row, loc, "image_id")
        question = get_str(row, loc, "question")
        human, answer_type = [], None
        if answers is not None:
            if qid not in answers:
                raise loc.error("question_id", f"no annotation for this question in {display(annotations_path)}")
            ann_loc, ann_image, human, answer_type = answers[qid]
            if ann_image != image_id:
                raise ann_loc.error("image_id", f"{ann_image}, but the question's image is {image_id}")
        out.append(VqaExample(qid, resolve(image_dir, coco_image_name(subtype, image_id)), question, human,
                              answer_type, "vqa", str(loc)))
    if answers is not None and len(answers) != len(seen):
        extra = next(a[0] for q, a in answers.items() if q not in seen)
        raise DataFormatError(f"{extra}: field 'question_id': annotation without a question in {qname}")
    return out


def _read_annotations(path) -> dict:
    name = display(path)
    obj = load_json_object(path, required=("annotations",))
    anns = obj["annotations"]
    if not isinstance(anns, list):
        raise DataFormatError(f"{name}: field 'annotations': expected a list, got {type_name(anns)}")
    out = {}
    for i, row in enumerate(anns):
        loc = Loc(name, "record", i)
        row = require_object(row, loc)
        qid = get_int(row, loc, "question_id")
        loc = loc.with_key("question_id", qid)
        if qid in out:
            raise loc.error("question_id", f"duplicate of {out[qid][0]}")
        human = []
        for k, a in enumerate(get_list(row, loc, "answers")):
            if not isinstance(a, dict):
                raise loc.error(f"answers[{k}]", f"expected an object, got {type_name(a)}")
            if not isinstance(a.get("answer"), str):
                raise loc.error(f"answers[{k}].answer", "missing" if "answer" not in a
                                else f"expected a string, got {type_name(a['answer'])}")
            human.append(a["answer"])
        if not human:
            raise loc.error("answers", "expected at least 1 answer, got 0")
        out[qid] = (loc, get_int(row, loc, "image_id"), human, get_str(row, loc, "answer_type", optional=True))
    return out


def read_answer_list(path) -> list[str]:
    """The candidate answers: a JSON array of distinct, non-empty strings."""
    name = display(path)
    answers = load_json(path)
    if not isinstance(answers, list):
        raise DataFormatError(f"{name}: expected a JSON array of answer strings, got {type_name(answers)}")
    first = {}
    for i, a in enumerate(answers):
        loc = Loc(name, "record", i)
        if not isinstance(a, str) or not a.strip():
            raise DataFormatError(f"{loc}: expected a non-empty answer string, got {type_name(a)} {a!r}")
        if a in first:
            raise DataFormatError(f"{loc}: answer {a!r} repeats record {first[a]}")
        first[a] = i
    if not answers:
        raise DataFormatError(f"{name}: the answer list is empty")
    return answers
