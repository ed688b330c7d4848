"""Split long documents on sentence boundaries so each piece fits a length limit.

Sentences end at ``.``, ``!``, ``?`` (optionally followed by closing quotes/brackets) plus
whitespace, or at a line break. Sentences are packed greedily into pieces of at most
``max_chars`` characters; one sentence longer than the limit is cut at whitespace (or hard-cut
when it has none), so no piece ever exceeds the limit and no text is lost."""
from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]\u201d\u2019]*\s+|\n+")


def sentences(text: str) -> list[str]:
    parts = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[start:m.end()].strip()
        if piece:
            parts.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _pack(chunks, max_chars: int) -> list[str]:
    """Join chunks (each <= max_chars) with single spaces, greedily, into pieces <= max_chars."""
    out, cur = [], ""
    for chunk in chunks:
        if cur and len(cur) + 1 + len(chunk) > max_chars:
            out.append(cur)
            cur = chunk
        else:
            cur = f"{cur} {chunk}" if cur else chunk
    if cur:
        out.append(cur)
    return out


def _words_within(sentence: str, max_chars: int):
    """The sentence's words, a word longer than the limit hard-cut into limit-sized parts."""
    for word in sentence.split():
        while len(word) > max_chars:
            yield word[:max_chars]
            word = word[max_chars:]
        if word:
            yield word


def split_document(text: str, max_chars: int | None) -> list[str]:
    text = text.strip()
    if not max_chars or len(text) <= max_chars:
        return [text] if text else []
    chunks = []
    for sent in sentences(text):
        if len(sent) <= max_chars:
            chunks.append(sent)
        else:  # one sentence over the limit: cut at whitespace, then pack with the rest
            chunks.extend(_pack(_words_within(sent, max_chars), max_chars))
    return _pack(chunks, max_chars)
