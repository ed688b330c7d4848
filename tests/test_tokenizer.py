"""Tokenizers: ``xfm-prep tokenizer`` trains a byte-level BPE that transformers loads as RoBERTa;
``xfm.tokenizer.load_tokenizer`` loads BERT and RoBERTa directories; bad inputs are clear errors."""
import argparse
import importlib
import json
import shutil

import pytest

from fixtures_tokenizer import make_sentences
from xfm.data_prep import tokenizer as prep_tokenizer
from xfm.tokenizer import load_tokenizer, tokenizer_info

ROBERTA_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json")


def run_subcommand(argv):
    """The subcommand exactly as xfm-prep registers it (add_parser + func)."""
    parser = argparse.ArgumentParser(prog="xfm-prep")
    prep_tokenizer.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    sentences = make_sentences(300, seed=21)
    (d / "a.txt").write_text("\n".join(sentences[:150]) + "\n\n", encoding="utf-8")
    with open(d / "b.jsonl", "w", encoding="utf-8") as fh:
        for s in sentences[150:]:
            fh.write(json.dumps({"id": 1, "caption": s}) + "\n")
    return d, sentences


@pytest.fixture(scope="module")
def trained_dir(corpus, tmp_path_factory):
    d, _ = corpus
    out = tmp_path_factory.mktemp("tok") / "roberta_like"
    rc = run_subcommand(["tokenizer", "--input", str(d / "a.txt"), str(d / "b.jsonl"),
                         "--field", "caption", "--out", str(out), "--vocab-size", "400",
                         "--min-frequency", "2", "--no-progress"])
    assert rc == 0
    return out


