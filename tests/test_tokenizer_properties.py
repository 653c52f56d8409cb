"""Property tests: the tokenizers round-trip text exactly, or fail only in the documented way.

Tokenizers are built once per module; each property draws up to 150 texts.

Byte-level BPE (GPT-2's and the trained one) can encode every string that is valid Unicode, so
it must give back any such text exactly. Lone surrogates (category Cs) are excluded for them: a
Python str may hold one, but it is not encodable as UTF-8, and the `tokenizers` library (Rust)
rejects it with a TypeError before any tokenization happens. The character tokenizer works on
code points, so it is tested on surrogates too.
"""

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hf_llm.tokenization_char import CharTokenizer, UnknownCharacterError
from hf_llm.tokenization import load_gpt2_tokenizer, train_bpe_tokenizer

EOT = "<|endoftext|>"
UNK = "<unk>"
# A special token's text inside the input is read as that token, as with every transformers
# tokenizer; the character-level properties below are about ordinary text.
SPECIAL_TEXTS = ("<|endoftext|>", UNK)

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,  # the first call of a tokenizer can be slow; timing is not the property
    suppress_health_check=[HealthCheck.too_slow],
)

# Every code point except lone surrogates (see the module docstring).
valid_unicode = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@pytest.fixture(scope="module")
def corpus(shared_data):
    return (shared_data / "raw" / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def char_strict(corpus):
    return CharTokenizer.from_corpus(corpus)


@pytest.fixture(scope="module")
def char_with_unk(corpus):
    return CharTokenizer.from_corpus(corpus, unk_token=UNK)


@pytest.fixture(scope="module")
def corpus_chars(corpus):
    return sorted(set(corpus))


@pytest.fixture(scope="module")
def bpe_tok(corpus):
    return train_bpe_tokenizer(corpus, vocab_size=600)


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    return load_gpt2_tokenizer(shared_data / "gpt2-tokenizer")


def known_or_any_text(known_chars):
    """Text mixing corpus characters with arbitrary code points (surrogates included)."""
    return st.text(alphabet=st.one_of(st.sampled_from(known_chars), st.characters()), max_size=100)


# ----------------------------------------------------------------------------- character tokenizer


@PROPERTY_SETTINGS
@given(data=st.data())
def test_char_round_trips_text_from_its_vocabulary(char_strict, corpus_chars, data):
    pieces = data.draw(st.lists(st.sampled_from(corpus_chars + [EOT]), max_size=200))
    text = "".join(pieces)
    assume(text.count(EOT) == pieces.count(EOT))  # characters that happen to spell the special token
    ids = char_strict.encode(text)
    assert len(ids) == len(pieces)  # one id per character, one for each end-of-text token
    assert char_strict.decode(ids) == text


@PROPERTY_SETTINGS
@given(data=st.data())
def test_char_without_unk_round_trips_or_raises_documented_error(char_strict, corpus_chars, data):
    text = data.draw(known_or_any_text(corpus_chars))
    assume(not any(special in text for special in SPECIAL_TEXTS))
    vocab = char_strict.get_vocab()
    unknown = [(i, c) for i, c in enumerate(text) if c not in vocab]
    event("all characters known" if not unknown else "has unknown characters")
    if not unknown:
        assert char_strict.decode(char_strict.encode(text)) == text
        return
    # Any other exception type propagates and fails the test.
    with pytest.raises(UnknownCharacterError) as info:
        char_strict.encode(text)
    position, char = unknown[0]
    assert (info.value.position, info.value.char) == (position, char)
    assert isinstance(info.value, ValueError) and repr(char) in str(info.value)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_char_with_unk_maps_unknown_characters_to_unk(char_with_unk, corpus_chars, data):
    text = data.draw(known_or_any_text(corpus_chars))
    assume(not any(special in text for special in SPECIAL_TEXTS))
    vocab = char_with_unk.get_vocab()
    ids = char_with_unk.encode(text)
    assert ids == [vocab.get(c, char_with_unk.unk_token_id) for c in text]
    assert char_with_unk.decode(ids) == "".join(c if c in vocab else UNK for c in text)


# ----------------------------------------------------------------------------- byte-level BPE


@PROPERTY_SETTINGS
@given(text=valid_unicode)
def test_trained_bpe_round_trips_any_unicode(bpe_tok, text):
    ids = bpe_tok.encode(text)
    assert all(0 <= i < len(bpe_tok) for i in ids)
    assert bpe_tok.decode(ids) == text


@PROPERTY_SETTINGS
@given(text=valid_unicode)
def test_gpt2_round_trips_any_unicode(gpt2_tok, text):
    ids = gpt2_tok.encode(text)
    assert all(0 <= i < 50257 for i in ids)
    assert gpt2_tok.decode(ids) == text
