"""Loading tokenizers from local Hugging Face directories (BERT WordPiece or RoBERTa byte-level BPE)
and the few facts about them the loaders and the model need (pad / mask / special ids, kind)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["TokenizerInfo", "load_tokenizer", "tokenizer_info", "tokenizer_kind"]

# any one of these file sets makes a directory loadable by transformers.AutoTokenizer
_TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"))


@dataclass(frozen=True)
class TokenizerInfo:
    """What the data loaders need to know about a tokenizer (picklable, no tokenizer inside)."""
    kind: str                  # "bpe" (byte-level, RoBERTa/GPT-2) or "wordpiece" (BERT)
    vocab_size: int            # len(tokenizer), added tokens included
    pad_token_id: int
    mask_token_id: int
    cls_token_id: int          # first token of a sequence (<s> / [CLS])
    sep_token_id: int          # last token of a sequence (</s> / [SEP])
    special_ids: tuple[int, ...]


def load_tokenizer(path):
    """A fast Hugging Face tokenizer from a local directory; never touches the network.

    Raises FileNotFoundError / ValueError naming ``path`` when it is not a tokenizer directory.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"tokenizer path {path} is a file; expected a directory holding "
                         f"tokenizer.json (or vocab.txt, or vocab.json + merges.txt)")
    if not any(all((path / f).is_file() for f in files) for files in _TOKENIZER_FILE_SETS):
        present = sorted(p.name for p in path.iterdir())[:12]
        raise ValueError(f"{path} is not a tokenizer directory: it needs tokenizer.json, or vocab.txt "
                         f"(BERT), or vocab.json + merges.txt (RoBERTa); found {present}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers' own messages do not always name the directory
        raise ValueError(f"cannot load the tokenizer in {path}: {type(err).__name__}: {err}") from err
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer in {path} loaded as the slow {type(tok).__name__}; xfm needs a "
                         f"fast (Rust) tokenizer for word ids and speed")
    for name in ("pad_token_id", "mask_token_id"):
        if getattr(tok, name) is None:
            raise ValueError(f"tokenizer in {path} has no {name[:-3]}; xfm needs pad and mask tokens")
    return tok


def tokenizer_kind(tok) -> str:
    """"bpe" for byte-level BPE (``Ġ`` word starts), "wordpiece" for BERT (``##`` continuations)."""
    from .masking import _detect_kind

    return _detect_kind(tok, tok.convert_ids_to_tokens(list(range(len(tok)))))


def tokenizer_info(tok) -> TokenizerInfo:
    cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(f"{type(tok).__name__} has no cls/bos or sep/eos token")
    return TokenizerInfo(kind=tokenizer_kind(tok), vocab_size=len(tok),
                         pad_token_id=int(tok.pad_token_id), mask_token_id=int(tok.mask_token_id),
                         cls_token_id=int(cls_id), sep_token_id=int(sep_id),
                         special_ids=tuple(sorted(int(i) for i in tok.all_special_ids)))
