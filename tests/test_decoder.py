"""Answer/caption decoder and generation: parity with the official decoder, cached == uncached
decoding, search rules (EOS, min length, no-repeat n-grams, beam bookkeeping), answer ranking,
losses, gradients, and the official loader keeping the fusion embeddings for it.

The decoder is built from a tiny official-layout checkpoint (random tensors with a realistic
spread, ``tests/data/xfm_official_keys_tiny.json``), so its outputs depend visibly on the prompt
and on the encoder states (a near-uniform random init would make every row decode alike).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from test_checkpoint_official import layout, official_state_dict
from test_model_zero3_rule import ParameterReadAudit
from xfm.model import XFM, count_parameters
from xfm.model.decoder import DecoderConfig, TextDecoder, decoder_labels, sequence_nll
from xfm.model.generation import beam_search, greedy_search, rank_answers, score_answers
from xfm.model_config import model_config

BOS, PAD, EOS = 0, 1, 2
HEADS, WIDTH, VOCAB = 4, 64, 1000
FE = "fusion_encoder.roberta.embeddings."


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sd = official_state_dict(layout("tiny"), seed=3)
    path = tmp_path_factory.mktemp("official") / "xfm_tiny.th"
    torch.save({"model": sd}, path)
    return path, sd


@pytest.fixture(scope="module")
def model(official):
    return XFM.from_pretrained(official[0], num_heads=HEADS)


@pytest.fixture(scope="module")
def decoder(model):
    return TextDecoder.from_fusion(model).eval()


@pytest.fixture(scope="module")
def gen_decoder(decoder):
    """The decoder with a stronger cross-attention output, so that rows with different encoder
    states decode differently (a batch whose rows agree would hide row mix-ups)."""
    dec = copy.deepcopy(decoder)
    with torch.no_grad():
        for layer in dec.layer:
            layer.crossattention.output.dense.weight.mul_(4.0)
    return dec


def encoder_inputs(seed=0, batch=3, length=17, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    states = 2.0 * torch.randn(batch, length, WIDTH, generator=g)
    mask = None
    if pad_from is not None:
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[1, pad_from:] = 0
    return states, mask


def answers(seed=0, count=9, length=6):
    """``<s> w... </s> <pad>...`` rows of different lengths (ids == PAD exactly where mask == 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((count, length), PAD)
    mask = torch.zeros(count, length, dtype=torch.long)
    for r in range(count):
        n = 3 + r % (length - 2)  # BOS + 1.. words + EOS
        ids[r, 0] = BOS
        ids[r, 1:n - 1] = torch.randint(5, VOCAB, (n - 2,), generator=g)
        ids[r, n - 1] = EOS
        mask[r, :n] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the official decoder
def official_decoder_reference(sd, ids, enc, enc_mask, layers=2):
    """The official VQA decoder (RobertaForCausalLM loaded from the ``fusion_encoder.*`` tensors),
    written out from the spec: RoBERTa embeddings with positions from the ids (cumsum of non-pad
    + pad id) and token type 0; per layer causal post-LN self-attention with
    ``(1 - causal*pad_mask) * -10000``, cross-attention ``(1 - mask) * -1e9``, GELU FFN; the LM
    head with the word-embedding matrix as decoder."""
    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    def attention(x, ctx, add, p):
        b, lq, d = x.shape
        dh = d // HEADS
        q = lin(x, p + ".self.query").view(b, lq, HEADS, dh).transpose(1, 2)
        k = lin(ctx, p + ".self.key").view(b, ctx.shape[1], HEADS, dh).transpose(1, 2)
        v = lin(ctx, p + ".self.value").view(b, ctx.shape[1], HEADS, dh).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(dh) + add).softmax(-1)
        return ln(lin((probs @ v).transpose(1, 2).reshape(b, lq, d), p + ".output.dense") + x, p + ".output.LayerNorm")

    not_pad = ids.ne(PAD).long()
    pos = torch.cumsum(not_pad, 1) * not_pad + PAD
    word = sd[FE + "word_embeddings.weight"]
    x = word[ids] + sd[FE + "token_type_embeddings.weight"][0] + sd[FE + "position_embeddings.weight"][pos]
    x = ln(x, FE + "LayerNorm")
    length = ids.shape[1]
    causal = torch.tril(torch.ones(length, length))
    self_add = ((1.0 - causal[None] * not_pad[:, None, :].float()) * -10000.0)[:, None]
    cross_add = ((1.0 - enc_mask.float()) * -1e9)[:, None, None, :]
    for i in range(layers):
        p = f"fusion_encoder.roberta.encoder.layer.{i}"
        x = attention(x, x, self_add, p + ".attention")
        x = attention(x, enc, cross_add, p + ".crossattention")
        x = ln(lin(F.gelu(lin(x, p + ".intermediate.dense")), p + ".output.dense") + x, p + ".output.LayerNorm")
    h = ln(F.gelu(lin(x, "fusion_encoder.lm_head.dense")), "fusion_encoder.lm_head.layer_norm")
    return h @ word.T + sd["fusion_encoder.lm_head.bias"]


