"""hf_llm.data: reading local files, mapping each Hub schema, and the errors bad data gets."""

import csv
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from hf_llm.data import (
    ALPACA_PROMPT_TEMPLATE,
    ALPACA_PROMPT_TEMPLATE_WITH_INPUT,
    DataFormatError,
    detect_schema,
    format_prompt,
    load_raw_dataset,
    to_preference,
    to_prompt_completion,
    to_text,
)
from hf_llm.training.recipe_data import split_train_test

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

# Rows exactly as the Hub data sets hold them (field names and nesting).
ALPACA_ROWS = [  # tatsu-lab/alpaca, "text" included
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well.",
        "text": f"{HEAD}\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n1. Eat ...",
    },
    {
        "instruction": "Translate the sentence into French.",
        "input": "Good morning.",
        "output": "Bonjour.",
        "text": "ignored",
    },
]

CODE_SEARCH_NET_ROWS = [
    {
        "repository_name": "apache/spark",
        "func_path_in_repository": "python/pyspark/rdd.py",
        "func_name": "RDD.count",
        "whole_func_string": 'def count(self):\n    """Return the number of elements."""\n    return self.mapPartitions(lambda i: [sum(1 for _ in i)]).sum()',
        "language": "python",
        "func_code_string": "def count(self):\n    return self.mapPartitions(lambda i: [sum(1 for _ in i)]).sum()",
        "func_code_tokens": ["def", "count", "(", "self", ")", ":"],
        "func_documentation_string": "Return the number of elements.",
        "func_documentation_tokens": ["Return", "the", "number", "of", "elements", "."],
        "split_name": "train",
        "func_code_url": "https://github.com/apache/spark/blob/abc/python/pyspark/rdd.py#L1-L3",
    },
    {
        "repository_name": "psf/requests",
        "func_path_in_repository": "requests/api.py",
        "func_name": "get",
        "whole_func_string": 'def get(url, params=None, **kwargs):\n    """Sends a GET request."""\n    return request("get", url, params=params, **kwargs)',
        "language": "python",
        "func_code_string": 'def get(url, params=None, **kwargs):\n    return request("get", url, params=params, **kwargs)',
        "func_code_tokens": ["def", "get"],
        "func_documentation_string": "Sends a GET request.",
        "func_documentation_tokens": ["Sends", "a", "GET", "request", "."],
        "split_name": "train",
        "func_code_url": "https://github.com/psf/requests/blob/abc/requests/api.py#L1-L3",
    },
    {
        "repository_name": "apache/spark",
        "func_path_in_repository": "python/pyspark/sql/column.py",
        "func_name": "Column.alias",
        "whole_func_string": "def alias(self, *alias):\n    return Column(getattr(self._jc, 'as')(alias[0]))",
        "language": "python",
        "func_code_string": "def alias(self, *alias):\n    return Column(getattr(self._jc, 'as')(alias[0]))",
        "func_code_tokens": ["def", "alias"],
        "func_documentation_string": "",
        "func_documentation_tokens": [],
        "split_name": "train",
        "func_code_url": "https://github.com/apache/spark/blob/abc/python/pyspark/sql/column.py#L1-L2",
    },
]


def _webgpt(question, answer_0, answer_1, score_0, score_1):
    return {
        "question": {"dataset": "eli5", "id": f"id-{len(question)}", "full_text": question},
        "quotes_0": {"title": ["Sky - Wikipedia (en.wikipedia.org)"], "extract": ["Rayleigh scattering ..."]},
        "answer_0": answer_0,
        "tokens_0": ["The", " sky"],
        "score_0": score_0,
        "quotes_1": {"title": [], "extract": []},
        "answer_1": answer_1,
        "tokens_1": ["Because"],
        "score_1": score_1,
    }


WEBGPT_ROWS = [
    _webgpt("Why is the sky blue?", "Rayleigh scattering [1].", "Because it is.", 1.0, -1.0),
    _webgpt("Why do cats purr?", "Nobody knows.", "Purring comes from the larynx [1].", -0.5, 0.5),
    _webgpt("Is this a tie?", "Yes.", "No.", 0.0, 0.0),  # 0/0: no preference
    _webgpt("Another tie?", "A.", "B.", 0.25, 0.25),
]


def _write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _alpaca_prompt(instruction, input_=""):
    if input_:
        return f"{HEAD}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_}\n\n### Response:\n"
    return f"{HEAD}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


