"""hf_llm.stdlib_data: the embedded offline data built from the standard library's source."""

import ast
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hf_llm import stdlib_data
from hf_llm.data import to_preference, to_prompt_completion, to_text
from hf_llm.stdlib_data import stdlib_corpus, stdlib_function_records, stdlib_instructions, stdlib_preferences

REPO_ROOT = Path(__file__).resolve().parent.parent

DIGEST_SCRIPT = """
import hashlib, json
from hf_llm.stdlib_data import stdlib_corpus, stdlib_function_records, stdlib_instructions, stdlib_preferences
blob = {
    "records": stdlib_function_records(),
    "corpus": {k: v.to_dict() for k, v in stdlib_corpus().items()},
    "instructions": {k: v.to_dict() for k, v in stdlib_instructions().items()},
    "preferences": {k: v.to_dict() for k, v in stdlib_preferences().items()},
}
print(hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest())
"""


def _digest() -> str:
    blob = {
        "records": stdlib_function_records(),
        "corpus": {k: v.to_dict() for k, v in stdlib_corpus().items()},
        "instructions": {k: v.to_dict() for k, v in stdlib_instructions().items()},
        "preferences": {k: v.to_dict() for k, v in stdlib_preferences().items()},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def records():
    return stdlib_function_records()


@pytest.fixture(scope="module")
def module_of(records):
    """Function source -> its module (sources are unique)."""
    return {r["source"]: r["module"] for r in records}


def test_records_fields_and_filters(records):
    assert len(records) > 3000
    for r in records:
        assert set(r) == {"module", "qualname", "name", "class_name", "kind", "signature", "docstring", "source", "split"}
        assert 80 <= len(r["source"]) <= 1200 and r["source"].isascii()
        assert r["source"].startswith(("def ", "async def ")) and r["signature"].startswith(r["name"] + "(")
        assert r["split"] in ("train", "test")
        assert "\n" not in r["docstring"]
        parts = r["module"].split(".")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts)
    assert len({r["source"] for r in records}) == len(records)  # copies removed
    sample = records[:: max(1, len(records) // 200)]
    for r in sample:
        ast.parse(r["source"])  # each function is valid code on its own
    # Both top-level functions and methods, many with docstrings.
    assert {r["kind"] for r in records} == {"function", "method"}
    assert sum(1 for r in records if r["docstring"]) > 1500


def test_segment_matches_ast_get_source_segment():
    path = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    lines = source.split("\n")
    checked = 0
    for _, node in stdlib_data._functions_of(tree):
        assert stdlib_data._segment(lines, node) == ast.get_source_segment(source, node, padded=True)
        checked += 1
    assert checked > 10


def test_split_is_by_module(records, module_of):
    train = {r["module"] for r in records if r["split"] == "train"}
    test = {r["module"] for r in records if r["split"] == "test"}
    assert train and test and not train & test
    # The split follows the MD5 hash of the module name only.
    for r in records[:: max(1, len(records) // 100)]:
        h = int.from_bytes(hashlib.md5(r["module"].encode()).digest()[:8], "big") / 2**64
        assert r["split"] == ("test" if h < 0.1 else "train")
    for splits, column in ((stdlib_corpus(), "text"), (stdlib_instructions(), "output"), (stdlib_preferences(), "chosen")):
        modules = {name: {module_of[code] for code in splits[name][column]} for name in ("train", "test")}
        assert modules["train"] and modules["test"] and not modules["train"] & modules["test"]


def test_corpus_sizes_and_shape():
    corpus = stdlib_corpus()
    assert set(corpus) == {"train", "test"}
    assert corpus["train"].column_names == ["text"]
    total = len(corpus["train"]) + len(corpus["test"])
    assert total == stdlib_data.DEFAULT_CORPUS_SIZE
    assert 0.03 < len(corpus["test"]) / total < 0.25
    for text in list(corpus["train"]["text"][:200]) + list(corpus["test"]["text"]):
        assert 80 <= len(text) <= 1200 and text.isascii()
    small = stdlib_corpus(max_functions=10)
    assert len(small["train"]) + len(small["test"]) == 10
    assert len(to_text(corpus["train"])) == len(corpus["train"])


def test_instructions_shape():
    data = stdlib_instructions()
    total = len(data["train"]) + len(data["test"])
    assert total == stdlib_data.DEFAULT_INSTRUCTIONS_SIZE and len(data["test"]) > 0
    for split in data.values():
        assert split.column_names == ["instruction", "input", "output"]
        for row in split:
            assert row["input"] == ""
            assert row["instruction"].startswith(("Write a Python function `", "Write a Python method `"))
            assert " that: " in row["instruction"] and not row["instruction"].endswith("that: ")
            assert row["output"].startswith(("def ", "async def "))
            name = row["output"].split("(", 1)[0].split()[-1]
            assert f"`{name}(" in row["instruction"]
    mapped = to_prompt_completion(data["train"])
    assert mapped[0]["completion"] == data["train"][0]["output"]


def test_preferences_shape():
    data = stdlib_preferences()
    total = len(data["train"]) + len(data["test"])
    assert total == stdlib_data.DEFAULT_PREFERENCES_SIZE and len(data["test"]) > 1
    kinds = {"other": 0, "shuffled": 0, "truncated": 0}
    for split in data.values():
        assert split.column_names == ["instruction", "input", "chosen", "rejected"]
        chosen_set = set(split["chosen"])
        for row in split:
            assert row["chosen"] != row["rejected"] and row["rejected"].strip()
            if row["rejected"] in chosen_set:
                kinds["other"] += 1  # another function of the same split
            elif sorted(row["rejected"].split("\n")) == sorted(row["chosen"].split("\n")):
                kinds["shuffled"] += 1
            else:
                assert row["chosen"].startswith(row["rejected"])
                kinds["truncated"] += 1
    assert all(count > total // 10 for count in kinds.values()), kinds
    mapped, dropped = to_preference(data["train"], return_dropped=True)
    assert dropped == 0 and len(mapped) == len(data["train"])


def test_same_output_on_every_call(records):
    again = stdlib_function_records()
    assert again == records and again is not records
    again[0]["source"] = "changed"  # callers get copies: the cache is untouched
    assert stdlib_function_records()[0]["source"] == records[0]["source"]
    first, second = stdlib_preferences(), stdlib_preferences()
    assert first["train"].to_dict() == second["train"].to_dict()
    first["train"] = None  # replacing a split does not reach the cache
    assert stdlib_preferences()["train"] is not None


def test_independent_of_hash_seed_and_process():
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", DIGEST_SCRIPT], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _digest()


def test_bad_arguments():
    with pytest.raises(ValueError):
        stdlib_corpus(max_chars=10, min_chars=20)
    with pytest.raises(ValueError):
        stdlib_instructions(test_fraction=0.0)
    with pytest.raises(ValueError):
        stdlib_preferences(max_examples=-1)