def test_decoder_from_official_checkpoint_matches_official_decoder(official, model, decoder):
    _, sd = official
    ids, mask = answers()
    enc, enc_mask = encoder_inputs(batch=len(ids), pad_from=9)
    enc_mask = torch.ones(len(ids), 17, dtype=torch.long) if enc_mask is None else enc_mask
    with torch.no_grad():
        got = decoder(ids, mask, enc, enc_mask).logits
        want = official_decoder_reference(sd, ids, enc, enc_mask)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-5, rtol=0)
    assert decoder.init_notes["embeddings"].startswith("official fusion encoder embeddings")


def test_loader_keeps_fusion_embeddings_beside_the_model(official, model, tmp_path):
    path, sd = official
    kept = model.auxiliary_state["fusion_embeddings"]
    assert set(kept) == {"position_embeddings.weight", "token_type_embeddings.weight",
                         "LayerNorm.weight", "LayerNorm.bias"}
    for k, v in kept.items():
        assert torch.equal(v, sd[FE + k]) and not isinstance(v, torch.nn.Parameter)
    reason = model.load_report.ignored[FE + "position_embeddings.weight"]
    assert "auxiliary_state['fusion_embeddings']" in reason
    # the pretraining model itself is unchanged: same parameters, same count
    fresh = XFM(model_config("tiny"))
    assert set(model.state_dict()) == set(fresh.state_dict())
    assert count_parameters(model) == count_parameters(fresh)
    # they survive our format, and a decoder built from the reloaded model is the same decoder
    model.save_pretrained(tmp_path / "ours")
    again = XFM.from_pretrained(tmp_path / "ours")
    for k, v in kept.items():
        assert torch.equal(again.auxiliary_state["fusion_embeddings"][k], v)
    dec_a, dec_b = TextDecoder.from_fusion(model), TextDecoder.from_fusion(again)
    for (na, a), (nb, b) in zip(dec_a.state_dict().items(), dec_b.state_dict().items()):
        assert na == nb and torch.equal(a, b), na
    # a model without them (pretrained here) saves no auxiliary file, and a stale one is removed
    assert (tmp_path / "ours" / "auxiliary.safetensors").is_file()
    fresh.save_pretrained(tmp_path / "ours")
    assert not (tmp_path / "ours" / "auxiliary.safetensors").exists()
    assert not hasattr(XFM.from_pretrained(tmp_path / "ours"), "auxiliary_state")


