"""Decoding with :class:`xfm.model.decoder.TextDecoder`: greedy, beam search, answer ranking.

Conventions (those of Hugging Face ``generate``, which the official captioning code calls):
``max_length`` and ``min_length`` count the whole sequence, prompt included; below ``min_length``
EOS is forbidden; ``no_repeat_ngram_size`` n forbids a token that would repeat an n-gram already
in the sequence (prompt included). Scores are log-softmax of the raw logits with forbidden tokens
at -inf (not renormalised). Beam search keeps ``num_beams`` running beams, takes the top
2*num_beams candidates per step, moves a candidate ending in EOS (if ranked within the first
num_beams) to the finished hypotheses with score ``sum_logprobs / length ** length_penalty``
(length without the EOS, prompt included), and stops an item when it has num_beams hypotheses and
no running beam can beat the worst (``early_stopping=True``: as soon as it has num_beams).

Every search runs with the key/value cache (``use_cache=True``) or, as the reference, re-runs the
full sequence each step (``use_cache=False``); both give the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decoder import TextDecoder


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, T): prompt + generated tokens (EOS included), then pad
    scores: torch.Tensor  # (B,): greedy: summed log-probs of the generated tokens; beam: final beam score
    lengths: torch.Tensor  # (B,): tokens before the padding (prompt + generated incl. EOS)


class _Stepper:
    """Next-token logits for a growing batch of sequences, with or without the cache."""

    def __init__(self, decoder: TextDecoder, encoder_states, encoder_mask, expand: int, use_cache: bool):
        self.decoder, self.use_cache = decoder, use_cache
        if use_cache:
            self.cache = decoder.start(encoder_states, encoder_mask, expand=expand)
            self.fed = 0  # tokens of each row already in the cache
        else:  # the reference recomputes everything, cross-attention keys/values included
            self.states = encoder_states.repeat_interleave(expand, dim=0)
            self.mask = None if encoder_mask is None else encoder_mask.repeat_interleave(expand, dim=0)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.use_cache:
            logits = self.decoder.step(ids[:, self.fed:], self.cache)
            self.fed = ids.shape[1]
            return logits
        return self.decoder.next_logits(ids, self.states, self.mask)

    def reorder(self, index: torch.Tensor) -> None:
        if self.use_cache:
            self.cache.reorder(index)


def _prompt(prompt_ids, batch: int, device) -> torch.Tensor:
    p = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if p.dim() == 1:
        p = p.unsqueeze(0).expand(batch, -1)
    if p.dim() != 2 or p.shape[0] != batch or p.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (length,) or (batch={batch}, length) with length >= 1 "
                         f"(at least the BOS token), got shape {tuple(p.shape)}")
    return p.contiguous()


def _check_lengths(prompt_len: int, max_length: int, min_length: int, num_beams: int, no_repeat: int):
    if max_length <= prompt_len:
        raise ValueError(f"max_length {max_length} counts the prompt and must exceed its {prompt_len} tokens")
    if not 0 <= min_length <= max_length:
        raise ValueError(f"min_length must be in 0..max_length ({max_length}), got {min_length}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if no_repeat < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0, got {no_repeat}")


def ban_repeated_ngrams(ids: torch.Tensor, logprobs: torch.Tensor, n: int) -> None:
    """In place: -inf for every token that would complete an n-gram already present in ``ids``."""
    length = ids.shape[1]
    if n <= 0 or length < n:  # no complete n-gram yet
        return
    if n == 1:
        logprobs.scatter_(1, ids, float("-inf"))
        return
    windows = ids.unfold(1, n, 1)  # (R, W, n)
    last = ids[:, length - n + 1:]  # the n-1 tokens the next one would extend
    match = (windows[:, :, :-1] == last[:, None, :]).all(-1)  # (R, W)
    banned = torch.zeros_like(logprobs).scatter_add_(1, windows[:, :, -1], match.to(logprobs.dtype))
    logprobs.masked_fill_(banned > 0, float("-inf"))


def _next_logprobs(logits, ids, eos_token_id, min_length, no_repeat):
    logprobs = F.log_softmax(logits.float(), dim=-1)
    if eos_token_id is not None and ids.shape[1] < min_length:
        logprobs[:, eos_token_id] = float("-inf")
    ban_repeated_ngrams(ids, logprobs, no_repeat)
    return logprobs


@torch.no_grad()
def greedy_search(decoder: TextDecoder, encoder_states, encoder_mask=None, prompt_ids=(0,), *,
                  max_length: int = 20, min_length: int = 0, eos_token_id: int | None = 2,
                  pad_token_id: int = 1, no_repeat_ngram_size: int = 0,
                  use_cache: bool = True) -> GenerationOutput:
    """Batched greedy decoding; rows that produced EOS get ``pad_token_id`` afterwards."""
    batch = encoder_states.shape[0]
    ids = _prompt(prompt_ids, batch, encoder_states.device)
    _check_lengths(ids.shape[1], max_length, min_length, 1, no_repeat_ngram_size)
    step = _Stepper(decoder, encoder_states, encoder_mask, 1, use_cache)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    lengths = torch.full((batch,), ids.shape[1], dtype=torch.long, device=ids.device)
    scores = torch.zeros(batch, dtype=torch.float32, device=ids.device)
    while ids.shape[1] < max_length:
        logprobs = _next_logprobs(step(ids), ids, eos_token_id, min_length, no_repeat_ngram_size)
        best, token = logprobs.max(-1)
        token = token.masked_fill(done, pad_token_id)
        scores += best.masked_fill(done, 0.0)
        lengths += (~done).long()
        ids = torch.cat((ids, token[:, None]), dim=1)
        if eos_token_id is not None:
            done |= token.eq(eos_token_id)
            if bool(done.all()):
                break
    return GenerationOutput(ids, scores, lengths)


class _Hypotheses:
    """Finished beams of one item: the best ``num_beams`` by length-penalised score."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool):
        self.num_beams, self.length_penalty, self.early_stopping = num_beams, length_penalty, early_stopping
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst = 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / (tokens.shape[-1] ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_running: float, cur_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping:
            return True
        return self.worst >= best_running / (cur_len ** self.length_penalty)


@torch.no_grad()
def beam_search(decoder: TextDecoder, encoder_states, encoder_mask=None, prompt_ids=(0,), *,
                num_beams: int = 3, max_length: int = 20, min_length: int = 0,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                eos_token_id: int | None = 2, pad_token_id: int = 1, early_stopping: bool = False,
                use_cache: bool = True) -> GenerationOutput:
    """Batched beam search (see the module doc); returns the best hypothesis per item."""
    batch, k = encoder_states.shape[0], num_beams
    prompt = _prompt(prompt_ids, batch, encoder_states.device)
    _check_lengths(prompt.shape[1], max_length, min_length, k, no_repeat_ngram_size)
    device = prompt.device
    ids = prompt.repeat_interleave(k, dim=0)  # (B*K, P)
    step = _Stepper(decoder, encoder_states, encoder_mask, k, use_cache)
    beam_scores = torch.zeros(batch, k, dtype=torch.float32, device=device)
    beam_scores[:, 1:] = -1e9  # all beams start equal: let only the first one expand at step 1
    beam_scores = beam_scores.view(-1)
    hyps = [_Hypotheses(k, length_penalty, early_stopping) for _ in range(batch)]
    done = [False] * batch
    while ids.shape[1] < max_length:
        cur_len = ids.shape[1]
        logprobs = _next_logprobs(step(ids), ids, eos_token_id, min_length, no_repeat_ngram_size)
        vocab = logprobs.shape[-1]
        cand = (logprobs + beam_scores[:, None]).view(batch, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1, largest=True, sorted=True)
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        top_scores, top_beam, top_tok = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
        next_scores = [0.0] * (batch * k)
        next_tokens = [pad_token_id] * (batch * k)
        next_rows = [0] * (batch * k)
        for b in range(batch):
            if done[b]:
                for j in range(k):
                    next_rows[b * k + j] = b * k
                continue
            j = 0
            for rank in range(2 * k):
                tok, score, row = top_tok[b][rank], top_scores[b][rank], b * k + top_beam[b][rank]
                if eos_token_id is not None and tok == eos_token_id:
                    if rank < k:
                        hyps[b].add(ids[row].clone(), score)
                else:
                    next_scores[b * k + j], next_tokens[b * k + j], next_rows[b * k + j] = score, tok, row
                    j += 1
                if j == k:
                    break
            done[b] = hyps[b].is_done(max(top_scores[b]), cur_len)
        rows = torch.tensor(next_rows, device=device)
        ids = torch.cat((ids.index_select(0, rows), torch.tensor(next_tokens, device=device)[:, None]), dim=1)
        step.reorder(rows)
        beam_scores = torch.tensor(next_scores, dtype=torch.float32, device=device)
        if all(done):
            break
    for b in range(batch):
        if not done[b]:
            for j in range(k):
                hyps[b].add(ids[b * k + j], float(beam_scores[b * k + j]))
    # the last of the stably sorted hypotheses: on a score tie the later one, as Hugging Face picks
    best = [sorted(h.beams, key=lambda sb: sb[0])[-1] for h in hyps]
    lengths = [t.shape[0] + (1 if eos_token_id is not None and t.shape[0] < max_length else 0) for _, t in best]
    out = torch.full((batch, max(lengths)), pad_token_id, dtype=torch.long, device=device)
    for b, (_, tokens) in enumerate(best):
        out[b, :tokens.shape[0]] = tokens
        if lengths[b] > tokens.shape[0]:
            out[b, tokens.shape[0]] = eos_token_id
    return GenerationOutput(out, torch.tensor([s for s, _ in best], device=device),
                            torch.tensor(lengths, device=device))


def generate(decoder: TextDecoder, encoder_states, encoder_mask=None, prompt_ids=(0,), *,
             num_beams: int = 1, **kwargs) -> GenerationOutput:
    """Greedy when ``num_beams == 1``, else beam search (``length_penalty``, ``early_stopping``)."""
    if num_beams == 1:
        for key in ("length_penalty", "early_stopping"):
            kwargs.pop(key, None)
        return greedy_search(decoder, encoder_states, encoder_mask, prompt_ids, **kwargs)
    return beam_search(decoder, encoder_states, encoder_mask, prompt_ids, num_beams=num_beams, **kwargs)


# ----------------------------------------------------------------------------- VQA answer ranking
@torch.no_grad()
def rank_answers(decoder: TextDecoder, encoder_states, encoder_mask, answer_ids, answer_mask, k: int,
                 score: str = "original", chunk_size: int | None = None):
    """Rank a fixed answer list per question, as the official VQA model does.

    ``answer_ids``/``answer_mask`` (A, La): every answer tokenized as ``BOS a... EOS pad...``.
    1. From BOS alone, the decoder's first-token probabilities of every answer's first token;
       the top ``k`` answers per question are kept.
    2. Those are re-scored by their full log-likelihood (summed token log-probs, EOS included) and
       ranked by softmax over the k scores.
    ``score='original'`` adds the first token's log-prob again (the official code counts it twice;
    the published numbers come from it); ``'corrected'`` is the plain log-likelihood.
    At evaluation the official decoder sees an all-ones mask over the question
    (``encoder_mask=None`` here). ``chunk_size``: questions per re-scoring pass; by default as
    many as keep that pass's logits (questions * k * answer length * vocabulary) under
    ``2**28`` elements (1 GiB in float32; the base model with k=128 scores ~5 questions a pass).
    Returns ``(topk_ids (Q,k) indices into the answer list, best first, topk_probs (Q,k))``.
    """
    if score not in ("original", "corrected"):
        raise ValueError(f"score must be 'original' or 'corrected', got {score!r}")
    num_answers = answer_ids.shape[0]
    if not 1 <= k <= num_answers:
        raise ValueError(f"k must be in 1..{num_answers} (the answer-list size), got {k}")
    if answer_ids.shape[1] < 2 or not bool(answer_mask[:, :2].bool().all()):
        raise ValueError("every answer needs BOS + at least one token (answer_mask[:, :2] all ones)")
    bos = answer_ids[:, 0]
    if not bool(bos.eq(bos[0]).all()):
        raise ValueError("every answer must start with the same BOS token")
    num_q = encoder_states.shape[0]
    cross = decoder.cross_kv(encoder_states, encoder_mask)
    start = bos[:1].expand(num_q)[:, None]
    first = F.log_softmax(decoder.next_logits(start, cross=cross).float(), dim=-1)
    first = first.index_select(1, answer_ids[:, 1])  # (Q, A)
    top_first, top_ids = first.topk(k, dim=1)
    chunk = chunk_size or max(1, (1 << 28) // (k * answer_ids.shape[1] * decoder.config.vocab_size))
    nll = []
    for s in range(0, num_q, chunk):
        q = torch.arange(s, min(s + chunk, num_q), device=answer_ids.device)
        picked = top_ids[q].reshape(-1)
        ids, mask = answer_ids.index_select(0, picked), answer_mask.index_select(0, picked)
        labels = ids.masked_fill(~mask.bool(), -100)
        out = decoder(ids, mask, labels=labels, reduction="none", cross=cross.index_select(q.repeat_interleave(k)))
        nll.append(out.loss.view(len(q), k))
    loglik = -torch.cat(nll)
    if score == "original":
        loglik = loglik + top_first
    probs = F.softmax(loglik, dim=-1)
    probs, order = probs.topk(k, dim=1)
    return top_ids.gather(1, order), probs


@torch.no_grad()
def score_answers(decoder: TextDecoder, encoder_states, encoder_mask, answer_ids, answer_mask,
                  score: str = "original") -> torch.Tensor:
    """(Q, A) log-likelihood of every answer for every question (``original``: + the first
    token's log-prob once more); what ``rank_answers`` orders with k = A, computed directly in
    one pass (Q * A rows of logits: for small answer lists and checks)."""
    num_q, num_a = encoder_states.shape[0], answer_ids.shape[0]
    cross = decoder.cross_kv(encoder_states, encoder_mask).repeat_interleave(num_a)
    ids, mask = answer_ids.repeat(num_q, 1), answer_mask.repeat(num_q, 1)
    out = decoder(ids, mask, labels=ids.masked_fill(~mask.bool(), -100), reduction="none", cross=cross)
    loglik = -out.loss.view(num_q, num_a)
    if score == "original":
        first = F.log_softmax(out.logits[:, 0].float(), dim=-1).gather(1, ids[:, 1:2]).view(num_q, num_a)
        loglik = loglik + first
    return loglik
