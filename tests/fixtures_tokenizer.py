"""Tokenizer fixtures shared by every area: a small byte-level BPE (RoBERTa-style, trained with
``xfm-prep tokenizer``'s trainer) and a small WordPiece (BERT-style) directory, both trained once
per test session on a few hundred generated sentences. Small vocabularies on purpose, so that many
words split into several sub-tokens (what whole-word masking must handle)."""
import random

import pytest

# word pool: short words become single tokens, long / rare ones split into pieces
TOKENIZER_WORDS = (
    "a the an of on in with and to is are two three man woman dog cat horse child people red blue "
    "green small large young old riding sitting standing holding playing walking beach street "
    "table kitchen field photographers skateboarding refrigerator motorcycle umbrella giraffe "
    "zebra broccoli surfboard hydrant elephants snowboarder frisbee sandwich laptop"
).split()
_PUNCT = [",", ".", "!", "?", ";"]


def make_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic caption-like sentences with punctuation, numbers and contractions."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rnd.choice(TOKENIZER_WORDS) for _ in range(rnd.randint(4, 14))]
        if rnd.random() < 0.3:
            words.insert(rnd.randrange(len(words)), str(rnd.randint(1, 2024)))
        if rnd.random() < 0.2:
            words.insert(rnd.randrange(len(words)), rnd.choice(["isn't", "dog's", "it's", "don't"]))
        if rnd.random() < 0.4:
            i = rnd.randrange(len(words))
            words[i] = words[i] + rnd.choice(_PUNCT)
        sentence = " ".join(words)
        if rnd.random() < 0.5:
            sentence = sentence[0].upper() + sentence[1:]
        out.append(sentence + rnd.choice([".", "", "!"]))
    return out


def train_wordpiece_dir(sentences, out_dir, vocab_size: int = 220):
    """A BERT-style (lower-cased WordPiece, [CLS]/[SEP]/[PAD]/[MASK]/[UNK]) tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
                                        special_tokens=specials, show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer, length=len(sentences))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    hf = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                           pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                           model_max_length=512, do_lower_case=True)
    hf.save_pretrained(str(out_dir))
    tok.model.save(str(out_dir))  # vocab.txt for tools that read the classic BERT layout
    return out_dir


@pytest.fixture(scope="session")
def tokenizer_sentences():
    return make_sentences(400, seed=0)


@pytest.fixture(scope="session")
def tokenizer_corpus_file(tmp_path_factory, tokenizer_sentences):
    path = tmp_path_factory.mktemp("tokenizer_corpus") / "corpus.txt"
    path.write_text("\n".join(tokenizer_sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory, tokenizer_corpus_file):
    """RoBERTa-style byte-level BPE directory (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4), vocab 360."""
    from xfm.data_prep.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("bpe_tokenizer")
    return train_bpe_tokenizer([tokenizer_corpus_file], out, vocab_size=360, progress=False)


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory, tokenizer_sentences):
    """BERT-style WordPiece directory ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4), vocab 220."""
    return train_wordpiece_dir(tokenizer_sentences, tmp_path_factory.mktemp("wordpiece_tokenizer"))


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_dir):
    from xfm.tokenizer import load_tokenizer

    return load_tokenizer(bpe_tokenizer_dir)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(wordpiece_tokenizer_dir):
    from xfm.tokenizer import load_tokenizer

    return load_tokenizer(wordpiece_tokenizer_dir)