# ---------------------------------------------------------------------------------------------------
# Templates


def test_alpaca_templates_match_the_book_format():
    assert ALPACA_PROMPT_TEMPLATE == HEAD + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    assert ALPACA_PROMPT_TEMPLATE_WITH_INPUT == HEAD + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    assert format_prompt("Add 2 and 3.") == _alpaca_prompt("Add 2 and 3.")
    assert format_prompt("Add.", "2 and 3") == _alpaca_prompt("Add.", "2 and 3")
    # The constant passed explicitly behaves as the default (input block only when there is an input).
    assert format_prompt("Add.", "2 and 3", template=ALPACA_PROMPT_TEMPLATE) == _alpaca_prompt("Add.", "2 and 3")


def test_custom_template_fills_only_its_placeholders():
    assert format_prompt("Sum {a}", "x", template="Q: {instruction} | {input}\nA: ") == "Q: Sum {a} | x\nA: "
    # No {input} in the template: the input is kept, after the instruction.
    assert format_prompt("Sum", "1, 2", template="Q: {instruction}\nA: ") == "Q: Sum\n\n1, 2\nA: "
    with pytest.raises(DataFormatError, match="instruction"):
        format_prompt("Sum", template="no placeholder")


# ---------------------------------------------------------------------------------------------------
# Each schema, from each file type


@pytest.mark.parametrize("writer,suffix", [(_write_json, ".json"), (_write_jsonl, ".jsonl"), (_write_csv, ".csv"), (_write_parquet, ".parquet")])
def test_alpaca_rows_to_prompt_completion(tmp_path, writer, suffix):
    raw = load_raw_dataset(writer(tmp_path / f"alpaca{suffix}", ALPACA_ROWS))
    assert isinstance(raw, Dataset) and len(raw) == 2
    assert detect_schema(raw) == "alpaca"
    out = to_prompt_completion(raw)
    assert out.column_names == ["prompt", "completion"]
    # No end-of-text here: TRL's SFTTrainer appends it (test_sft_trainer_appends_the_end_of_text_once).
    assert out[0] == {"prompt": _alpaca_prompt(ALPACA_ROWS[0]["instruction"]), "completion": ALPACA_ROWS[0]["output"]}
    assert out[1]["prompt"] == _alpaca_prompt("Translate the sentence into French.", "Good morning.")
    assert out[1]["completion"] == "Bonjour."


