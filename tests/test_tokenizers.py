"""Tokenizers: the character-level tokenizer, GPT-2's BPE from the shared files, and BPE training."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_llm.tokenization_char import CharTokenizer, UnknownCharacterError
from hf_llm.tokenization import (
    build_char_tokenizer,
    load_gpt2_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

EOT = "<|endoftext|>"
# Text the BPE never saw in training: accents, CJK, emoji (4-byte UTF-8, ZWJ sequence), tabs.
UNSEEN = "Naïve café — 你好，世界！ 🤗👩‍💻 rocket🚀\n\tdone.  "


# ----------------------------------------------------------------------------- character tokenizer


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.from_corpus(["hello world", "abc!"])


def test_char_vocab_is_sorted_corpus_characters_plus_eos(char_tok):
    chars = sorted(set("hello world") | set("abc!"))
    expected = {c: i for i, c in enumerate(chars)}
    expected[EOT] = len(chars)
    assert char_tok.get_vocab() == expected
    assert len(char_tok) == char_tok.vocab_size == len(chars) + 1
    assert char_tok.eos_token == char_tok.bos_token == char_tok.pad_token == EOT
    assert char_tok.eos_token_id == char_tok.bos_token_id == char_tok.pad_token_id == len(chars)
    assert char_tok.unk_token is None


def test_char_encode_decode_exact(char_tok):
    vocab = char_tok.get_vocab()
    text = "hello world! cab  "
    ids = char_tok(text).input_ids
    assert ids == [vocab[c] for c in text]  # no special tokens are added around the text
    assert char_tok.decode(ids) == text
    # The end-of-text token written in the text is one token, and decodes back.
    with_eot = f"ab{EOT}cd"
    ids = char_tok.encode(with_eot)
    assert ids == [vocab["a"], vocab["b"], char_tok.eos_token_id, vocab["c"], vocab["d"]]
    assert char_tok.decode(ids) == with_eot
    assert char_tok.decode(ids, skip_special_tokens=True) == "abcd"


def test_char_build_helper_and_single_string_corpus():
    tok = build_char_tokenizer("banana")
    assert tok.get_vocab() == {"a": 0, "b": 1, "n": 2, EOT: 3}
    with_unk = build_char_tokenizer(["banana"], unk_token="<unk>")
    assert with_unk.unk_token_id == 4
    assert with_unk.get_vocab()["<unk>"] == 4


def test_char_batch_padding(char_tok):
    vocab = char_tok.get_vocab()
    batch = char_tok(["ab", "a"], padding=True)
    assert batch["input_ids"] == [[vocab["a"], vocab["b"]], [vocab["a"], char_tok.pad_token_id]]
    assert batch["attention_mask"] == [[1, 1], [1, 0]]
    tensors = char_tok(["ab", "a", "abc"], padding=True, return_tensors="pt")
    assert tuple(tensors["input_ids"].shape) == (3, 3)
    assert tensors["attention_mask"].sum(dim=1).tolist() == [2, 1, 3]


def test_char_unknown_character_raises_with_position(char_tok):
    with pytest.raises(UnknownCharacterError) as info:
        char_tok("hello wörld")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.char, err.position) == ("ö", 7)
    message = str(err)
    assert "'ö'" in message and "position 7" in message
    assert "from_corpus" in message and "unk_token" in message  # says how to fix it
    # Position is of the text, also after a special token.
    with pytest.raises(UnknownCharacterError) as info:
        char_tok.encode(f"ab{EOT}c?")
    assert (info.value.char, info.value.position) == ("?", len(f"ab{EOT}c"))


def test_char_unknown_character_maps_to_unk_when_set():
    tok = CharTokenizer.from_corpus("abc", unk_token="<unk>")
    assert tok.get_vocab() == {"a": 0, "b": 1, "c": 2, EOT: 3, "<unk>": 4}
    ids = tok.encode("abzc日")
    assert ids == [0, 1, 4, 2, 4]
    assert tok.decode(ids) == "ab<unk>c<unk>"
    # Adding an unk token afterwards switches an existing tokenizer to the same behaviour.
    strict = CharTokenizer.from_corpus("abc")
    strict.add_special_tokens({"unk_token": "<unk>"})
    assert strict.encode("az") == [0, strict.unk_token_id]


def test_char_save_and_autotokenizer_round_trip(char_tok, tmp_path):
    char_tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CharTokenizer"
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_char.CharTokenizer"
    assert (tmp_path / "tokenization_char.py").is_file()  # the remote code ships with it
    vocab_on_disk = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab_on_disk == char_tok.get_vocab()

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is CharTokenizer
    assert reloaded.get_vocab() == char_tok.get_vocab()
    assert reloaded.special_tokens_map == char_tok.special_tokens_map
    assert reloaded.unk_token is None
    text = f"hello world!{EOT}cab"
    assert reloaded.encode(text) == char_tok.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == text
    # With hf_llm imported the local class wins even when remote code is allowed.
    assert type(AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)) is CharTokenizer
    assert type(load_tokenizer(tmp_path)) is CharTokenizer


def test_char_round_trip_keeps_unk_and_added_tokens(tmp_path):
    tok = CharTokenizer.from_corpus("abc", unk_token="<unk>")
    tok.add_tokens(["<sep>"])
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded.unk_token == "<unk>"
    assert reloaded.encode("a<sep>zb") == tok.encode("a<sep>zb") == [0, 5, 4, 1]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_llm"] = None  # even once hf_llm is pip-installed, `import hf_llm` now fails
    try:
        import hf_llm  # noqa: F401
        raise SystemExit("hf_llm is importable: the test would prove nothing")
    except ImportError:
        pass
    import json
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    text = sys.argv[2]
    ids = tok(text).input_ids
    print(json.dumps({"class": type(tok).__name__, "module": type(tok).__module__, "vocab": tok.get_vocab(),
                      "ids": ids, "decoded": tok.decode(ids), "eos": tok.eos_token_id, "pad": tok.pad_token_id}))
    """
)


