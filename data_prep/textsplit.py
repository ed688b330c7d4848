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


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    out, cur = [], ""
    for word in sentence.split():
        while len(word) > max_chars:          # a "word" longer than the limit: hard cut
            if cur:
                out.append(cur)
                cur = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if cur and len(cur) + 1 + len(word) > max_chars:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        out.append(cur)
    return out


def split_document(text: str, max_chars: int | None) -> list[str]:
    text = text.strip()
    if not max_chars or len(text) <= max_chars:
        return [text] if text else []
    pieces, cur = [], ""
    for sent in sentences(text):
        chunks = [sent] if len(sent) <= max_chars else _cut_long(sent, max_chars)
        for chunk in chunks:
            if cur and len(cur) + 1 + len(chunk) > max_chars:
                pieces.append(cur)
                cur = chunk
            else:
                cur = f"{cur} {chunk}" if cur else chunk
    if cur:
        pieces.append(cur)
    return pieces
