"""Masking for the pretraining objectives, run in the data-loader workers (numpy, no torch ops).

- ``WordBoundaries``: per-vocabulary tables that tell where words start, for byte-level BPE
  (RoBERTa/GPT-2 style, ``Ġ`` = leading space) and WordPiece (BERT style, ``##`` = continuation).
  The original X-VLM/X-FM code looked only at ``##``, so for RoBERTa whole-word masking masked
  single sub-tokens. Here a byte-level BPE word is what the tokenizer's own pre-tokenizer calls a
  word (``Ġdog`` + ``'s``, ``abc`` + ``123``, ``hello`` + ``,``): the token bytes of a sequence are
  re-joined and split by that pre-tokenizer (one Rust call, ~20 us), so masked words agree with
  ``encoding.word_ids()``. Without a pre-tokenizer a table rule approximates it (leading space or
  a change of character class letters / digits / punctuation / space).
- ``TextMasker``: BERT-style MLM masking (whole words, optional 2-3 token spans widened to
  words, 80/10/10).
- ``BlockMasker``: BEiT block-wise image masking with exactly ``num_masks`` patches.

Every masker takes a ``numpy.random.Generator`` that the caller seeds per sample, so a resumed
run re-draws the same masks.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "WordBoundaries", "TextMasker", "BlockMasker", "block_masker_for",
    "TEXT_MLM", "FUSION_MLM", "text_mlm_masker", "fusion_mlm_masker", "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # label of positions that are not predicted (torch cross_entropy default)

# Rates of the paper (docs/METHOD.md): text MLM on the text stream, fusion MLM on captions.
TEXT_MLM = dict(mask_prob=0.15, max_masks=20)
FUSION_MLM = dict(mask_prob=0.5, max_masks=15)

# character classes of the GPT-2 pre-tokenizer regex (letters, digits, other non-space, space);
# CONT = the token starts (or ends) inside a multi-byte UTF-8 character, never a word boundary;
# SPACE_JOIN = the token ends with a plain space, which the regex glues to the next word.
_LETTER, _NUMBER, _OTHER, _SPACE, _CONT, _SPACE_JOIN, _ADDED = range(7)
# the GPT-2 regex keeps English contractions ('s 't 're 've 'm 'll 'd) as one word; byte-level
# BPE may still spell them as "'" + "s", so the table rule glues such a pair (and the first
# letter of a two-letter tail, whose second letter then joins as a letter anyway)
_CONTRACTION_TAILS = frozenset({b"s", b"t", b"m", b"d", b"re", b"ve", b"ll", b"r", b"v", b"l"})


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-unicode table (printable bytes map to themselves, the other
    bytes to U+0100 onwards in byte order); this is how byte-level BPE vocabularies spell bytes."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _char_class(ch: str) -> int:
    if ch.isspace():
        return _SPACE
    cat = unicodedata.category(ch)
    if cat.startswith("L"):
        return _LETTER
    if cat.startswith("N"):
        return _NUMBER
    return _OTHER


def _utf8_len(lead: int) -> int:
    if lead < 0x80:
        return 1
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 0  # continuation byte (or invalid): not the start of a character


def _byte_token_classes(raw: bytes) -> tuple[int, int]:
    """(class of the first character, class of the last character) of one byte-level token."""
    if not raw:
        return _CONT, _CONT
    n = _utf8_len(raw[0])
    if n == 0:
        first = _CONT
    elif len(raw) >= n:
        first = _char_class(raw[:n].decode("utf-8", errors="replace")[0])
    else:
        # a multi-byte character split across tokens: most such characters are letters
        # (accented Latin, CJK); a documented approximation
        first = _LETTER
    # last complete character: walk back to its lead byte
    i = len(raw) - 1
    while i > 0 and _utf8_len(raw[i]) == 0:
        i -= 1
    n_last = _utf8_len(raw[i])
    if n_last == 0 or len(raw) - i < n_last:
        last = _CONT  # ends inside a character: the next token continues it
    elif raw[i:] == b" ":
        last = _SPACE_JOIN
    else:
        last = _char_class(raw[i:].decode("utf-8", errors="replace")[0])
    return first, last


@dataclass
class WordBoundaries:
    """Vocabulary tables for whole-word masking; picklable, no tokenizer object inside.

    ``starts_word[v]``: token v always begins a word (``Ġ``-prefixed BPE token, WordPiece token
    without ``##``, added tokens). Positions right after a special or added token (``<s>``,
    ``[CLS]``, padding) always begin a word. For byte-level BPE the other word starts come from
    the tokenizer's pre-tokenizer run over the re-joined token bytes of each stretch between
    special / added tokens (exactly how the tokenizer split the text); when that is unavailable
    (no fast tokenizer, bytes that are not UTF-8) a token begins a word when its first
    character's class differs from the previous token's last character's class (the GPT-2 regex
    splits ``hello,`` into ``hello`` + ``,`` and ``abc123`` into ``abc`` + ``123``, but keeps a
    contraction such as ``'s`` together even when BPE spells it ``'`` + ``s``).
    """
    kind: str                      # "bpe" (byte-level) or "wordpiece"
    starts_word: np.ndarray        # (V,) bool
    first_class: np.ndarray        # (V,) int8, used for "bpe"
    last_class: np.ndarray         # (V,) int8, used for "bpe"
    special: np.ndarray            # (V,) bool: never masked, never a random replacement
    mask_token_id: int
    random_ids: np.ndarray = field(repr=False, default=None)  # ids allowed as random replacement
    # byte-level BPE only: the raw bytes of every token and the tokenizer's pre-tokenizer (a
    # picklable ``tokenizers`` object); when present, word splits come from the pre-tokenizer
    token_bytes: list | None = field(repr=False, default=None)
    pre_tokenizer: object | None = field(repr=False, default=None)
    # (V,) bool: special or added tokens, which the tokenizer cuts out before pre-tokenizing
    isolated: np.ndarray | None = field(repr=False, default=None)
    # byte-level BPE table rule only: (V,) bool, the token ends with an apostrophe / is the rest
    # of a contraction ("s", "t", "re"...): such a pair is one word, as the GPT-2 regex splits
    ends_apostrophe: np.ndarray | None = field(repr=False, default=None)
    contraction_tail: np.ndarray | None = field(repr=False, default=None)

    def __post_init__(self):
        if self.kind not in ("bpe", "wordpiece"):
            raise ValueError(f"WordBoundaries: kind must be 'bpe' or 'wordpiece', got {self.kind!r}")
        if self.random_ids is None:
            self.random_ids = np.flatnonzero(~self.special).astype(np.int64)
        if self.ends_apostrophe is None:
            self.ends_apostrophe = np.zeros(self.special.shape[0], dtype=bool)
        if self.contraction_tail is None:
            self.contraction_tail = np.zeros(self.special.shape[0], dtype=bool)
        if self.isolated is None:
            self.isolated = self.special.copy()

    @property
    def vocab_size(self) -> int:
        return int(self.special.shape[0])

    @classmethod
    def from_tokenizer(cls, tok, kind: str | None = None) -> "WordBoundaries":
        """Build the tables from a Hugging Face tokenizer (fast or slow), BERT- or RoBERTa-style.

        ``kind`` is detected from the tokenizer model (BPE vs WordPiece) when not given.
        """
        size = len(tok)
        tokens = tok.convert_ids_to_tokens(list(range(size)))
        kind = kind or _detect_kind(tok, tokens)
        special = np.zeros(size, dtype=bool)
        special_ids = set(int(i) for i in tok.all_special_ids)
        added = {}
        for idx, added_tok in getattr(tok, "added_tokens_decoder", {}).items():
            if getattr(added_tok, "special", False):
                special_ids.add(int(idx))
            else:
                added[int(idx)] = added_tok
        for i in special_ids:
            if 0 <= i < size:
                special[i] = True
        if tok.mask_token_id is None:
            raise ValueError(f"WordBoundaries: tokenizer {type(tok).__name__} has no mask token; "
                             f"MLM needs one (e.g. '<mask>' or '[MASK]')")
        starts = np.zeros(size, dtype=bool)
        first = np.full(size, _CONT, dtype=np.int8)
        last = np.full(size, _CONT, dtype=np.int8)
        decoder = _byte_decoder() if kind == "bpe" else None
        token_bytes = [b""] * size if kind == "bpe" else None
        ends_apostrophe = np.zeros(size, dtype=bool)
        contraction_tail = np.zeros(size, dtype=bool)
        for i, t in enumerate(tokens):
            if t is None or special[i]:
                continue
            if i in added:  # user-added whole tokens are split out as words of their own
                starts[i] = True
                first[i] = last[i] = _ADDED
                if token_bytes is not None:
                    token_bytes[i] = t.encode("utf-8")
                continue
            if kind == "wordpiece":
                starts[i] = not t.startswith("##")
                continue
            raw = bytes(decoder[c] for c in t if c in decoder)
            token_bytes[i] = raw
            starts[i] = raw[:1] == b" "
            first[i], last[i] = _byte_token_classes(raw)
            ends_apostrophe[i] = raw.endswith(b"'")
            contraction_tail[i] = raw in _CONTRACTION_TAILS
        pre_tokenizer = None
        if kind == "bpe":
            backend = getattr(tok, "backend_tokenizer", None)
            # a normalizer could change the text between the pre-tokenizer and the tokens
            if backend is not None and backend.normalizer is None:
                pre_tokenizer = backend.pre_tokenizer
        isolated = special.copy()
        isolated[[i for i in added if i < size]] = True
        return cls(kind=kind, starts_word=starts, first_class=first, last_class=last,
                   special=special, mask_token_id=int(tok.mask_token_id),
                   token_bytes=token_bytes, pre_tokenizer=pre_tokenizer, isolated=isolated,
                   ends_apostrophe=ends_apostrophe, contraction_tail=contraction_tail)

    def word_index(self, ids: np.ndarray) -> np.ndarray:
        """(L,) int: word number of each position (0, 1, ... in order), -1 on special tokens."""
        ids = _as_index_array(ids, self.vocab_size)
        special = self.special[ids]
        start = self.starts_word[ids].copy()
        isolated = self.isolated[ids]
        if ids.size:
            start[0] = True
            # the first token after a special starts a word (RoBERTa's "<s>hello" has no Ġ)
            start[1:] |= isolated[:-1]
            if self.kind == "bpe":
                prev_last = self.last_class[ids[:-1]]
                cur_first = self.first_class[ids[1:]]
                contraction = self.ends_apostrophe[ids[:-1]] & self.contraction_tail[ids[1:]]
                start[1:] |= ((cur_first != prev_last) & (cur_first != _CONT)
                              & (prev_last != _CONT) & (prev_last != _SPACE_JOIN) & ~contraction)
        if self.kind == "bpe" and self.pre_tokenizer is not None:
            self._pre_tokenizer_starts(ids, isolated, start)
        start &= ~special
        word = np.cumsum(start) - 1
        word[special] = -1
        return word

    def _pre_tokenizer_starts(self, ids: np.ndarray, isolated: np.ndarray, start: np.ndarray) -> None:
        """Overwrite ``start`` with the pre-tokenizer's word splits, one run of ordinary tokens at
        a time (the tokenizer also pre-tokenizes the text between special / added tokens
        separately)."""
        # plain Python on purpose: sequences are short and numpy's per-call overhead dominates
        id_list, isolated_list = ids.tolist(), isolated.tolist()
        length, lo = len(id_list), 0
        while lo < length:
            if isolated_list[lo]:
                lo += 1
                continue
            hi = lo
            while hi < length and not isolated_list[hi]:
                hi += 1
            # run [lo, hi) of non-special positions
            pieces = [self.token_bytes[i] for i in id_list[lo:hi]]
            try:
                text = b"".join(pieces).decode("utf-8")
            except UnicodeDecodeError:
                text = None  # not valid text (e.g. cut mid-character): keep the table rule
            if text is not None:
                splits = self.pre_tokenizer.pre_tokenize_str(text)
                if text.isascii():
                    word_starts = {s for _, (s, _) in splits}
                else:
                    char_byte = [0]
                    for c in text:
                        char_byte.append(char_byte[-1] + len(c.encode("utf-8")))
                    word_starts = {char_byte[s] for _, (s, _) in splits}
                offset = 0
                for k, piece in enumerate(pieces):
                    start[lo + k] = offset in word_starts
                    offset += len(piece)
                start[lo] = True
            lo = hi


def _detect_kind(tok, tokens) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    model_name = type(backend.model).__name__ if backend is not None else ""
    if model_name == "WordPiece":
        return "wordpiece"
    if model_name == "BPE":
        if any(t is not None and t.startswith("Ġ") for t in tokens):
            return "bpe"
        raise ValueError(f"WordBoundaries: {type(tok).__name__} is a BPE tokenizer without byte-level "
                         f"'Ġ' word markers; only byte-level BPE and WordPiece are supported")
    if any(t is not None and t.startswith("##") for t in tokens):
        return "wordpiece"
    if any(t is not None and t.startswith("Ġ") for t in tokens):
        return "bpe"
    raise ValueError(f"WordBoundaries: cannot tell the word-boundary convention of "
                     f"{type(tok).__name__} (model {model_name or 'unknown'}); pass kind='bpe' or "
                     f"kind='wordpiece'")


def _as_index_array(ids, vocab_size: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"token id out of range [0, {vocab_size}): min {arr.min()}, max {arr.max()} "
                         f"(masker built for another tokenizer?)")
    return arr


class TextMasker:
    """MLM masking of one token sequence: ``masker(ids, rng) -> (masked_ids, labels)``.

    ``boundaries``: a ``WordBoundaries`` (or a Hugging Face tokenizer, converted once).

    Selects ``min(max_masks, max(1, round(mask_prob * n)))`` of the ``n`` non-special tokens, in
    units of whole words (``whole_word``) or single tokens. Each pick becomes, with probability
    ``span_prob``, a span of ``k`` tokens (k drawn uniformly from ``span_lengths``) instead of one
    unit: consecutive units from the picked one until they cover at least k tokens, so with whole
    words a span is widened to word boundaries as in X-VLM (a word of >= k pieces is a span on its
    own, k one-piece words make a span of k). Spans stop at special tokens. A pick that does not
    fit in the remaining budget is shortened (spans) or skipped (single words), so words are never
    cut (at the cost of sometimes selecting a little less than
    the target). If no word fits the target at all, one whole word of at most ``max_masks``
    tokens is selected; ``max_masks`` is never exceeded. Selected tokens become the mask token with
    probability ``mask_frac``, a random non-special token with ``random_frac``, else stay.
    ``labels`` hold the original id at selected positions and ``IGNORE_INDEX`` elsewhere.
    Special tokens (incl. padding) are never selected.
    """

    def __init__(self, boundaries: WordBoundaries, mask_prob: float, max_masks: int,
                 span_prob: float = 0.2, span_lengths=(2, 3), whole_word: bool = True,
                 mask_frac: float = 0.8, random_frac: float = 0.1,
                 mask_token_id: int | None = None, vocab_size: int | None = None):
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"TextMasker: mask_prob must be in (0, 1], got {mask_prob}")
        if max_masks < 1:
            raise ValueError(f"TextMasker: max_masks must be >= 1, got {max_masks}")
        if not 0.0 <= span_prob <= 1.0:
            raise ValueError(f"TextMasker: span_prob must be in [0, 1], got {span_prob}")
        span_lengths = tuple(int(k) for k in span_lengths)
        if span_prob > 0 and (not span_lengths or min(span_lengths) < 1):
            raise ValueError(f"TextMasker: span_lengths must be positive, got {span_lengths}")
        if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1.0 + 1e-9:
            raise ValueError(f"TextMasker: need mask_frac, random_frac >= 0 and their sum <= 1, "
                             f"got {mask_frac} + {random_frac}")
        if not isinstance(boundaries, WordBoundaries):
            if not hasattr(boundaries, "convert_ids_to_tokens"):
                raise TypeError(f"TextMasker: expected WordBoundaries or a Hugging Face tokenizer, "
                                f"got {type(boundaries).__name__}")
            boundaries = WordBoundaries.from_tokenizer(boundaries)
        self.boundaries = boundaries
        self.mask_prob = float(mask_prob)
        self.max_masks = int(max_masks)
        self.span_prob = float(span_prob)
        self.span_lengths = span_lengths
        self.whole_word = bool(whole_word)
        self.mask_frac = float(mask_frac)
        self.random_frac = float(random_frac)
        self.mask_token_id = int(boundaries.mask_token_id if mask_token_id is None else mask_token_id)
        self.random_ids = boundaries.random_ids
        if vocab_size is not None:  # model vocabulary smaller than the tokenizer's? keep in range
            self.random_ids = self.random_ids[self.random_ids < int(vocab_size)]
        if self.random_frac > 0 and self.random_ids.size == 0:
            raise ValueError("TextMasker: no non-special token ids available for random replacement")

    def budget(self, n_maskable: int) -> int:
        """How many tokens a sequence with ``n_maskable`` non-special tokens should get masked."""
        if n_maskable <= 0:
            return 0
        return min(self.max_masks, n_maskable, max(1, int(round(n_maskable * self.mask_prob))))

    def select(self, ids, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """Choose the positions to predict. Returns ``(selected (L,) bool, picks)`` where
        ``picks`` lists, per pick, the number of tokens it was drawn to cover (1 = single unit,
        k >= 2 = span; before any shortening), for checking the span rate."""
        ids = _as_index_array(ids, self.boundaries.vocab_size)
        length = ids.shape[0]
        selected = np.zeros(length, dtype=bool)
        special = self.boundaries.special[ids]
        budget = self.budget(int(length - special.sum()))
        if budget == 0:
            return selected, []
        if self.whole_word:
            unit_of = self.boundaries.word_index(ids).tolist()
        else:
            unit_of = np.where(special, -1, np.cumsum(~special) - 1).tolist()
        # units (words or tokens) as position ranges; plain Python lists from here on because
        # the sequences are short and numpy's per-call overhead would dominate
        unit_first, unit_end, segment = [], [], []
        seg, prev_unit = 0, -1
        for pos, unit in enumerate(unit_of):
            if unit < 0:
                seg += prev_unit >= 0  # a special token ends a segment: spans never cross it
                prev_unit = -1
                continue
            if unit != prev_unit:
                unit_first.append(pos)
                unit_end.append(pos + 1)
                segment.append(seg)
            else:
                unit_end[-1] = pos + 1
            prev_unit = unit
        n_units = len(unit_first)
        chosen = [False] * n_units
        count, picks = 0, []
        draws = rng.random(2 * n_units).tolist()  # span or not, and which span length
        n_lengths = len(self.span_lengths)
        for rank, u in enumerate(rng.permutation(n_units).tolist()):
            if count >= budget:
                break
            if chosen[u]:
                continue
            want = 1
            if draws[rank] < self.span_prob:
                want = self.span_lengths[min(int(draws[n_units + rank] * n_lengths), n_lengths - 1)]
            # a span covers ``want`` tokens widened to whole units (X-VLM: k tokens, then out to
            # word boundaries); a unit longer than ``want`` is a span on its own
            end = u + 1
            while (unit_end[end - 1] - unit_first[u] < want and end < n_units
                   and segment[end] == segment[u] and not chosen[end]):
                end += 1
            size = unit_end[end - 1] - unit_first[u]
            while end > u and count + size > budget:  # shorten to fit; never cut a unit
                end -= 1
                size -= unit_end[end] - unit_first[end]
            if end == u:
                continue
            picks.append(want)
            for v in range(u, end):
                chosen[v] = True
                selected[unit_first[v]:unit_end[v]] = True
            count += size
        if count == 0:
            # every word is longer than the rate allows (e.g. a 4-token caption that is one
            # 3-piece word + specials): mask one word anyway so the sample still teaches
            # something; only the hard cap max_masks is respected then
            fits = [v for v in range(n_units) if unit_end[v] - unit_first[v] <= self.max_masks]
            if fits:
                v = fits[int(rng.integers(len(fits)))]
                selected[unit_first[v]:unit_end[v]] = True
                picks.append(1)
        return selected, picks

    def __call__(self, ids, rng: np.random.Generator):
        """Mask one 1-D sequence (numpy array or torch tensor, returned as the same kind)."""
        is_torch = type(ids).__module__.startswith("torch")
        arr = ids.detach().cpu().numpy() if is_torch else np.asarray(ids)
        selected, _ = self.select(arr, rng)
        arr = arr.astype(np.int64)
        labels = np.full(arr.shape, IGNORE_INDEX, dtype=np.int64)
        labels[selected] = arr[selected]
        masked = arr.copy()
        where = np.flatnonzero(selected)
        if where.size:
            draw = rng.random(where.size)
            to_mask = where[draw < self.mask_frac]
            to_random = where[(draw >= self.mask_frac) & (draw < self.mask_frac + self.random_frac)]
            masked[to_mask] = self.mask_token_id
            if to_random.size:
                masked[to_random] = rng.choice(self.random_ids, size=to_random.size)
        if is_torch:
            import torch
            return torch.from_numpy(masked), torch.from_numpy(labels)
        return masked, labels


def text_mlm_masker(boundaries: WordBoundaries, **overrides) -> TextMasker:
    """Text-stream MLM of the paper: 15% of tokens, at most 20, 80/10/10, 2-3 token spans (p 0.2)."""
    return TextMasker(boundaries, **{**TEXT_MLM, **overrides})


def fusion_mlm_masker(boundaries: WordBoundaries, **overrides) -> TextMasker:
    """Caption MLM through the fusion encoder: 50% of tokens, at most 15."""
    return TextMasker(boundaries, **{**FUSION_MLM, **overrides})


# ---------------------------------------------------------------------------------------------
# image: BEiT block-wise masking, exact count


class BlockMasker:
    """BEiT block-wise masking on a ``grid x grid`` patch grid with exactly ``num_masks`` patches.

    The mask is a union of axis-aligned rectangles ("blocks"), each of area >= ``min_block`` and
    height/width ratio within ``aspect``. Like BEiT, rectangles of random area and aspect are
    dropped at random places while they add patches without overshooting. BEiT then stops and may
    return fewer patches; here the last rectangle is chosen among all allowed rectangles that add
    exactly the missing number (it may overlap earlier blocks), and a draw that cannot be
    finished is restarted. The constructor checks that the target is reachable at all.
    ``masker(rng) -> (grid*grid,) bool``, row-major (patch index = row * grid + col).
    """

    def __init__(self, grid: int, num_masks: int, min_block: int = 16, aspect=(0.3, 1 / 0.3),
                 max_block: int | None = None, attempts: int = 10, restarts: int = 64):
        if grid < 1:
            raise ValueError(f"BlockMasker: grid must be >= 1, got {grid}")
        if not 0 <= num_masks <= grid * grid:
            raise ValueError(f"BlockMasker: num_masks must be in [0, {grid * grid}] for a {grid}x{grid} "
                             f"grid, got {num_masks}")
        if num_masks and not 1 <= min_block <= num_masks:
            raise ValueError(f"BlockMasker: min_block must be in [1, num_masks={num_masks}], "
                             f"got {min_block}")
        lo, hi = float(aspect[0]), float(aspect[1])
        if not 0 < lo <= hi:
            raise ValueError(f"BlockMasker: aspect must be (low, high) with 0 < low <= high, got {aspect}")
        self.grid, self.num_masks, self.min_block = int(grid), int(num_masks), int(min_block)
        self.max_block = int(max_block) if max_block is not None else self.num_masks
        self.log_aspect = (math.log(lo), math.log(hi))
        self._rect_cache = None  # all allowed rectangle positions, built on first use
        self.attempts, self.restarts = int(attempts), int(restarts)
        eps = 1e-9
        self.shapes = [(h, w) for h in range(1, grid + 1) for w in range(1, grid + 1)
                       if self.min_block <= h * w <= max(self.max_block, self.min_block)
                       and lo - eps <= h / w <= hi + eps]
        self._shape_set = frozenset(self.shapes)
        if num_masks and not self.shapes:
            raise ValueError(f"BlockMasker: no rectangle of area >= {min_block} with aspect in "
                             f"{aspect} fits a {grid}x{grid} grid")
        # feasibility probe (fixed seed); its result is also the fallback pattern
        self._fallback = None
        if num_masks:
            probe = np.random.default_rng(0)
            for _ in range(max(self.restarts, 256)):
                found = self._draw(probe)
                if found is not None:
                    self._fallback = found
                    break
            if self._fallback is None:
                raise ValueError(
                    f"BlockMasker: could not place exactly {num_masks} masked patches as blocks of "
                    f">= {min_block} patches (aspect {lo:.2f}-{hi:.2f}) on a {grid}x{grid} grid; "
                    f"choose another num_masks or min_block")

    def __repr__(self):
        return (f"BlockMasker(grid={self.grid}, num_masks={self.num_masks}, "
                f"min_block={self.min_block}, aspect=({math.exp(self.log_aspect[0]):.3g}, "
                f"{math.exp(self.log_aspect[1]):.3g}))")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        if self.num_masks == 0:
            return np.zeros(self.grid * self.grid, dtype=bool)
        for _ in range(self.restarts):
            mask = self._draw(rng)
            if mask is not None:
                return mask.reshape(-1)
        # practically unreachable; a flipped / transposed copy of the probe's valid mask is still
        # a union of allowed blocks (the aspect range is symmetric under transposition)
        mask = self._fallback
        if rng.random() < 0.5 and math.isclose(self.log_aspect[0], -self.log_aspect[1]):
            mask = mask.T
        if rng.random() < 0.5:
            mask = mask[::-1]
        if rng.random() < 0.5:
            mask = mask[:, ::-1]
        return np.ascontiguousarray(mask).reshape(-1)

    def _draw(self, rng: np.random.Generator) -> np.ndarray | None:
        g = self.grid
        mask = np.zeros((g, g), dtype=bool)
        count = 0
        # phase 1: BEiT's random blocks
        while self.num_masks - count >= self.min_block:
            remaining = self.num_masks - count
            added = 0
            for _ in range(self.attempts):
                target = rng.uniform(self.min_block, max(self.min_block, min(remaining, self.max_block)))
                ratio = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target * ratio)))
                w = int(round(math.sqrt(target / ratio)))
                if (h, w) not in self._shape_set or h > g or w > g:
                    continue
                top = int(rng.integers(0, g - h + 1))
                left = int(rng.integers(0, g - w + 1))
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= remaining:
                    mask[top:top + h, left:left + w] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        # phase 2: one rectangle adding exactly what is missing
        remaining = self.num_masks - count
        if remaining == 0:
            return mask
        top, left, h, w = self._exact_block(mask, remaining, rng)
        if h == 0:
            return None
        mask[top:top + h, left:left + w] = True
        return mask

    def _exact_block(self, mask: np.ndarray, remaining: int, rng) -> tuple[int, int, int, int]:
        """A uniformly chosen allowed rectangle with exactly ``remaining`` unmasked patches
        (all allowed rectangles are scored at once on the integral image of the free patches)."""
        g = self.grid
        free = np.zeros((g + 1, g + 1), dtype=np.int32)
        free[1:, 1:] = np.cumsum(np.cumsum(~mask, axis=0), axis=1)
        free = free.reshape(-1)
        rect = self._rectangles
        new = free[rect[:, 4]] - free[rect[:, 5]] - free[rect[:, 6]] + free[rect[:, 7]]
        hits = np.flatnonzero(new == remaining)
        if hits.size == 0:
            return 0, 0, 0, 0
        top, left, h, w = rect[hits[int(rng.integers(hits.size))], :4].tolist()
        return top, left, h, w

    @property
    def _rectangles(self) -> np.ndarray:
        """(R, 8) int: top, left, h, w and the 4 integral-image corners of every allowed
        rectangle position (built once)."""
        if getattr(self, "_rect_cache", None) is None:
            g1 = self.grid + 1
            rows = []
            for h, w in self.shapes:
                tops, lefts = np.meshgrid(np.arange(self.grid - h + 1), np.arange(self.grid - w + 1),
                                          indexing="ij")
                t, l = tops.reshape(-1), lefts.reshape(-1)
                rows.append(np.stack([t, l, np.full_like(t, h), np.full_like(t, w),
                                      (t + h) * g1 + l + w, t * g1 + l + w, (t + h) * g1 + l,
                                      t * g1 + l], axis=1))
            self._rect_cache = np.concatenate(rows).astype(np.int64)
        return self._rect_cache


# BEiT's setting for 224 px / patch 16: 75 of 196 patches, blocks of at least 16
BEIT_GRID, BEIT_NUM_MASKS, BEIT_MIN_BLOCK = 14, 75, 16


def block_masker_for(grid: int, ratio: float = BEIT_NUM_MASKS / BEIT_GRID ** 2,
                     min_block: int | None = None, **kwargs) -> BlockMasker:
    """BlockMasker scaled to any grid: ``round(ratio * grid^2)`` patches, and by default a minimum
    block that keeps BEiT's block-to-image area ratio (16/196) but is never below 2x2 patches
    (nor above the mask count), so a 4x4 grid masks 6 patches in blocks of >= 4; the 14x14
    grid gives BEiT's 75 / 16."""
    num = int(round(ratio * grid * grid))
    if min_block is None:
        scaled = int(round(BEIT_MIN_BLOCK * grid * grid / BEIT_GRID ** 2))
        min_block = max(1, min(num, max(4, scaled)))
    return BlockMasker(grid, num, min_block=min_block, **kwargs)