def test_cli_round_trip_with_autotokenizer(trained_dir, corpus):
    from transformers import AutoTokenizer

    for name in ROBERTA_FILES:
        assert (trained_dir / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(str(trained_dir))
    assert "Roberta" in type(tok).__name__ and tok.is_fast
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 4)
    assert tok.cls_token_id == 0 and tok.sep_token_id == 2
    assert len(tok) <= 400
    # byte-level: any text round-trips, even characters never seen in training
    _, sentences = corpus
    for text in sentences[:20] + ["Ünïcödé 東京 emoji 🙂 and\ttabs"]:
        ids = tok(text).input_ids
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids  # never <unk>
        assert tok.decode(ids, skip_special_tokens=True) == text
    # RoBERTa's <mask> takes the preceding space with it
    assert tok.convert_ids_to_tokens(tok("a <mask> dog").input_ids) [:3] == ["<s>", "a", "<mask>"]
    # the training consumed both files: the jsonl captions' words are merged tokens
    vocab = json.loads((trained_dir / "vocab.json").read_text())
    assert "Ġgiraffe" in vocab or "Ġrefrigerator" in vocab or "Ġbroccoli" in vocab
    metrics = [json.loads(line) for line in (trained_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["documents"] == 300 and metrics[-1]["vocab_size"] == len(tok)


def test_classic_vocab_and_merges_agree_with_tokenizer_json(trained_dir, tmp_path):
    """vocab.json + merges.txt alone (what older tools read) give the same tokenization."""
    from transformers import RobertaTokenizer

    classic = tmp_path / "classic"
    classic.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(trained_dir / name, classic / name)
    full = load_tokenizer(trained_dir)
    # positional: (vocab_file, merges_file) in transformers 4, (vocab, merges) paths in 5
    slim = RobertaTokenizer(str(classic / "vocab.json"), str(classic / "merges.txt"))
    for text in make_sentences(30, seed=4):
        assert full(text).input_ids == slim(text).input_ids


def test_full_xfm_prep_command(corpus, tmp_path):
    """Through xfm-prep's own entry point; every subcommand module of xfm-prep must import."""
    cli = importlib.import_module("xfm.data_prep.cli")
    for module in sorted(set(cli.SUBCOMMANDS.values())):
        importlib.import_module(f"xfm.data_prep.{module}")
    d, _ = corpus
    out = tmp_path / "tok"
    assert cli.main(["tokenizer", "--input", str(d / "a.txt"), "--out", str(out),
                     "--vocab-size", "300", "--no-progress"]) == 0
    assert load_tokenizer(out).mask_token_id == 4


def test_load_tokenizer_both_kinds(bpe_tokenizer_dir, wordpiece_tokenizer_dir):
    bpe = tokenizer_info(load_tokenizer(bpe_tokenizer_dir))
    assert (bpe.kind, bpe.cls_token_id, bpe.pad_token_id, bpe.sep_token_id, bpe.mask_token_id) == \
        ("bpe", 0, 1, 2, 4)
    bert_tok = load_tokenizer(wordpiece_tokenizer_dir)
    assert "Bert" in type(bert_tok).__name__
    bert = tokenizer_info(bert_tok)
    assert bert.kind == "wordpiece"
    assert bert.pad_token_id == bert_tok.convert_tokens_to_ids("[PAD]")
    assert bert.mask_token_id == bert_tok.convert_tokens_to_ids("[MASK]")
    assert bert.cls_token_id == bert_tok.convert_tokens_to_ids("[CLS]")
    assert set(bert.special_ids) == {bert_tok.convert_tokens_to_ids(t)
                                     for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}


def test_load_tokenizer_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="file.txt is a file"):
        load_tokenizer(a_file)
    empty = tmp_path / "not_a_tokenizer"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not_a_tokenizer is not a tokenizer directory"):
        load_tokenizer(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match="broken"):
        load_tokenizer(broken)


@pytest.mark.parametrize("content, suffix, field, message", [
    ('{"caption": "ok"}\n{"caption": oops}\n', ".jsonl", "caption", r"bad\.jsonl, line 2: invalid JSON"),
    ('{"caption": "ok"}\n{"text": "x"}\n', ".jsonl", "caption", r"line 2: field 'caption' missing"),
    ('{"caption": 5}\n', ".jsonl", "caption", r"line 1: field 'caption' must be a string"),
    ('[1, 2]\n', ".jsonl", "text", r"line 1: expected a JSON object"),
    (b"fine\n\xff\xfe broken\n", ".txt", "text", r"bad\.txt, line 2: not valid UTF-8"),
    ("\n\n   \n", ".txt", "text", r"no documents"),
    ("text", ".csv", "text", r"bad\.csv: unsupported input type '\.csv'"),
])
def test_bad_inputs_are_clear_errors(tmp_path, capsys, content, suffix, field, message):
    path = tmp_path / f"bad{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(prep_tokenizer.TokenizerInputError, match=message):
        prep_tokenizer.train_bpe_tokenizer([path], tmp_path / "out", 300, field=field, progress=False)
    # the command reports it as one line on stderr and exit code 2, no traceback
    rc = run_subcommand(["tokenizer", "--input", str(path), "--out", str(tmp_path / "out2"),
                         "--vocab-size", "300", "--field", field, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "xfm-prep tokenizer: error:" in err and "Traceback" not in err


def test_missing_file_and_bad_settings(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    rc = run_subcommand(["tokenizer", "--input", str(missing), "--out", str(tmp_path / "o"),
                         "--vocab-size", "300", "--no-progress"])
    assert rc == 2 and f"{missing}: input file does not exist" in capsys.readouterr().err
    ok = tmp_path / "ok.txt"
    ok.write_text("some text\n")
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        prep_tokenizer.train_bpe_tokenizer([ok], tmp_path / "o", 100, progress=False)
    with pytest.raises(SystemExit):  # argparse: --vocab-size is required
        run_subcommand(["tokenizer", "--input", str(ok), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_load_tokenizer_from_classic_model_directories(request, tmp_path, kind):
    """Model directories as older Hugging Face snapshots ship them: config.json + vocab.json +
    merges.txt (RoBERTa) or config.json + vocab.txt (BERT), no tokenizer.json. They load as fast
    tokenizers that tokenize like the full directory, and whole-word masking tables build."""
    import numpy as np

    from xfm.masking import WordBoundaries

    full_dir = request.getfixturevalue(f"{kind}_tokenizer_dir")
    files = ("vocab.json", "merges.txt") if kind == "bpe" else ("vocab.txt",)
    classic = tmp_path / "classic"
    classic.mkdir()
    for name in files:
        shutil.copy(full_dir / name, classic / name)
    (classic / "config.json").write_text(json.dumps({"model_type": "roberta" if kind == "bpe" else "bert"}))
    tok, full = load_tokenizer(classic), load_tokenizer(full_dir)
    assert tok.is_fast and tokenizer_info(tok).kind == kind
    assert (tok.pad_token_id, tok.mask_token_id) == (full.pad_token_id, full.mask_token_id)
    for text in make_sentences(20, seed=8):
        assert tok(text).input_ids == full(text).input_ids
    wb = WordBoundaries.from_tokenizer(tok)
    enc = tok("Refrigerator skateboarding photographers, 2024!")
    ours = wb.word_index(np.array(enc.input_ids))
    ref = [-1 if w is None else w for w in enc.word_ids()]
    assert [a == b for a, b in zip(ours[1:], ours[:-1])] == [a == b for a, b in zip(ref[1:], ref[:-1])]