def test_alpaca_rows_without_input_field_keep_their_output():
    rows = [{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Say bye.", "input": None, "output": "Bye.</s>"}]
    out = to_prompt_completion(rows)
    assert out["prompt"] == [_alpaca_prompt("Say hi."), _alpaca_prompt("Say bye.")]
    assert out["completion"] == ["Hi.", "Bye.</s>"]


def test_sft_trainer_appends_the_end_of_text_once(tmp_path):
    """to_prompt_completion leaves end-of-text to TRL's SFTTrainer, which appends its tokenizer's EOS to each
    completion that lacks it: every training sequence ends with exactly one."""
    from trl import SFTConfig, SFTTrainer

    from hf_llm import GPTConfig, GPTForCausalLM
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    eos = tokenizer.eos_token
    data = to_prompt_completion([{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6" + eos}])
    assert data["completion"] == ["4", "6" + eos]
    model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=len(tokenizer)))
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    sequences = trainer.train_dataset["input_ids"]
    assert [tokenizer.decode(ids) for ids in sequences] == ["2+2=4" + eos, "3+3=6" + eos]
    for ids in sequences:
        assert ids[-1] == tokenizer.eos_token_id and ids[-2] != tokenizer.eos_token_id


def test_prompt_completion_rows_pass_through(tmp_path):
    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6<|endoftext|>"}]
    raw = load_raw_dataset(_write_parquet(tmp_path / "pc.parquet", rows))
    assert detect_schema(raw) == "prompt_completion"
    out = to_prompt_completion(raw, template="ignored {instruction}")
    assert out.to_list() == rows


@pytest.mark.parametrize("writer,suffix", [(_write_jsonl, ".jsonl"), (_write_parquet, ".parquet")])
def test_code_search_net_rows_to_text(tmp_path, writer, suffix):
    raw = load_raw_dataset(writer(tmp_path / f"csn{suffix}", CODE_SEARCH_NET_ROWS))
    assert detect_schema(raw) == "code_search_net"
    everything = to_text(raw)
    assert everything.column_names == ["text"]
    assert everything["text"] == [r["whole_func_string"] for r in CODE_SEARCH_NET_ROWS]
    spark = to_text(raw, repository_name="apache/spark")
    assert spark["text"] == [CODE_SEARCH_NET_ROWS[0]["whole_func_string"], CODE_SEARCH_NET_ROWS[2]["whole_func_string"]]
    docs = to_text(raw, text_field="func_documentation_string")  # the empty one is dropped
    assert docs["text"] == ["Return the number of elements.", "Sends a GET request."]
    with pytest.raises(DataFormatError, match=r"repository_name == 'apache/flink'.*apache/spark"):
        to_text(raw, repository_name="apache/flink")


def test_text_and_content_columns(tmp_path):
    assert to_text([{"text": "a"}, {"text": "b"}])["text"] == ["a", "b"]
    assert to_text([{"content": "x", "meta": 1}])["text"] == ["x"]
    assert detect_schema([{"content": "x"}]) == "text"
    with pytest.raises(DataFormatError, match="text_field"):
        to_text([{"body": "x"}])
    with pytest.raises(DataFormatError, match="'body'"):
        to_text([{"text": "x"}], text_field="body")


def test_webgpt_rows_to_preference(tmp_path, caplog):
    raw = load_raw_dataset(_write_json(tmp_path / "webgpt.json", WEBGPT_ROWS))
    assert detect_schema(raw) == "webgpt"
    with caplog.at_level(logging.WARNING, logger="hf_llm.data"):
        out, dropped = to_preference(raw, return_dropped=True)
    assert dropped == 2  # the 0/0 row and the 0.25/0.25 row
    assert "2 ties" in caplog.text
    assert out.column_names == ["prompt", "chosen", "rejected"]
    assert out.to_list() == [
        {"prompt": _alpaca_prompt("Why is the sky blue?"), "chosen": "Rayleigh scattering [1].", "rejected": "Because it is."},
        {"prompt": _alpaca_prompt("Why do cats purr?"), "chosen": "Purring comes from the larynx [1].", "rejected": "Nobody knows."},
    ]
    custom = to_preference(raw, template="Question: {instruction}\n\nAnswer: ")
    assert custom[0]["prompt"] == "Question: Why is the sky blue?\n\nAnswer: "


def test_only_ties_is_an_error():
    with pytest.raises(DataFormatError, match="no preference pair left"):
        to_preference([WEBGPT_ROWS[2], WEBGPT_ROWS[3]])


def test_prompt_chosen_rejected_and_instruction_rows(tmp_path):
    explicit = [{"prompt": "Hi ", "chosen": "there", "rejected": "go away"}, {"prompt": "", "chosen": "same", "rejected": "same"}]
    raw = load_raw_dataset(_write_jsonl(tmp_path / "pref.jsonl", explicit))
    assert detect_schema(raw) == "preference"
    out, dropped = to_preference(raw, return_dropped=True)
    assert dropped == 1 and out.to_list() == [explicit[0]]

    rows = [{"instruction": "Greet.", "input": "Bob", "chosen": "Hello Bob.", "rejected": "What?", "output": "Hello Bob."}]
    assert detect_schema(rows) == "instruction_preference"
    out = to_preference(rows)
    assert out.to_list() == [{"prompt": _alpaca_prompt("Greet.", "Bob"), "chosen": "Hello Bob.", "rejected": "What?"}]


def test_detect_schema_lists_columns_and_schemas():
    with pytest.raises(DataFormatError) as info:
        detect_schema([{"foo": 1, "bar": "x"}])
    message = str(info.value)
    assert "'foo'" in message and "'bar'" in message
    for schema in ("webgpt", "preference", "instruction_preference", "prompt_completion", "alpaca", "code_search_net", "text"):
        assert schema in message


def test_wrong_schema_for_the_mapping():
    with pytest.raises(DataFormatError, match="to_preference cannot use the columns"):
        to_preference(ALPACA_ROWS)
    with pytest.raises(DataFormatError, match="to_prompt_completion cannot use the columns"):
        to_prompt_completion([{"text": "x"}])
    with pytest.raises(DataFormatError, match="one split"):
        to_text(DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}))


# ---------------------------------------------------------------------------------------------------
# Files and folders


def test_txt_document_and_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First line.\n\nSecond line.\n", encoding="utf-8")
    assert load_raw_dataset(path).to_list() == [{"text": "First line.\n\nSecond line.\n"}]
    assert load_raw_dataset(path, txt_mode="lines")["text"] == ["First line.", "Second line."]


def test_json_variants(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "solo"}), encoding="utf-8")
    assert load_raw_dataset(one)["text"] == ["solo"]
    lines = _write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])  # JSON lines named .json
    assert load_raw_dataset(lines)["text"] == ["a", "b"]
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": "x"}]).encode())
    assert load_raw_dataset(bom)["text"] == ["x"]


