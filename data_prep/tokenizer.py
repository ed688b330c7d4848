"""``xfm-prep tokenizer``: train a byte-level BPE tokenizer with RoBERTa's special tokens.

The result is a directory that ``transformers.AutoTokenizer.from_pretrained(dir)`` loads as a
RoBERTa tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
the classic ``vocab.json`` + ``merges.txt``). Input: ``.txt`` files (one document per line) or
``.jsonl`` files (one JSON object per line, the text under ``--field``).

Only ``tokenizers`` / ``transformers`` here: data preparation never imports training code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["ROBERTA_SPECIALS", "TokenizerInputError", "iter_documents", "train_bpe_tokenizer",
           "add_parser"]

# RoBERTa's special tokens in id order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BYTE_ALPHABET = 256
TEXT_SUFFIXES = (".txt", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class TokenizerInputError(ValueError):
    """Bad tokenizer training input: the message names the file, line and field."""


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "txt"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise TokenizerInputError(f"{path}: unsupported input type {suffix or '(no suffix)'!r}; expected "
                              f"a .txt file (one document per line) or .jsonl (with --field)")


def iter_documents(path: str | Path, field: str = "text"):
    """Yield the non-empty documents of one input file; bad content raises TokenizerInputError
    naming the file, the line and (for .jsonl) the field."""
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise TokenizerInputError(f"{path}: input file does not exist" if not path.exists()
                                  else f"{path}: not a regular file")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TokenizerInputError(f"{path}, line {lineno}: not valid UTF-8 ({err.reason} at "
                                          f"byte {err.start})") from None
            if kind == "txt":
                text = line.rstrip("\r\n")
            else:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TokenizerInputError(f"{path}, line {lineno}: invalid JSON ({err.msg}, "
                                              f"column {err.colno})") from None
                if not isinstance(record, dict):
                    raise TokenizerInputError(f"{path}, line {lineno}: expected a JSON object, got "
                                              f"{type(record).__name__}")
                if field not in record:
                    raise TokenizerInputError(f"{path}, line {lineno}: field {field!r} missing "
                                              f"(keys: {sorted(record)[:10]}); choose it with --field")
                text = record[field]
                if not isinstance(text, str):
                    raise TokenizerInputError(f"{path}, line {lineno}: field {field!r} must be a "
                                              f"string, got {type(text).__name__}")
            if text.strip():
                yield text


def _count_documents(files: list[Path], field: str, progress: bool) -> tuple[int, int]:
    """First pass: validate every file (clear errors before training starts) and count."""
    from tqdm import tqdm

    docs = chars = 0
    for path in files:
        for text in tqdm(iter_documents(path, field), desc=f"reading {path.name}", unit=" docs",
                         disable=not progress, leave=False):
            docs += 1
            chars += len(text)
    return docs, chars


def train_bpe_tokenizer(files, out_dir, vocab_size: int, min_frequency: int = 2,
                        field: str = "text", max_length: int = 512, progress: bool = True) -> Path:
    """Train a byte-level BPE (RoBERTa specials, ids 0-4) on ``files`` and save it to ``out_dir``.

    Returns the output directory. Raises TokenizerInputError for missing / unreadable / malformed
    inputs and ValueError for impossible settings.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise TokenizerInputError("no input files given")
    minimum = BYTE_ALPHABET + len(ROBERTA_SPECIALS) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs the 256 byte "
                         f"tokens and {len(ROBERTA_SPECIALS)} specials, so at least {minimum}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    for path in files:
        _kind(path)
        if not path.exists():
            raise TokenizerInputError(f"{path}: input file does not exist")
    start = time.time()
    docs, chars = _count_documents(files, field, progress)
    if docs == 0:
        raise TokenizerInputError(f"no documents in {', '.join(map(str, files))} (all lines empty)")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(ROBERTA_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=progress)

    def documents():
        for path in files:
            yield from iter_documents(path, field)

    tok.train_from_iterator(documents(), trainer=trainer, length=docs)
    ids = [tok.token_to_id(t) for t in ROBERTA_SPECIALS]
    if ids != list(range(len(ROBERTA_SPECIALS))):  # the trainer puts specials first; guard it
        raise RuntimeError(f"special token ids came out as {ids}, expected 0..4")
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    # RoBERTa's <mask> swallows the space before it, so "a <mask>." masks the word " x"
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    tok.add_special_tokens([mask])  # replaces the trainer's plain <mask> entry (same id)
    hf = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                              sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                              pad_token="<pad>", mask_token=mask, model_max_length=max_length,
                              add_prefix_space=False, trim_offsets=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # the classic slow-tokenizer files and the special-token map, which transformers 5 no longer
    # writes but other tools (and transformers 4's RobertaTokenizer) read
    tok.model.save(str(out))
    specials_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>",
                    "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False,
                                   "normalized": False, "single_word": False}}
    (out / "special_tokens_map.json").write_text(json.dumps(specials_map, indent=2) + "\n")
    metrics = {"event": "tokenizer_trained", "files": [str(f) for f in files], "documents": docs,
               "characters": chars, "vocab_size": tok.get_vocab_size(),
               "requested_vocab_size": vocab_size, "min_frequency": min_frequency,
               "seconds": round(time.time() - start, 3)}
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer (RoBERTa specials)",
        description="Train a byte-level BPE tokenizer with RoBERTa's special tokens "
                    "(<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4) and save a directory that "
                    "transformers.AutoTokenizer loads.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help=".txt (one document per line) or .jsonl files")
    p.add_argument("--out", required=True, metavar="DIR", help="output tokenizer directory")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N")
    p.add_argument("--min-frequency", type=int, default=2, metavar="N",
                   help="minimum pair frequency for a merge (default 2)")
    p.add_argument("--field", default="text", help="text field of .jsonl records (default 'text')")
    p.add_argument("--max-length", type=int, default=512,
                   help="model_max_length written to tokenizer_config.json (default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    try:
        out = train_bpe_tokenizer(args.input, args.out, args.vocab_size, args.min_frequency,
                                  field=args.field, max_length=args.max_length,
                                  progress=not args.no_progress)
    except (TokenizerInputError, ValueError) as err:
        print(f"xfm-prep tokenizer: error: {err}", file=sys.stderr)
        return 2
    print(f"tokenizer written to {out}")
    return 0
