"""Caption metrics: BLEU-4 and CIDEr-D from ``pycocoevalcap``'s scorers, on text tokenised in
Python the way the COCO caption evaluation tokenises it.

The COCO evaluation runs the Stanford PTB tokenizer (Java) with lower-casing and then drops the
punctuation tokens ('' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;). Java is not
required here: ``ptb_tokenize`` reproduces that effect for caption text - lower case, clitics
split off as separate tokens ("dog's" -> "dog 's", "don't" -> "do n't", "can't" -> "ca n't"),
punctuation removed, while hyphenated words, numbers such as "1,000" / "3.5" / "3:30" and
"$" / "%" / "#" (split off, kept) follow the PTB rules. Known differences from the Java
tokenizer, all rare in captions: abbreviations keep no final period ("mr." -> "mr"), square
brackets are dropped like round ones, "/" and "*" are not escaped.

Scores are fractions as ``pycocoevalcap`` returns them (papers print CIDEr 1.40 as 140). CIDEr's
document frequencies come from the evaluated set itself, so it is 0 for a set of one image.
METEOR, ROUGE-L and SPICE are not computed (METEOR and SPICE need Java).
"""
from __future__ import annotations

import re
from typing import Mapping

# What the COCO evaluation removes after PTB tokenisation, plus the raw characters PTB turns into
# those tokens (double quotes become `` or '', brackets -LRB- -RRB- -LCB- -RCB-).
_REMOVED_TOKENS = frozenset({"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?",
                             "!", ",", ":", "-", "--", "...", ";",
                             '"', "(", ")", "{", "}", "[", "]"})
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
# Characters PTB always splits into their own token (brackets and quotes become tokens that the
# COCO evaluation then drops; $ % # stay as tokens).
_ALWAYS_SPLIT = re.compile(r"""([?!;"()\[\]{}$%#]|\.\.\.+|--+)""")
# A comma or colon is its own token unless it sits between two digits (1,000  3:30).
_SPLIT_COMMA_COLON = re.compile(r"(?<!\d)([,:])|([,:])(?!\d)")
_CLITIC_ONLY = frozenset({"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"})
_LEADING_QUOTES = re.compile(r"^['`]+")
_TRAILING_QUOTES = re.compile(r"['`]+$")


def _split_word(word: str) -> list[str]:
    """PTB tokens of one whitespace-free chunk (after the always-split characters were split)."""
    if word in _CLITIC_ONLY:
        return [word]
    head, tail = [], []
    # Opening quotes and leading dashes are tokens of their own.
    while True:
        lead = _LEADING_QUOTES.match(word)
        if lead:
            head.append(lead.group(0))
            word = word[lead.end():]
        elif word.startswith("-"):
            head.append("-")
            word = word[1:]
        else:
            break
    # A final period or dash leaves the word (sentence-final period); "3.5" keeps its period.
    while word and (word[-1] in ".-" or (_TRAILING_QUOTES.search(word) and not _CLITIC.match(word))):
        quotes = _TRAILING_QUOTES.search(word)
        piece = quotes.group(0) if quotes else word[-1]
        tail.insert(0, piece)
        word = word[: -len(piece)]
    clitic = _CLITIC.match(word)
    body = [clitic.group(1), clitic.group(2)] if clitic else [word] if word else []
    return head + body + tail


def ptb_tokenize(text: str) -> str:
    """Lower-cased, PTB-tokenised, punctuation-free text, tokens joined by single spaces."""
    text = str(text).replace("\n", " ").lower()
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    text = _SPLIT_COMMA_COLON.sub(lambda m: f" {m.group(1) or m.group(2)} ", text)
    tokens = []
    for chunk in text.split():
        tokens.extend(_split_word(chunk))
    # Runs of dashes/quotes/periods are the PTB punctuation tokens the evaluation drops.
    return " ".join(t for t in tokens if t not in _REMOVED_TOKENS and t.strip("-'`.") != "")


def _as_single_caption(image_id, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise ValueError(f"results[{image_id!r}]: expected one caption (a string or a one-element "
                     f"list), got {value!r}")


def _references_of(image_id, value) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"references[{image_id!r}]: expected a non-empty list of captions")
    for j, ref in enumerate(value):
        if not isinstance(ref, str):
            raise ValueError(f"references[{image_id!r}][{j}]: not a string")
    return list(value)


def tokenized_caption_sets(results: Mapping, references: Mapping) -> tuple[dict, dict]:
    """({image_id: [tokenised references]}, {image_id: [tokenised caption]}), the inputs the
    ``pycocoevalcap`` scorers take; the two key sets must be equal."""
    missing = [k for k in references if k not in results]
    extra = [k for k in results if k not in references]
    if missing or extra:
        raise ValueError(f"results and references must cover the same images: {len(missing)} "
                         f"without a caption (e.g. {missing[:3]}), {len(extra)} without "
                         f"references (e.g. {extra[:3]})")
    if not references:
        raise ValueError("caption_scores: no images")
    gts = {k: [ptb_tokenize(r) for r in _references_of(k, v)] for k, v in references.items()}
    res = {k: [ptb_tokenize(_as_single_caption(k, results[k]))] for k in references}
    return gts, res


def caption_scores(results: Mapping, references: Mapping) -> dict:
    """{"BLEU-4", "CIDEr"} (CIDEr-D) of ``results`` {image_id: [caption]} against
    ``references`` {image_id: [reference captions]}."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as err:
        raise ImportError("caption metrics need the pycocoevalcap package "
                          "(pip install pycocoevalcap)") from err
    gts, res = tokenized_caption_sets(results, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": float(bleu[3]), "CIDEr": float(cider)}