def test_from_fusion_copies_layers_head_and_documented_embedding_init(model):
    dec = TextDecoder.from_fusion(model, num_layers=1)
    assert len(dec.layer) == 1
    for k, v in model.fusion.encoder.layer[0].state_dict().items():
        assert torch.equal(dec.layer[0].state_dict()[k], v), k
    assert torch.equal(dec.embeddings.word_embeddings.weight, model.heads.fusion_mlm.decoder.weight)
    assert dec.lm_head.decoder.weight is dec.embeddings.word_embeddings.weight  # tied
    # copies, not shared storage: fine-tuning the decoder leaves the model untouched
    assert dec.embeddings.word_embeddings.weight.data_ptr() != model.heads.fusion_mlm.decoder.weight.data_ptr()
    # a model without fusion embeddings: the language encoder's (documented)
    plain = copy.deepcopy(model)
    del plain.auxiliary_state
    dec = TextDecoder.from_fusion(plain)
    assert torch.equal(dec.embeddings.position_embeddings.weight, model.text.embeddings.position_embeddings.weight)
    assert dec.init_notes["embeddings"].startswith("language encoder embeddings")
    # explicit tensors, official names accepted; a wrong shape is an error naming the key
    given = {FE + "position_embeddings.weight": torch.zeros(64, WIDTH), FE + "token_type_embeddings.weight": torch.ones(1, WIDTH),
             FE + "LayerNorm.weight": torch.ones(WIDTH), FE + "LayerNorm.bias": torch.zeros(WIDTH)}
    dec = TextDecoder.from_fusion(model, embeddings_state=given)
    assert torch.equal(dec.embeddings.token_type_embeddings.weight, torch.ones(1, WIDTH))
    given[FE + "position_embeddings.weight"] = torch.zeros(32, WIDTH)
    with pytest.raises(ValueError, match="position_embeddings.weight has shape"):
        TextDecoder.from_fusion(model, embeddings_state=given)
    with pytest.raises(ValueError, match="num_layers must be in 1..2"):
        TextDecoder.from_fusion(model, num_layers=3)
    # other cross width (e.g. attending to question states of another width): fresh key/value
    dec = TextDecoder.from_fusion(model, cross_width=32)
    assert dec.layer[0].crossattention.self.key.weight.shape == (WIDTH, 32)
    assert "cross_kv" in dec.init_notes
    assert torch.equal(dec.layer[0].crossattention.self.query.weight,
                       model.fusion.encoder.layer[0].crossattention.self.query.weight)


def test_decoder_is_the_fusion_encoder_run_causally(model, decoder):
    """The decoder's layers are the fusion encoder's stack under a causal mask; with one layer,
    position t is the fusion layer over tokens 0..t (a single token: the same computation)."""
    ids = answers(count=3, length=7)[0][:, :5]  # unpadded prefixes
    mask = torch.ones(3, 5, dtype=torch.long)
    enc, enc_mask = encoder_inputs(pad_from=11)
    cross_add = (1.0 - enc_mask.float())[:, None, None, :] * -1e9
    causal_add = (1.0 - torch.tril(torch.ones(5, 5)))[None, None] * -10000.0
    with torch.no_grad():
        out = decoder(ids, mask, enc, enc_mask)
        emb = decoder.embeddings(ids, mask)
        want = model.fusion.encoder(emb, causal_add, enc, cross_add)
        torch.testing.assert_close(out.hidden, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits, model.fusion_mlm_logits(out.hidden), atol=1e-5, rtol=0)
        one = TextDecoder.from_fusion(model, num_layers=1).eval()
        out1 = one(ids, mask, enc, enc_mask)
        layer0 = model.fusion.encoder.layer[0]
        for t in range(5):
            prefix = layer0(emb[:, :t + 1], None, enc, cross_add)
            torch.testing.assert_close(out1.hidden[:, t], prefix[:, t], atol=1e-5, rtol=0)
        # control: the same layers NOT run causally differ from the decoder before the last token
        full = model.fuse(enc, enc_mask, emb, mask)
        assert (full[:, 0] - out.hidden[:, 0]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- losses, gradients
def test_sequence_nll_and_label_smoothing_written_out(decoder):
    ids, mask = answers()
    enc, _ = encoder_inputs(batch=len(ids))
    labels = decoder_labels(ids, mask)
    with torch.no_grad():
        out = decoder(ids, mask, enc, labels=labels)
        logp = F.log_softmax(out.logits.float(), -1)
        want = torch.stack([-sum(logp[r, t - 1, ids[r, t]] for t in range(1, int(mask[r].sum())))
                            for r in range(len(ids))])
        torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=0)
        n_tokens = int(mask.sum() - len(ids))
        mean = decoder(ids, mask, enc, labels=labels, reduction="mean").loss
        torch.testing.assert_close(mean, want.sum() / n_tokens)
        # official label smoothing: weight 1-s on the label, s/V on each other class
        s = 0.1
        smooth = decoder(ids, mask, enc, labels=labels, reduction="none", label_smoothing=s).loss
        want_s = []
        for r in range(len(ids)):
            total = 0.0
            for t in range(1, int(mask[r].sum())):
                target = torch.full((VOCAB,), s / VOCAB)
                target[ids[r, t]] = 1 - s
                total = total - (target * logp[r, t - 1]).sum()
            want_s.append(total)
        torch.testing.assert_close(smooth, torch.stack(want_s), atol=1e-4, rtol=0)
        # a caption prompt is not trained on; padding columns change nothing
        prompted = decoder(ids, mask, enc, labels=decoder_labels(ids, mask, ignore_prefix=2)).loss
        torch.testing.assert_close(prompted, want - torch.stack([-logp[r, 0, ids[r, 1]] for r in range(len(ids))]), atol=1e-5, rtol=0)
        wide = torch.cat((ids, torch.full((len(ids), 3), PAD)), 1)
        wide_mask = torch.cat((mask, torch.zeros(len(ids), 3, dtype=torch.long)), 1)
        torch.testing.assert_close(decoder(wide, wide_mask, enc, labels=decoder_labels(wide, wide_mask)).loss, want, atol=1e-5, rtol=0)


