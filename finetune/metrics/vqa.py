"""The VQA accuracy metric, following the published rules of the official VQA evaluation.

Per question: the prediction and the human answers are cleaned (newlines/tabs to spaces, outer
whitespace stripped); when the humans did not all give the same answer, every answer and the
prediction are also normalised (``normalize_vqa_answer``). The accuracy is the mean, over the
leave-one-out subsets of the human answers (10 for VQAv2), of min(#answers in the subset equal
to the prediction / 3, 1). ``vqa_score`` reports it in percent, overall and per answer type and
question type, like the official tool (unrounded here).

Quirks of the official rules that are kept because the leaderboards apply them:
- normalisation is skipped when all human answers are identical, so "Two" is wrong against ten
  "2" (``always_normalize=True`` normalises in every case);
- punctuation is deleted (not replaced by a space) whenever the text contains that character next
  to a space or contains a digit-comma-digit sequence;
- a period is deleted only when not followed by a digit ("1.5" keeps it), and at most 32 periods
  are deleted per answer (the official call passes ``re.UNICODE``, i.e. 32, as the count);
- number words map to digits only for none/zero .. ten; contractions are restored from a fixed
  table applied after lower-casing (so its capitalised entries never fire, as in the original).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Missing apostrophes restored (the official table, including its odd entries such as
# "somebody'd" -> "somebodyd").
_CONTRACTIONS = {
    "'ow'sat": "'ow's'at", "'ows'at": "'ow's'at", "I'dve": "I'd've", "Id've": "I'd've",
    "Im": "I'm", "Ive": "I've", "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldn'tve": "couldn't've", "couldnt": "couldn't", "couldnt've": "couldn't've",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadn'tve": "hadn't've", "hadnt": "hadn't", "hadnt've": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "he'dve": "he'd've", "hed": "he'd", "hed've": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "it'dve": "it'd've",
    "itd": "it'd", "itd've": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightn'tve": "mightn't've", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "shant": "shan't", "she'dve": "she'd've", "she's": "she's", "shed've": "she'd've",
    "shouldn'tve": "shouldn't've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldve": "should've", "somebody'd": "somebodyd", "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someone'dve": "someone'd've", "someoned": "someone'd", "someoned've": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "something'dve": "something'd've",
    "somethingd": "something'd", "somethingd've": "something'd've", "somethingll": "something'll",
    "thats": "that's", "there'dve": "there'd've", "thered": "there'd", "thered've": "there'd've",
    "therere": "there're", "theres": "there's", "they'dve": "they'd've", "theyd": "they'd",
    "theyd've": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "we'dve": "we'd've", "wed've": "we'd've",
    "werent": "weren't", "weve": "we've", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "who'dve": "who'd've", "whod": "who'd",
    "whod've": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldn'tve": "wouldn't've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldve": "would've", "y'all'dve": "y'all'd've", "y'alld've": "y'all'd've",
    "y'allll": "y'all'll", "yall": "y'all", "yall'd've": "y'all'd've", "yall'll": "y'all'll",
    "you'dve": "you'd've", "youd": "you'd", "youd've": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # The test looks at the input text, the replacement acts on the running output.
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """The official answer normalisation: whitespace, punctuation, lower case, number words to
    digits, articles removed, contractions restored."""
    return _process_digits_articles(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(pred: str, human_answers: Sequence[str], always_normalize: bool = False) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers of its question."""
    if isinstance(human_answers, str) or len(human_answers) == 0:
        raise ValueError("human_answers must be a non-empty list of strings")
    gts = [_clean_whitespace(str(a)) for a in human_answers]
    pred = _clean_whitespace(str(pred))
    if always_normalize or len(set(gts)) > 1:
        gts = [normalize_vqa_answer(a) for a in gts]
        pred = normalize_vqa_answer(pred)
    matches = sum(a == pred for a in gts)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    total = sum(min(1.0, (matches - (a == pred)) / 3.0) for a in gts)
    return total / len(gts)


def _answers_of(row: Mapping, index: int) -> list[str]:
    field = "answers" if "answers" in row else "answer" if "answer" in row else None
    if field is None:
        raise ValueError(f"rows[{index}] (question_id {row.get('question_id')!r}): no 'answers' field")
    answers = row[field]
    if isinstance(answers, str) or not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(f"rows[{index}] (question_id {row.get('question_id')!r}): field "
                         f"'{field}' must be a non-empty list of answers")
    out = []
    for j, answer in enumerate(answers):
        if isinstance(answer, Mapping):
            answer = answer.get("answer")
        if not isinstance(answer, str):
            raise ValueError(f"rows[{index}] (question_id {row.get('question_id')!r}): "
                             f"{field}[{j}] is not a string answer")
        out.append(answer)
    return out


def _predictions(preds) -> dict:
    if isinstance(preds, Mapping):
        return dict(preds)
    table = {}
    for i, item in enumerate(preds):
        if not isinstance(item, Mapping) or "question_id" not in item or "answer" not in item:
            raise ValueError(f"preds[{i}]: expected {{'question_id', 'answer'}}, got {item!r}")
        if item["question_id"] in table:
            raise ValueError(f"preds[{i}]: question_id {item['question_id']!r} answered twice")
        table[item["question_id"]] = item["answer"]
    return table


def vqa_score(preds, rows: Iterable[Mapping], always_normalize: bool = False) -> dict:
    """VQA accuracy in percent: {"overall", "per_answer_type": {type: %},
    "per_question_type": {type: %}, "count"}.

    preds: {question_id: answer} or the results-file list [{"question_id", "answer"}].
    rows: one dict per question with "question_id", the human answers under "answers" (strings
    or official {"answer": ...} dicts) or "answer" (X-VLM rows), and optionally "answer_type" /
    "question_type". Every question needs exactly one prediction and vice versa.
    """
    table = _predictions(preds)
    per_answer_type, per_question_type = defaultdict(list), defaultdict(list)
    scores, seen = [], set()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "question_id" not in row:
            raise ValueError(f"rows[{i}]: missing field 'question_id'")
        qid = row["question_id"]
        if qid in seen:
            raise ValueError(f"rows[{i}]: question_id {qid!r} appears twice")
        seen.add(qid)
        if qid not in table:
            raise ValueError(f"rows[{i}]: no prediction for question_id {qid!r}")
        score = vqa_accuracy(table[qid], _answers_of(row, i), always_normalize)
        scores.append(score)
        if row.get("answer_type") is not None:
            per_answer_type[row["answer_type"]].append(score)
        if row.get("question_type") is not None:
            per_question_type[row["question_type"]].append(score)
    if not scores:
        raise ValueError("vqa_score: no questions")
    extra = set(table) - seen
    if extra:
        raise ValueError(f"{len(extra)} predictions have no question among the rows, "
                         f"e.g. question_id {sorted(extra, key=str)[0]!r}")

    def percent(values):
        return 100.0 * sum(values) / len(values)

    return {"overall": percent(scores),
            "per_answer_type": {k: percent(v) for k, v in per_answer_type.items()},
            "per_question_type": {k: percent(v) for k, v in per_question_type.items()},
            "count": len(scores)}