def test_folder_reads_every_supported_file_sorted(tmp_path):
    _write_jsonl(tmp_path / "b.jsonl", [{"text": "from b"}])
    _write_json(tmp_path / "a.json", [{"text": "from a"}])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("from c", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.json").write_text("not json", encoding="utf-8")
    assert load_raw_dataset(tmp_path)["text"] == ["from a", "from b", "from c"]
    assert load_raw_dataset(tmp_path, data_files=["b.jsonl"])["text"] == ["from b"]
    splits = {"train": "a.json", "validation": "b.jsonl"}
    assert load_raw_dataset(tmp_path, split="validation", data_files=splits)["text"] == ["from b"]


def test_train_test_split_is_deterministic():
    ds = Dataset.from_dict({"text": [str(i) for i in range(100)]})
    a = split_train_test(ds, 0.1, seed=3)
    b = split_train_test(ds, 0.1, seed=3)
    assert (len(a["train"]), len(a["test"])) == (90, 10)
    assert a["test"]["text"] == b["test"]["text"]
    assert set(a["train"]["text"]).isdisjoint(a["test"]["text"])
    assert split_train_test(ds, 0.1, seed=4)["test"]["text"] != a["test"]["text"]
    tiny = split_train_test(Dataset.from_dict({"text": ["a", "b"]}), 0.01, seed=0)
    assert (len(tiny["train"]), len(tiny["test"])) == (1, 1)
    with pytest.raises(ValueError):
        split_train_test(ds, 1.0, seed=0)
    with pytest.raises(DataFormatError, match="cannot be split"):
        split_train_test(Dataset.from_dict({"text": ["a"]}), 0.1, seed=0)


def test_length_policy_counts_the_end_of_text_the_trainer_appends():
    """SFT rows carry no EOS (SFTTrainer appends it), so a row of exactly the limit without it is one token too long."""
    from types import SimpleNamespace

    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL
    from hf_llm.training.recipe_data import enforce_length_limit

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    model = SimpleNamespace(config=SimpleNamespace(n_positions=24))
    prompt = "def add(a, b):\n"
    completion = tokenizer.decode(tokenizer(prompt + "    return a + b\n" * 10)["input_ids"][:24])[len(prompt):]
    assert len(tokenizer(prompt + completion)["input_ids"]) == 24
    data = DatasetDict(train=Dataset.from_dict({"prompt": [prompt, prompt], "completion": [completion, "    pass\n"]}))
    sft = dict(sequences=[("prompt", "completion")], truncatable_after="prompt")
    kept, limit = enforce_length_limit(data, tokenizer, model, None, "drop", **sft)
    assert limit == 24 and kept["train"]["completion"] == ["    pass\n"]
    without_eos, _ = enforce_length_limit(data, tokenizer, model, None, "drop", **sft, eos_appended_by_trainer="")
    assert without_eos["train"]["completion"] == [completion, "    pass\n"]


# ---------------------------------------------------------------------------------------------------
# The shared real files


def test_shared_instruction_data(shared_data):
    raw = load_raw_dataset(shared_data / "raw" / "instruction-data.json")
    assert len(raw) == 1100 and detect_schema(raw) == "alpaca"
    out = to_prompt_completion(raw)
    assert len(out) == 1100
    rows = raw.to_list()
    for row, mapped in zip(rows, out):
        if row["input"]:
            expected = HEAD + f"\n\n### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n"
        else:
            expected = HEAD + f"\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n"
        assert mapped == {"prompt": expected, "completion": row["output"]}
    assert out[0]["prompt"].endswith("### Input:\nfreind --> friend\n\n### Response:\n")


def test_shared_preference_data(shared_data):
    raw = load_raw_dataset(shared_data / "raw" / "instruction-data-with-preference.json")
    assert len(raw) == 1100 and detect_schema(raw) == "instruction_preference"
    out, dropped = to_preference(raw, return_dropped=True)
    assert out.column_names == ["prompt", "chosen", "rejected"]
    identical = sum(1 for r in raw if r["chosen"] == r["rejected"])
    assert dropped == identical and len(out) == 1100 - identical
    assert all(c != r for c, r in zip(out["chosen"], out["rejected"]))
    assert out[0]["prompt"] == _alpaca_prompt(raw[0]["instruction"], raw[0]["input"])
    # The same file also serves SFT, through its "output" field.
    assert len(to_prompt_completion(raw)) == 1100


def test_shared_verdict(shared_data):
    path = shared_data / "raw" / "the-verdict.txt"
    out = to_text(load_raw_dataset(path))
    assert len(out) == 1
    assert out[0]["text"] == path.read_text(encoding="utf-8")
    assert out[0]["text"].startswith("I HAD always thought Jack Gisburn")


# ---------------------------------------------------------------------------------------------------
# Errors: each names where and how to fix


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_raw_dataset(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_raw_dataset("data/does-not-exist.jsonl")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        load_raw_dataset(empty_dir)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".txt", ".parquet"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"" if suffix == ".parquet" else b"  \n")
    with pytest.raises(DataFormatError, match="empty") as info:
        load_raw_dataset(path)
    assert str(path) in str(info.value)


def test_inputs_the_readers_mishandle_are_refused_clearly(tmp_path):
    # A null row crashes pyarrow's JSON reader (apache/arrow#47409); it must be refused before it gets there.
    (tmp_path / "null.jsonl").write_text('{"text": "a"}\nnull\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"row 1 \(line 2\) is null, not an object"):
        load_raw_dataset(tmp_path / "null.jsonl")
    (tmp_path / "null.json").write_text('[null, {"text": "a"}]', encoding="utf-8")
    with pytest.raises(DataFormatError, match="row 0 is null, not an object"):
        load_raw_dataset(tmp_path / "null.json")
    # pandas only warns, and drops the value, when a CSV row has more values than the header.
    (tmp_path / "wide.csv").write_text("instruction,output\nAdd,1,2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="wide.csv.*Fix: quote values with commas"):
        load_raw_dataset(tmp_path / "wide.csv")
    # CSV values stay text, even when every value of a column looks like a number.
    (tmp_path / "numbers.csv").write_text("instruction,output\nAdd 1 and 1,2\n", encoding="utf-8")
    assert load_raw_dataset(tmp_path / "numbers.csv")["output"] == ["2"]
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    with pytest.raises(DataFormatError, match="zero.parquet: no rows"):
        load_raw_dataset(tmp_path / "zero.parquet")


def test_no_rows(tmp_path):
    with pytest.raises(DataFormatError, match="no rows"):
        load_raw_dataset(_write_json(tmp_path / "none.json", []))
    header_only = tmp_path / "header.csv"
    header_only.write_text("instruction,output\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no rows"):
        load_raw_dataset(header_only)


def test_not_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    data = b'{"text": "ok"}\n{"text": "caf\xe9"}\n'
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as info:
        load_raw_dataset(path)
    message = str(info.value)
    assert str(path) in message and "UTF-8" in message
    offset = data.index(b"\xe9")
    assert f"byte offset {offset}" in message and "0xe9" in message and "line 2" in message


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.xml"
    path.write_text("<rows/>", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"unsupported file type '\.xml'"):
        load_raw_dataset(path)


def test_malformed_json_and_rows(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "a"},', encoding="utf-8")
    with pytest.raises(DataFormatError, match="not valid JSON.*line 1"):
        load_raw_dataset(bad)
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"row 1 \(line 2\)"):
        load_raw_dataset(bad_line)
    not_objects = _write_json(tmp_path / "list.json", [{"text": "a"}, ["b"]])
    with pytest.raises(DataFormatError, match="row 1 is a list"):
        load_raw_dataset(not_objects)


def test_mixed_types_are_data_errors_not_arrow_errors(tmp_path):
    rows = [{"instruction": "a", "output": "fine"}, {"instruction": "b", "output": "ok"}, {"instruction": "c", "output": 42}]
    with pytest.raises(DataFormatError) as info:
        load_raw_dataset(_write_json(tmp_path / "mixed.json", rows))
    assert "row 2" in str(info.value) and "'output'" in str(info.value) and "42" in str(info.value)
    assert (info.value.row, info.value.field) == (2, "output")
    nested = [{"meta": {"x": 1}}, {"meta": {"x": 2}}, {"meta": {"x": "two"}}]
    with pytest.raises(DataFormatError, match=r"row 2, field 'meta'"):
        load_raw_dataset(_write_json(tmp_path / "nested.json", nested))


@pytest.mark.parametrize(
    "rows,row,field",
    [
        ([{"instruction": "a", "output": "x"}, {"instruction": "b"}], 1, "output"),  # missing field
        ([{"instruction": "a", "output": "x"}, {"instruction": None, "output": "y"}], 1, "instruction"),
    ],
)
def test_missing_field(tmp_path, rows, row, field):
    raw = load_raw_dataset(_write_json(tmp_path / "missing.json", rows))
    with pytest.raises(DataFormatError) as info:
        to_prompt_completion(raw)
    message = str(info.value)
    assert f"row {row}" in message and f"'{field}'" in message and "missing" in message and "Fix:" in message
    assert str(tmp_path / "missing.json") in message


def test_wrong_type(tmp_path):
    # A number where text is expected, in a column where every value is a number (so loading succeeds).
    rows = [{"instruction": "a", "input": "", "output": 1}, {"instruction": "b", "input": "", "output": 2}]
    raw = load_raw_dataset(_write_jsonl(tmp_path / "numbers.jsonl", rows))
    with pytest.raises(DataFormatError) as info:
        to_prompt_completion(raw)
    message = str(info.value)
    assert "row 0" in message and "'output'" in message and "a number (1)" in message
    with pytest.raises(DataFormatError, match=r"row 1, field 'score_1'.*a number"):
        to_preference([WEBGPT_ROWS[0], {**WEBGPT_ROWS[1], "score_1": "high"}])
    with pytest.raises(DataFormatError, match=r"row 0, field 'question'"):
        to_preference([{**WEBGPT_ROWS[0], "question": 7}])
    with pytest.raises(DataFormatError, match=r"row 0, field 'score_0'"):
        to_preference([{**WEBGPT_ROWS[0], "score_0": True}])
    with pytest.raises(DataFormatError, match=r"row 1, field 'text'"):
        to_text([{"text": "a"}, {"text": ["b"]}])


@pytest.mark.parametrize(
    "mapper,rows,row,field",
    [
        (to_prompt_completion, [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "   "}], 1, "output"),
        (to_prompt_completion, [{"prompt": "p", "completion": ""}], 0, "completion"),
        (to_preference, [{"prompt": "p", "chosen": "", "rejected": "r"}], 0, "chosen"),
        (to_preference, [{"instruction": "i", "chosen": "c", "rejected": ""}], 0, "rejected"),
        (to_preference, [_webgpt("Q?", "", "B.", 1.0, -1.0)], 0, "answer_0"),
    ],
)
def test_empty_response(tmp_path, mapper, rows, row, field):
    raw = load_raw_dataset(_write_json(tmp_path / "empty-response.json", rows))
    with pytest.raises(DataFormatError) as info:
        mapper(raw)
    message = str(info.value)
    assert f"row {row}" in message and f"'{field}'" in message and "empty" in message and "Fix:" in message


def test_local_only_options(tmp_path):
    path = _write_json(tmp_path / "a.json", [{"text": "a"}])
    with pytest.raises(DataFormatError, match="Hub data sets only"):
        load_raw_dataset(path, name="python")
    with pytest.raises(DataFormatError, match="single split 'train'"):
        load_raw_dataset(path, split="test")


def test_data_cards_have_the_hub_header():
    import yaml

    cards = sorted((REPO_ROOT / "data_cards").glob("*.md"))
    names = {p.stem for p in cards}
    assert {"stdlib-functions", "stdlib-instructions", "stdlib-preferences", "the-verdict", "alpaca", "instruction-data",
            "instruction-data-with-preference", "webgpt_comparisons", "code_search_net", "README"} <= names
    for card in cards:
        if card.name == "README.md":
            continue
        text = card.read_text(encoding="utf-8")
        _, header, body = text.split("---\n", 2)
        meta = yaml.safe_load(header)
        assert {"license", "language", "task_categories", "size_categories", "pretty_name"} <= set(meta), card.name
        for section in ("## Description", "## Schema", "## How hf_llm maps it", "## Known limits/biases", "## Source and license"):
            assert section in body, (card.name, section)