def test_gradient_reaches_every_decoder_parameter_and_the_encoder_states(decoder):
    dec = copy.deepcopy(decoder).train()
    dec.grad_checkpointing = True  # the checkpointed path must give gradients too
    ids, mask = answers()
    enc, enc_mask = encoder_inputs(batch=len(ids), pad_from=10)
    enc.requires_grad_(True)
    loss = dec(ids, mask, enc, enc_mask, labels=decoder_labels(ids, mask), reduction="mean", label_smoothing=0.1).loss
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert enc.grad.abs().sum() > 0
    assert enc.grad[1, 10:].abs().max() == 0  # masked encoder states get nothing


def test_decoder_reads_parameters_only_inside_their_modules(decoder):
    dec = copy.deepcopy(decoder).train()
    ids, mask = answers(count=3)
    enc, enc_mask = encoder_inputs(pad_from=8)
    audit = ParameterReadAudit(dec)
    try:
        with audit:
            dec(ids, mask, enc, enc_mask, labels=decoder_labels(ids, mask)).loss.sum()
            cache = dec.start(enc, enc_mask)
            dec.step(ids[:, :2], cache)
            dec.step(ids[:, 2:3], cache)
    finally:
        audit.remove()
    assert not audit.violations, sorted(audit.violations)


def test_bad_inputs_are_rejected(decoder):
    ids, mask = answers(count=3)
    enc, _ = encoder_inputs()
    left = mask.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        decoder(ids, left, enc)
    with pytest.raises(ValueError, match="too long"):
        decoder(torch.zeros(3, 70, dtype=torch.long), None, enc)
    with pytest.raises(ValueError, match="3 decoder rows but 2 encoder rows"):
        decoder(ids, mask, enc[:2])
    with pytest.raises(ValueError, match="max_length 3 counts the prompt"):
        greedy_search(decoder, enc, None, [BOS, 7, 8], max_length=3)
    with pytest.raises(ValueError, match="reduction must be"):
        sequence_nll(torch.zeros(3, 5, VOCAB), ids[:, :5], reduction="avg")
    a_ids, a_mask = answers()
    with pytest.raises(ValueError, match="k must be in 1..9"):
        rank_answers(decoder, enc, None, a_ids, a_mask, 10)


# ----------------------------------------------------------------------------- cached == uncached
PROMPTS = [[BOS], [BOS, 17, 230], torch.tensor([[BOS, 5, 6], [BOS, 900, 901], [BOS, 44, 45]])]