def test_char_loads_as_remote_code_without_hf_llm(char_tok, tmp_path):
    folder = tmp_path / "char_tokenizer"
    char_tok.save_pretrained(folder)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # Neither the cwd nor PYTHONPATH may lead back to the repository.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    text = f"hello world!{EOT}"
    result = subprocess.run(
        [sys.executable, str(script), str(folder), text],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "CharTokenizer"
    assert report["module"].startswith("transformers_modules"), report["module"]
    assert report["vocab"] == char_tok.get_vocab()
    assert report["ids"] == char_tok.encode(text)
    assert report["decoded"] == text
    assert report["eos"] == report["pad"] == char_tok.eos_token_id


# ----------------------------------------------------------------------------- GPT-2 BPE


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    return load_gpt2_tokenizer(shared_data / "gpt2-tokenizer")


def test_gpt2_known_encoding(gpt2_tok):
    assert gpt2_tok("What is the capital of China?").input_ids == [2061, 318, 262, 3139, 286, 2807, 30]
    assert gpt2_tok.decode([2061, 318, 262, 3139, 286, 2807, 30]) == "What is the capital of China?"


def test_gpt2_special_tokens_and_size(gpt2_tok):
    assert len(gpt2_tok) == 50257
    assert gpt2_tok.convert_tokens_to_ids(EOT) == 50256
    assert gpt2_tok.eos_token_id == gpt2_tok.bos_token_id == 50256
    assert gpt2_tok.pad_token == EOT and gpt2_tok.pad_token_id == 50256  # set because GPT-2 has none
    assert gpt2_tok.model_max_length == 1024
    assert gpt2_tok.encode(f"Hi{EOT}") == [17250, 50256]


def test_gpt2_chinese_round_trip(gpt2_tok):
    text = "你好，世界！今天的天气很好。"
    ids = gpt2_tok.encode(text)
    assert len(ids) > len(text)  # CJK characters are several bytes, so several byte-level tokens
    assert gpt2_tok.decode(ids) == text


def test_gpt2_saved_folder_reloads(gpt2_tok, tmp_path):
    gpt2_tok.save_pretrained(tmp_path)
    for reloaded in (load_gpt2_tokenizer(tmp_path), load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert reloaded.encode(UNSEEN) == gpt2_tok.encode(UNSEEN)
        assert reloaded.pad_token_id == 50256
        assert len(reloaded) == 50257


def test_load_tokenizer_dispatches_raw_gpt2_files(shared_data):
    tok = load_tokenizer(shared_data / "gpt2-tokenizer")
    assert tok.encode("What is the capital of China?") == [2061, 318, 262, 3139, 286, 2807, 30]


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt"):
        load_gpt2_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing: merges\.txt"):
        load_gpt2_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gpt2_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No tokenizer"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- BPE training

VOCAB_SIZE = 600


@pytest.fixture(scope="module")
def verdict(shared_data):
    return (shared_data / "raw" / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_tok(verdict):
    return train_bpe_tokenizer(verdict, vocab_size=VOCAB_SIZE)


def test_bpe_vocab_size_and_special_tokens(bpe_tok, verdict):
    assert isinstance(bpe_tok, PreTrainedTokenizerFast)
    assert len(bpe_tok) == VOCAB_SIZE
    assert bpe_tok.convert_tokens_to_ids(EOT) == 0
    assert bpe_tok.eos_token_id == bpe_tok.bos_token_id == bpe_tok.pad_token_id == 0
    # Merges were learnt: the text is much shorter in tokens than in bytes.
    assert len(bpe_tok.encode(verdict)) < 0.5 * len(verdict.encode("utf-8"))


def test_bpe_round_trips_training_and_unseen_text(bpe_tok, verdict):
    assert bpe_tok.decode(bpe_tok.encode(verdict)) == verdict
    ids = bpe_tok.encode(UNSEEN)
    assert max(ids) < VOCAB_SIZE
    assert bpe_tok.decode(ids) == UNSEEN
    batch = bpe_tok(["the picture", "a"], padding=True)
    assert batch["attention_mask"][1][-1] == 0 and batch["input_ids"][1][-1] == bpe_tok.pad_token_id


def test_bpe_save_and_autotokenizer_reload(bpe_tok, verdict, tmp_path):
    bpe_tok.save_pretrained(tmp_path)
    for reloaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert reloaded.get_vocab() == bpe_tok.get_vocab()
        assert reloaded.encode(verdict[:2000]) == bpe_tok.encode(verdict[:2000])
        assert reloaded.encode(UNSEEN) == bpe_tok.encode(UNSEEN)
        assert reloaded.decode(reloaded.encode(UNSEEN)) == UNSEEN
        assert (reloaded.eos_token, reloaded.pad_token) == (EOT, EOT)


def test_bpe_training_is_deterministic(bpe_tok, verdict):
    again = train_bpe_tokenizer(verdict, vocab_size=VOCAB_SIZE)
    assert again.backend_tokenizer.to_str() == bpe_tok.backend_tokenizer.to_str()
    assert again.encode(UNSEEN) == bpe_tok.encode(UNSEEN)


def test_bpe_min_frequency_and_size_checks(verdict):
    # A pair must occur min_frequency times; a huge threshold leaves only bytes + special tokens.
    only_bytes = train_bpe_tokenizer(verdict, vocab_size=VOCAB_SIZE, min_frequency=10**9)
    assert len(only_bytes) == 256 + 1
    assert only_bytes.decode(only_bytes.encode(UNSEEN)) == UNSEEN
    with pytest.raises(ValueError, match="too small"):
        train_bpe_tokenizer(verdict, vocab_size=100)