def test_cached_step_logits_equal_full_forward(gen_decoder):
    decoder = gen_decoder
    enc, enc_mask = encoder_inputs(pad_from=9)
    ids = torch.tensor([[BOS, 11, 12, 13, 14, 15, 16], [BOS, 21, 22, 23, 24, 25, 26], [BOS, 5, 5, 5, 5, 5, 5]])
    with torch.no_grad():
        full = decoder(ids, None, enc, enc_mask).logits
        cache = decoder.start(enc, enc_mask)
        got = [decoder.step(ids[:, :3], cache)]
        got += [decoder.step(ids[:, t:t + 1], cache) for t in range(3, 7)]
    torch.testing.assert_close(torch.stack(got, 1), full[:, 2:], atol=1e-5, rtol=0)
    assert cache.length == 7 and cache.keys[0].shape == (3, HEADS, 7, WIDTH // HEADS)


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_cached_greedy_equals_uncached(gen_decoder, prompt):
    decoder = gen_decoder
    enc, enc_mask = encoder_inputs(seed=prompt, pad_from=10)
    kw = dict(max_length=14, min_length=7, no_repeat_ngram_size=2, eos_token_id=EOS, pad_token_id=PAD)
    cached = greedy_search(decoder, enc, enc_mask, PROMPTS[prompt], use_cache=True, **kw)
    plain = greedy_search(decoder, enc, enc_mask, PROMPTS[prompt], use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(cached.scores, plain.scores, atol=1e-4, rtol=0)
    assert len({tuple(r) for r in cached.sequences.tolist()}) == 3  # the rows really differ


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_cached_beam_search_equals_uncached(gen_decoder, prompt, length_penalty):
    decoder = gen_decoder
    dec = copy.deepcopy(decoder)
    with torch.no_grad():
        dec.lm_head.bias[EOS] += 1.0  # EOS now competes: finished hypotheses and early ends happen
    enc, enc_mask = encoder_inputs(seed=10 + prompt, pad_from=10)
    kw = dict(num_beams=3, max_length=12, min_length=5, no_repeat_ngram_size=2,
              length_penalty=length_penalty, eos_token_id=EOS, pad_token_id=PAD)
    cached = beam_search(dec, enc, enc_mask, PROMPTS[prompt], use_cache=True, **kw)
    plain = beam_search(dec, enc, enc_mask, PROMPTS[prompt], use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(cached.scores, plain.scores, atol=1e-4, rtol=0)
    assert len({tuple(r) for r in cached.sequences.tolist()}) == 3


def test_beam_search_needs_the_cache_reordered(gen_decoder, monkeypatch):
    decoder = gen_decoder
    """Control: a cache that keeps its rows where they were when beams move decodes other tokens
    (so the equality above really checks the beam bookkeeping of the cache)."""
    enc, enc_mask = encoder_inputs(seed=4, pad_from=10)
    kw = dict(num_beams=3, max_length=12, eos_token_id=None, pad_token_id=PAD)
    good = beam_search(decoder, enc, enc_mask, [BOS], **kw).sequences
    from xfm.model.decoder import DecoderCache
    monkeypatch.setattr(DecoderCache, "reorder", lambda self, index: None)
    broken = beam_search(decoder, enc, enc_mask, [BOS], **kw).sequences
    assert not torch.equal(good, broken)


# ----------------------------------------------------------------------------- search rules
def test_eos_min_length_and_padding(gen_decoder):
    decoder = gen_decoder
    dec = copy.deepcopy(decoder)
    with torch.no_grad():
        dec.lm_head.bias[EOS] += 100.0  # EOS wins wherever it is allowed
    enc, _ = encoder_inputs()
    for use_cache in (True, False):
        out = greedy_search(dec, enc, None, [BOS, 9], max_length=12, min_length=6, use_cache=use_cache)
        # EOS is forbidden while the sequence (prompt included) is shorter than min_length
        assert out.sequences.shape == (3, 7)
        assert (out.sequences[:, 6] == EOS).all() and (out.sequences[:, 2:6] != EOS).all()
        assert out.lengths.tolist() == [7, 7, 7]
        beam = beam_search(dec, enc, None, [BOS, 9], num_beams=2, max_length=12, min_length=6, use_cache=use_cache)
        assert beam.sequences.shape == (3, 7) and (beam.sequences[:, 6] == EOS).all()
    # rows that end early are padded while the others go on
    ragged = copy.deepcopy(decoder)
    enc2, _ = encoder_inputs(seed=5)
    first = greedy_search(ragged, enc2, None, [BOS], max_length=10, eos_token_id=None).sequences
    stop = int(first[0, 3])  # make row 0's 4th token the end token
    out = greedy_search(ragged, enc2, None, [BOS], max_length=10, eos_token_id=stop, pad_token_id=PAD)
    assert torch.equal(out.sequences[0, :4], first[0, :4]) and out.lengths[0] == 4
    assert (out.sequences[0, 4:] == PAD).all()
    assert out.lengths.max() > 4  # the other rows went on


def test_no_repeat_ngram(gen_decoder):
    decoder = gen_decoder
    dec = copy.deepcopy(decoder)
    with torch.no_grad():
        dec.lm_head.bias[77] += 100.0  # the model wants to say 77 forever
    enc, _ = encoder_inputs()
    free = greedy_search(dec, enc, None, [BOS], max_length=10, eos_token_id=None).sequences
    assert (free[:, 1:] == 77).all()  # control: it does repeat without the rule
    for n in (1, 2, 3):
        for search in ("greedy", "beam"):
            if search == "greedy":
                seqs = greedy_search(dec, enc, None, [BOS], max_length=10, eos_token_id=None, no_repeat_ngram_size=n).sequences
            else:
                seqs = beam_search(dec, enc, None, [BOS], num_beams=3, max_length=10, eos_token_id=None, no_repeat_ngram_size=n).sequences
            for row in seqs.tolist():
                grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
                assert len(grams) == len(set(grams)), (n, search, row)


def test_one_beam_is_greedy_and_beam_scores_are_the_sequence_logprob(gen_decoder):
    decoder = gen_decoder
    enc, enc_mask = encoder_inputs(seed=7, pad_from=12)
    greedy = greedy_search(decoder, enc, enc_mask, [BOS, 30], max_length=11, eos_token_id=None)
    one = beam_search(decoder, enc, enc_mask, [BOS, 30], num_beams=1, max_length=11, eos_token_id=None)
    assert torch.equal(greedy.sequences, one.sequences)
    dec = copy.deepcopy(decoder)
    with torch.no_grad():
        dec.lm_head.bias[EOS] += 3.0
    for lp in (1.0, 0.5):
        out = beam_search(dec, enc, enc_mask, [BOS, 30], num_beams=4, max_length=11, min_length=4,
                          length_penalty=lp, eos_token_id=EOS, pad_token_id=PAD)
        mask = (torch.arange(out.sequences.shape[1])[None] < out.lengths[:, None]).long()
        with torch.no_grad():
            logp = F.log_softmax(dec(out.sequences, mask, enc, enc_mask).logits.float(), -1)
        for r in range(3):
            n = int(out.lengths[r])
            total = sum(float(logp[r, t - 1, out.sequences[r, t]]) for t in range(2, n))
            ended = int(out.sequences[r, n - 1]) == EOS
            hyp_len = n - 1 if ended else n  # the penalty counts the hypothesis without its EOS
            assert float(out.scores[r]) == pytest.approx(total / hyp_len ** lp, abs=1e-4)
        assert any(int(out.sequences[r, int(out.lengths[r]) - 1]) == EOS for r in range(3))


# ----------------------------------------------------------------------------- answer ranking
def loglik_by_steps(decoder, enc, ids, mask):
    """(Q, A) answer log-likelihoods computed token by token through the cache (independent of
    the teacher-forced loss code), plus each answer's first-token log-prob."""
    q, a = enc.shape[0], ids.shape[0]
    out, first = torch.zeros(q, a), torch.zeros(q, a)
    with torch.no_grad():
        for j in range(a):
            cache = decoder.start(enc)
            n = int(mask[j].sum())
            for t in range(1, n):
                lp = F.log_softmax(decoder.step(ids[j, t - 1:t].expand(q, 1), cache).float(), -1)[:, ids[j, t]]
                out[:, j] += lp
                if t == 1:
                    first[:, j] = lp
    return out, first


@pytest.mark.parametrize("score", ["original", "corrected"])
def test_rank_answers_with_k_all_equals_full_scoring(gen_decoder, score):
    decoder = gen_decoder
    a_ids, a_mask = answers(seed=2, count=9)
    enc, _ = encoder_inputs(seed=3, batch=4)
    loglik, first = loglik_by_steps(decoder, enc, a_ids, a_mask)
    full = loglik + first if score == "original" else loglik
    torch.testing.assert_close(score_answers(decoder, enc, None, a_ids, a_mask, score), full, atol=1e-4, rtol=0)
    top_ids, top_probs = rank_answers(decoder, enc, None, a_ids, a_mask, k=9, score=score)
    assert torch.equal(top_ids, full.argsort(1, descending=True))
    torch.testing.assert_close(top_probs, full.softmax(1).sort(1, descending=True).values, atol=1e-5, rtol=0)
    # processed in chunks of questions: the same
    again = rank_answers(decoder, enc, None, a_ids, a_mask, k=9, score=score, chunk_size=3)
    assert torch.equal(again[0], top_ids)


def test_rank_answers_top_k_is_chosen_by_first_token(gen_decoder):
    decoder = gen_decoder
    a_ids, a_mask = answers(seed=4, count=9)
    enc, _ = encoder_inputs(seed=5, batch=3)
    loglik, first = loglik_by_steps(decoder, enc, a_ids, a_mask)
    top_ids, top_probs = rank_answers(decoder, enc, None, a_ids, a_mask, k=4)
    for q in range(3):
        assert set(top_ids[q].tolist()) == set(first[q].topk(4).indices.tolist())
        scores = (loglik + first)[q, top_ids[q]]  # the original's score, first token twice
        assert (scores[:-1] >= scores[1:]).all()
        torch.testing.assert_close(top_probs[q], scores.softmax(0), atol=1e-5, rtol=0)
    corrected = rank_answers(decoder, enc, None, a_ids, a_mask, k=4, score="corrected")[0]
    for q in range(3):
        assert set(corrected[q].tolist()) == set(top_ids[q].tolist())
        s = loglik[q, corrected[q]]
        assert (s[:-1] >= s[1:]).all()


def test_decoder_config_from_model_config():
    cfg = DecoderConfig.from_model_config(model_config("base"))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.vocab_size, cfg.cross_width) == (768, 12, 12, 50265, 768)
    assert DecoderConfig.from_model_config(model_config("tiny"), num_layers=1).num_layers == 1
    with torch.device("meta"):
        dec = TextDecoder(cfg, init_weights=False)
    assert dec.lm_head.decoder.weight is dec.embeddings.word_embeddings.weight


def test_beam_search_with_every_prefix_kept_finds_the_best_sequence():
    """With as many beams as there are prefixes, beam search is exhaustive: its answer must be
    the argmax over every possible continuation (vocabulary 6, 3 new tokens: 216 sequences)."""
    import itertools
    cfg = DecoderConfig(vocab_size=6, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                        cross_width=16, max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(3)
    dec = TextDecoder(cfg).eval()
    with torch.no_grad():
        for p in dec.parameters():
            if p.dim() == 2:
                p.mul_(25.0)  # peaked, context-dependent choices: greedy is not optimal here
    enc = torch.randn(2, 5, 16)
    greedy_gaps = []
    all_seqs = torch.tensor([[BOS, *rest] for rest in itertools.product(range(6), repeat=3)])
    with torch.no_grad():
        for b in range(2):
            logp = F.log_softmax(dec(all_seqs, None, enc[b:b + 1].expand(len(all_seqs), -1, -1)).logits, -1)
            total = logp[:, :-1].gather(-1, all_seqs[:, 1:, None]).squeeze(-1).sum(1)
            out = beam_search(dec, enc[b:b + 1], None, [BOS], num_beams=36, max_length=4, eos_token_id=None)
            assert torch.equal(out.sequences[0], all_seqs[total.argmax()])
            assert float(out.scores[0]) == pytest.approx(float(total.max()) / 4, abs=1e-4)
            greedy = greedy_search(dec, enc[b:b + 1], None, [BOS], max_length=4, eos_token_id=None)
            greedy_gaps.append(float(total.max()) - float(greedy.scores[0]))
    assert max(greedy_gaps) > 0.1  # control: greedy misses the best sequence in one row
