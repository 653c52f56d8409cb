"""The recipes' data layer: `load_raw_dataset` reads local files, folders and Hub data sets with `datasets`;
`to_text`, `to_prompt_completion` (TRL's SFTTrainer) and `to_preference` (TRL's RewardTrainer) map them to a
recipe's schema, checking each column of every row in one arrow pass. Bad data raises `DataFormatError`,
naming the source, row (0-based, in file order), field and fix, which the recipes print as one line."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Features, Value

from .folders import looks_like_local_path

logger = logging.getLogger(__name__)

__all__ = ["ALPACA_PROMPT_TEMPLATE", "ALPACA_PROMPT_TEMPLATE_WITH_INPUT", "DataFormatError", "SCHEMAS", "SUPPORTED_EXTENSIONS",
           "detect_schema", "format_prompt", "load_raw_dataset", "to_preference", "to_prompt_completion", "to_text"]


class DataFormatError(ValueError):
    """Data hf_llm cannot use. The message names the source (file, folder or data set), the row (0-based, in
    file order) and the field where they apply, and ends with the fix; `source`, `row` and `field` keep them."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None, field: str | None = None):
        super().__init__(message)
        self.source, self.row, self.field = source, row, field


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}  # the `datasets` builders
SUPPORTED_EXTENSIONS = tuple(_BUILDERS)

ALPACA_PROMPT_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
                          "\n\n### Instruction:\n{instruction}\n\n### Response:\n")
"""The Alpaca prompt for rows without an input; the response follows it directly."""

ALPACA_PROMPT_TEMPLATE_WITH_INPUT = ALPACA_PROMPT_TEMPLATE.replace("### Response:", "### Input:\n{input}\n\n### Response:")
"""The Alpaca prompt for rows with a non-empty input (the "### Input:" block follows the instruction)."""

# Schema -> its identifying columns, most specific first (Hub Alpaca rows also have "text"; preference files "output").
SCHEMAS: dict[str, tuple[str, ...]] = {
    "webgpt": ("question", "answer_0", "answer_1", "score_0", "score_1"), "preference": ("prompt", "chosen", "rejected"),
    "instruction_preference": ("instruction", "chosen", "rejected"), "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"), "code_search_net": ("whole_func_string",), "text": ("text",),  # or "content"
}
_TEXT_FIELDS = ("text", "content", "whole_func_string")
_KINDS = (("a boolean", bool), ("a number", (int, float)), ("a string", str), ("a list", (list, tuple)), ("an object", Mapping))


def _error(source: str, problem: str, fix: str, row: int | None = None, field: str | None = None) -> DataFormatError:
    where = f"row {row}, field '{field}': " if row is not None and field is not None else ""
    return DataFormatError(f"{source}: {where}{problem}. Fix: {fix}.", source=source, row=row, field=field)


def _kind(value: Any) -> str:
    """The JSON type of a value in words: "a string", "a number", "a boolean", "a list" or "an object"."""
    return next((kind for kind, types in _KINDS if isinstance(value, types)), "a " + type(value).__name__)


def _describe(value: Any) -> str:
    """A short description of a JSON-like value for messages, e.g. "a number (42)"."""
    return "null" if value is None else f"{_kind(value)} ({shown[:57] + '...' if len(shown := repr(value)) > 60 else shown})"


def load_raw_dataset(name_or_path: str | os.PathLike, split: str = "train", data_files=None, **kwargs) -> Dataset:
    """Read raw rows with `datasets.load_dataset` from a local file or folder, or from a data set on the Hub.

    Local files: `.json` (a list of objects or JSON lines), `.jsonl`, `.csv` (every value text, "" if empty),
    `.parquet`, `.txt` (one row `{"text": <the file>}`; `txt_mode="lines"`: one per non-empty line). A folder
    gives every such file under it (hidden ones skipped) in sorted order, or those `data_files` names (globs
    inside it, or a mapping split -> those); local data has the single split "train" and no other option.
    Anything else is a Hub name: `load_dataset(name, split=split, data_files=data_files, **kwargs)`. Raises
    FileNotFoundError for what does not exist, DataFormatError (file, row, field and fix) for what cannot be read.
    """
    if (path := Path(os.path.expanduser(text := os.fspath(name_or_path)))).exists():
        return _load_local(path, split, data_files, dict(kwargs))
    # A name with a data-file extension or a path prefix cannot be a Hub id: say "not found" without asking the Hub.
    if text.lower().endswith(SUPPORTED_EXTENSIONS) or looks_like_local_path(text):
        raise FileNotFoundError(f"{text}: no such file or folder (relative paths start from {Path.cwd()}). "
                                f"Fix: check the path, or give a Hub data-set name such as 'tatsu-lab/alpaca'.")
    kwargs.pop("txt_mode", None)
    try:
        loaded = datasets.load_dataset(text, split=split, data_files=data_files, **kwargs)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise FileNotFoundError(f"{text}: not a local file or folder (looked in {Path.cwd()}) and not a data set on the Hub ({err}). "
                                f"Fix: check the spelling, log in for gated data sets, or give a path to a local file.") from err
    if isinstance(loaded, DatasetDict) and len(loaded) != 1:
        raise _error(text, f"choose a split among {sorted(loaded)}", "pass split=...")
    return next(iter(loaded.values())) if isinstance(loaded, DatasetDict) else loaded


def _load_local(path: Path, split: str, data_files, kwargs: dict) -> Dataset:
    source, txt_mode = str(path), kwargs.pop("txt_mode", "document")
    if txt_mode not in ("document", "lines"):
        raise _error(source, f"txt_mode must be 'document' or 'lines', not {txt_mode!r}", "pass one of those")
    if kwargs:
        raise _error(source, f"the options {', '.join(f'{k}={v!r}' for k, v in kwargs.items())} apply to Hub data sets only "
                     "(local files have no configurations)", "drop them (e.g. --dataset_config) when reading a local file or folder")
    if isinstance(data_files, Mapping):
        if split not in data_files:
            raise _error(source, f"no split {split!r} in data_files (it has {sorted(data_files)})", "pass one of those as split")
        data_files = data_files[split]
    elif split not in (None, "train"):
        raise _error(source, f"local data has the single split 'train', not {split!r}", "use split='train' (the recipes hold out "
                     f"a test part themselves), or map splits to files with data_files={{'train': ..., {split!r}: ...}}")
    if path.is_file() and data_files is not None:
        raise _error(source, "data_files selects files inside a folder or a Hub data set, not inside a file", "pass the folder, or drop data_files")
    files = _folder_files(path, data_files) if path.is_dir() else [path]
    if unsupported := [f for f in files if f.suffix.lower() not in _BUILDERS]:
        raise _error(str(unsupported[0]), f"unsupported file type {unsupported[0].suffix.lower() or '(no extension)'!r}",
                     f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    groups = itertools.groupby(files, lambda file: _BUILDERS[file.suffix.lower()])  # one load_dataset per run of a type
    parts = [_load_files(builder, list(group), source, txt_mode) for builder, group in groups]
    try:
        loaded = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except ValueError as err:
        raise _error(source, f"its files differ in their fields or types ({err})", "give every file the same fields") from None
    if len(loaded) == 0:
        raise _error(source, "no rows", "write at least one row")
    loaded.info.dataset_name = source  # the mappings name the data by it
    return loaded


def _folder_files(folder: Path, data_files) -> list[Path]:
    """The files `data_files` names (globs inside the folder), else every supported one under it (`datasets` resolves the
    patterns, sorts, and skips hidden files and folders)."""
    patterns = ["**"] if data_files is None else [data_files] if isinstance(data_files, (str, os.PathLike)) else data_files
    try:
        found = datasets.data_files.DataFilesList.from_patterns([os.fspath(p) for p in patterns], base_path=str(folder))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{folder}: {err}. Fix: check data_files (names or glob patterns inside the folder).") from None
    files = [Path(f) for f in dict.fromkeys(found) if data_files is not None or Path(f).suffix.lower() in _BUILDERS]
    if not files:
        looked = f"no file matches {patterns}" if data_files is not None else f"no data files in this folder (looked for {', '.join(SUPPORTED_EXTENSIONS)})"
        raise FileNotFoundError(f"{folder}: {looked}. Fix: put the data there, check data_files, or point to the file itself.")
    return files


def _load_files(builder: str, files: list[Path], source: str, txt_mode: str) -> Dataset:
    """Read files of one type with their `datasets` builder; explain a failure by file, row and field."""
    try:  # json: a field whose type changes is refused, not stored as generic JSON, and a non-default encoding
        # makes the builder decode strictly (pyarrow alone lets bytes that are not UTF-8 through)
        options = _csv_options(files) if builder == "csv" else {"json": {"on_mixed_types": None, "encoding": "utf-8-sig"},
                   "text": {"sample_by": "document" if txt_mode == "document" else "line", "encoding": "utf-8-sig"}}.get(builder, {})
        if builder == "json" and any(_has_null_row(f) for f in files):
            raise ValueError("a null row")  # pyarrow's JSON reader would crash on it (apache/arrow#47409)
        if builder == "parquet" and (empty := [f for f in files if pq.read_metadata(f).num_rows == 0]):
            raise _error(str(empty[0]), "no rows", "write at least one row")  # the builder would fail obscurely
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # pandas only warns when a row outgrows the header
            loaded = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except DataFormatError:
        raise
    except Exception as err:  # load_dataset's errors rarely say which file, row or fix
        _explain_failure(builder, files, source if len(files) > 1 else str(files[0]), err)
    if builder == "text" and txt_mode == "lines":
        return loaded.filter(lambda texts: [bool(t.strip()) for t in texts], batched=True, input_columns="text")
    if builder == "text" and (i := _first(pc.equal(pc.utf8_trim_whitespace(loaded.data.column("text")), ""))) is not None:
        _explain_failure(builder, [files[i]], str(files[i]), ValueError("blank"))  # a row per file: that one is empty
    return loaded


def _has_null_row(path: Path) -> bool:
    """Whether a JSON file has a row that is null: pyarrow's JSON reader segfaults on a block that starts with one."""
    with path.open("rb") as f:
        if not f.read(4).removeprefix(b"\xef\xbb\xbf").startswith(b"["):  # JSON lines, as the builder tells them
            f.seek(0)
            return any(line.strip() == b"null" for line in f)
    try:  # a list, which the builder loads whole and writes out as one JSON line per row
        return None in json.loads(path.read_bytes())
    except ValueError:
        return False  # malformed: the builder fails cleanly, and _explain_failure says where


def _csv_options(files: list[Path]) -> dict:
    """Read every CSV value as text ("" for an empty cell), whatever it looks like."""
    names: dict[str, None] = {}
    for path in files:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
        if any(not name.strip() for name in header) or len(set(header)) != len(header):
            raise _error(str(path), f"the header row {header!r} has an empty or repeated column name", "the first line must name every column once")
        names.update(dict.fromkeys(header))
    return {"features": Features(dict.fromkeys(names, Value("string"))), "keep_default_na": False, "index_col": False}


def _explain_failure(builder: str, files: list[Path], source: str, err: Exception) -> NoReturn:
    """Raise a DataFormatError that says why `datasets` could not read `files`: the file, row, field and fix."""
    rows: list[dict] = []
    for path in files:
        data = path.read_bytes()
        start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte-order mark
        try:
            text = "" if builder == "parquet" else data[start:].decode("utf-8")
        except UnicodeDecodeError as bad:
            offset, line = start + bad.start, data.count(b"\n", 0, start + bad.start) + 1
            raise _error(str(path), f"not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line})",
                         f"re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed-{path.name}`") from None
        if not (data if builder == "parquet" else text.strip()):
            raise _error(str(path), "the file is empty", "write the data into it, or point to another file")
        if builder == "json":
            rows.extend(_json_rows(text, path))
        elif builder == "csv" and sum(1 for record in csv.reader(text.splitlines()) if record) < 2:
            raise _error(str(path), "no rows", "write at least one row under the header")
    if builder == "json":
        _rows_to_table(rows, source)  # raises where a field's type changes
    err = err.__cause__ or err  # load_dataset wraps the reader's error in a DatasetGenerationError
    fix = {"json": "write standard JSON (no NaN or Infinity): a list of objects, or one object per line", "text": "check the file",
           "csv": "quote values with commas, quotes or line breaks, so that every row has the header's columns",
           "parquet": "rewrite it, e.g. with pandas.DataFrame.to_parquet"}[builder]
    raise _error(source, f"`datasets` cannot read it as {builder} ({type(err).__name__}: {err})", fix)


def _json_rows(text: str, path: Path) -> list[dict]:
    """The rows of a JSON file, parsed by Python's json module to say where the file is broken."""
    source, rows, lines = str(path), [], [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if path.suffix.lower() != ".jsonl":
        try:
            value, lines = json.loads(text), []
            rows = value if isinstance(value, list) else [value]
        except json.JSONDecodeError as err:
            if not (err.msg == "Extra data" and text.lstrip().startswith("{")):  # else JSON lines in a .json file
                raise _error(source, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
                             "the file must hold a JSON list of objects, or one JSON object per line") from None
    for i, (line_no, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise _error(source, f"row {i} (line {line_no}) is not valid JSON: {err.msg} at column {err.colno}",
                         "write one complete JSON object per line", row=i) from None
    if (i := next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)) is not None:
        where = f"row {i} (line {lines[i][0]})" if lines else f"row {i}"
        raise _error(source, f"{where} is {_describe(rows[i])}, not an object", "make every row a JSON object of fields", row=i)
    return rows


def _rows_to_table(rows: Sequence[Mapping], source: str, fields: Sequence[str] | None = None) -> pa.Table:
    """Dict rows as an arrow table of `fields` (default: all; a field a row lacks is null), naming the row
    and field of the first value that does not fit its column."""
    if not rows:
        raise _error(source, "no rows", "write at least one row")
    if not (fields := list(dict.fromkeys(key for row in rows for key in row)) if fields is None else fields):
        raise _error(source, "the rows have no fields", "give each row its fields, e.g. {\"text\": ...}")
    def converts(values: list) -> bool:
        try:
            return pa.array(values) is not None
        except Exception:
            return False
    arrays = {}
    for name, column in ((name, [row.get(name) for row in rows]) for name in fields):
        # A column keeps one JSON type (nulls aside): say where it changes, which arrow would not.
        kinds = [(i, _kind(value)) for i, value in enumerate(column) if value is not None]
        if (row := next((i for i, kind in kinds if kind != kinds[0][1]), None)) is not None:
            raise _error(source, f"is {_describe(column[row])} but {kinds[0][1]} in row {kinds[0][0]}",
                         f"give '{name}' the same type in every row (e.g. quote numbers meant as text)", row, name)
        try:
            arrays[name] = pa.array(column)
        except Exception:  # nested values of different structure, integers beyond 64 bits
            lo, hi = 0, len(column) - 1  # the first row that cannot join the rows before it
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if converts(column[: mid + 1]) else (lo, mid)
            raise _error(source, f"{_describe(column[lo])} does not fit the structure of the other rows",
                         f"give '{name}' the same structure in every row (the same keys and value types inside it)", lo, name) from None
    return pa.table(arrays)


def _columns_and_source(data, who: str) -> tuple[list[str], str]:
    """The column names of a Dataset or a list of dict rows, and its name for messages."""
    if isinstance(data, DatasetDict):
        raise DataFormatError(f"{who} needs one split, got a DatasetDict with splits {sorted(data)}. Fix: pass e.g. data['train'].")
    if isinstance(data, Dataset):
        return list(data.column_names), data.info.dataset_name or data.info.builder_name or "the data set"
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise DataFormatError(f"{who} expects a datasets.Dataset or a list of dict rows, got {type(data).__name__}.")
    if (i := next((i for i, row in enumerate(data) if not isinstance(row, Mapping)), None)) is not None:
        raise _error("the rows", f"row {i} is {_describe(data[i])}, not an object", "make every row a dict of fields", row=i)
    return list(dict.fromkeys(key for row in data for key in row if isinstance(key, str))), "the rows"


def _table(data, fields: Sequence[str], source: str) -> pa.Table:
    """The `fields` of every row as one arrow table; a field the data lacks is all null."""
    if not isinstance(data, Dataset):
        return _rows_to_table(data, source, fields)
    present = [f for f in fields if f in data.column_names]
    table = data.select_columns(present).with_format("arrow")[:] if present else None
    return pa.table({f: table.column(f) if f in present else pa.nulls(len(data)) for f in fields})


def _first(mask) -> int | None:
    """The index of the first true value of a boolean arrow array, or None."""
    return None if (index := pc.index(mask, True).as_py()) < 0 else index


def _strings(source: str, field: str, column, *, required=True, non_empty=False, what="text", rows=None) -> pa.ChunkedArray:
    """Check that a column holds text; a null is missing (or "" when not `required`). `rows` maps positions
    in a filtered column back to the row numbers the message names."""
    def fail(index: int, problem: str, fix: str) -> NoReturn:
        raise _error(source, problem, fix, index if rows is None else rows[index].as_py(), field)
    nulls = pc.is_null(column)
    if required and (i := _first(nulls)) is not None:
        fail(i, "is missing (null)", f"give every row a value for '{field}' (the {what}), or drop the rows without one")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if (i := _first(pc.invert(nulls))) is not None:
            fail(i, f"expected text (a string), found {_describe(column[i].as_py())}", f"store '{field}' as a string in every row")
        column = pa.nulls(len(column), pa.string())
    column = pc.fill_null(column.cast(pa.string()), "")
    if non_empty and (i := _first(pc.equal(pc.utf8_trim_whitespace(column), ""))) is not None:
        fail(i, f"the {what} is empty", f"write the {what}, or remove the row")
    return column


def _scores(source: str, field: str, column) -> pa.ChunkedArray:
    """Check that a column holds finite numbers (a null is not one)."""
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    bad = pc.invert(pc.is_finite(column.cast(pa.float64()))) if numeric else pc.is_valid(column)
    if (i := _first(pc.or_kleene(bad, pc.is_null(column)))) is not None:
        raise _error(source, f"expected a finite number, found {_describe(column[i].as_py())}", f"store '{field}' as a number such as 0.5", i, field)
    return column.cast(pa.float64())


def detect_schema(ds) -> str:
    """Name the schema of a Dataset (or list of dict rows) from its columns: the first of SCHEMAS that fits, the
    most specific first (Alpaca rows with a "text" column are "alpaca"). DataFormatError if none does."""
    columns, source = _columns_and_source(ds, "detect_schema")
    return _pick_schema(columns, source, tuple(SCHEMAS), "detect_schema", "rename the columns (e.g. Dataset.rename_column) to one of these")


def _pick_schema(columns: list[str], source: str, accepted: Sequence[str], who: str, fix: str) -> str:
    """The first schema of `accepted`, in the order of SCHEMAS, whose columns are all there."""
    for name in (name for name in SCHEMAS if name in accepted):
        if set(columns).issuperset(SCHEMAS[name]) or (name == "text" and "content" in columns):
            return name
    wanted = "; ".join(f"{n} ({'text or content' if n == 'text' else ', '.join(SCHEMAS[n])})" for n in accepted)
    raise _error(source, f"{who} cannot use the columns {columns}. It accepts: {wanted}", fix)


_PLACEHOLDER = re.compile(r"\{(instruction|input)\}")


def format_prompt(instruction: str, input: str = "", template: str | None = None) -> str:  # noqa: A002 - Alpaca's name
    """The prompt for one instruction, ending where the response starts: by default the Alpaca format of the
    "Build a Large Language Model (From Scratch)" book ("### Input:" only for a non-empty input). A custom
    template must contain "{instruction}" (else DataFormatError) and may contain "{input}"; only these two are
    filled. Without "{input}", a row's input is appended to the instruction after a blank line, as `to_messages` does."""
    if template is None or template in (ALPACA_PROMPT_TEMPLATE, ALPACA_PROMPT_TEMPLATE_WITH_INPUT):
        template = ALPACA_PROMPT_TEMPLATE_WITH_INPUT if input else ALPACA_PROMPT_TEMPLATE
    elif "{instruction}" not in template:
        raise DataFormatError(f"prompt template {template[:60]!r} has no {{instruction}} placeholder. "
                              f"Fix: write the template with {{instruction}} (and optionally {{input}}).")
    elif input and "{input}" not in template:
        instruction, input = f"{instruction}\n\n{input}", ""
    # One pass, so braces inside the instruction itself are never taken for placeholders.
    return _PLACEHOLDER.sub(lambda m: {"instruction": instruction, "input": input}[m.group(1)], template)


def _prompts(source: str, table: pa.Table, template: str | None) -> pa.Array:
    """The prompt of every instruction/input row."""
    instructions = _strings(source, "instruction", table.column("instruction"), non_empty=True, what="instruction")
    inputs = _strings(source, "input", table.column("input"), required=False, what="input")
    return pa.array([format_prompt(i, x, template) for i, x in zip(instructions.to_pylist(), inputs.to_pylist())], pa.string())


def to_text(ds, text_field: str | None = None, repository_name: str | None = None) -> Dataset:
    """Map a Dataset or a list of dict rows to the single column "text", for pretraining. `text_field` holds
    the text (default: the first of "text", "content", "whole_func_string" there is);
    `repository_name` keeps the rows of one code_search_net repository (e.g. "apache/spark"). Empty texts are
    dropped and logged; a missing or non-text value, or no text at all, is a DataFormatError."""
    columns, source = _columns_and_source(ds, "to_text")
    if text_field is None and (text_field := next((f for f in _TEXT_FIELDS if f in columns), None)) is None:
        raise _error(source, f"to_text found none of the columns {list(_TEXT_FIELDS)} (columns: {columns})", "pass text_field= the column holding the text")
    if text_field not in columns:
        raise _error(source, f"no column {text_field!r} (columns: {columns})", "pass text_field= one of those", field=text_field)
    if repository_name is not None and "repository_name" not in columns:
        raise _error(source, f"repository_name={repository_name!r} filters on a 'repository_name' column, which this data lacks "
                     f"(columns: {columns})", "drop repository_name, or use code_search_net-style rows", field="repository_name")
    table, rows = _table(ds, [text_field] + (["repository_name"] if repository_name is not None else []), source), None
    if repository_name is not None:
        names = _strings(source, "repository_name", table.column("repository_name"), what="repository name")
        if not pc.any(keep := pc.equal(names, repository_name)).as_py():
            raise _error(source, f"no row has repository_name == {repository_name!r} (others include {pc.unique(names)[:5].to_pylist()})",
                         "check the spelling (owner/name), or drop repository_name", field="repository_name")
        rows, table = pc.indices_nonzero(keep), table.filter(keep)
    texts = _strings(source, text_field, table.column(text_field), rows=rows)
    blank = pc.equal(pc.utf8_trim_whitespace(texts), "")
    if (empty := pc.sum(blank).as_py() or 0) == len(texts):
        raise _error(source, f"every '{text_field}' is empty", "check the column", field=text_field)
    if empty:
        logger.warning("%s: dropped %d of %d rows whose %r is empty", source, empty, len(texts), text_field)
    return Dataset(pa.table({"text": texts.filter(pc.invert(blank))}))


def to_prompt_completion(ds, template: str | None = None) -> Dataset:
    """Map rows to "prompt" and "completion", for supervised fine-tuning: Alpaca rows ("instruction", "output",
    optional "input"; a "text" column is ignored) get `format_prompt(instruction, input, template)` and their
    output; prompt/completion rows stay as they are. No end-of-text is appended: TRL's SFTTrainer appends its
    tokenizer's EOS to each completion that lacks it. A missing, non-text or empty field is a DataFormatError."""
    columns, source = _columns_and_source(ds, "to_prompt_completion")
    fix = "give the rows instruction/output (and optionally input) or prompt/completion fields"
    if _pick_schema(columns, source, ("prompt_completion", "alpaca"), "to_prompt_completion", fix) == "prompt_completion":
        table = _table(ds, ["prompt", "completion"], source)
        prompts = _strings(source, "prompt", table.column("prompt"), what="prompt")
        completions = _strings(source, "completion", table.column("completion"), non_empty=True, what="completion")
    else:
        table = _table(ds, ["instruction", "input", "output"], source)
        prompts = _prompts(source, table, template)
        completions = _strings(source, "output", table.column("output"), non_empty=True, what="response")
    if len(prompts) == 0:
        raise _error(source, "no rows", "give at least one row")
    return Dataset(pa.table({"prompt": prompts, "completion": completions}))


def to_preference(ds, template: str | None = None, return_dropped: bool = False):
    """Map rows to "prompt", "chosen" and "rejected" (TRL RewardTrainer's explicit-prompt format), for reward models:
    prompt/chosen/rejected as they are; instruction/chosen/rejected (optional input) prompted with `format_prompt`;
    openai/webgpt_comparisons (question {"full_text": ...}, answer_0/1, score_0/1), chosen the higher-scored answer.
    Rows stating no preference (ties, identical answers) are dropped and logged; `return_dropped=True` returns
    `(dataset, their number)`. A missing field, a wrong type, an empty text or no row left is a DataFormatError."""
    columns, source = _columns_and_source(ds, "to_preference")
    fix = "give the rows prompt/chosen/rejected, instruction/chosen/rejected, or the webgpt_comparisons fields"
    schema = _pick_schema(columns, source, ("webgpt", "preference", "instruction_preference"), "to_preference", fix)
    ties = pa.array([False] * len(ds))
    if schema == "webgpt":
        table = _table(ds, ["question", "answer_0", "answer_1", "score_0", "score_1"], source)
        questions = _webgpt_questions(source, table.column("question"))
        scores = [_scores(source, f"score_{j}", table.column(f"score_{j}")) for j in (0, 1)]
        answers = [_strings(source, f"answer_{j}", table.column(f"answer_{j}"), what="answer") for j in (0, 1)]
        ties, first_wins = pc.equal(*scores), pc.greater(*scores)
        for j, answer in enumerate(answers):  # the answers of a pair that states a preference must be written
            if (i := _first(pc.and_(pc.invert(ties), pc.equal(pc.utf8_trim_whitespace(answer), "")))) is not None:
                what = "chosen answer" if first_wins[i].as_py() == (j == 0) else "rejected answer"
                raise _error(source, f"the {what} is empty", f"write the {what}, or remove the row", i, f"answer_{j}")
        chosen, rejected = pc.if_else(first_wins, *answers), pc.if_else(first_wins, answers[1], answers[0])
        prompts = pa.array([format_prompt(q, "", template) for q in questions.to_pylist()], pa.string())
    else:
        explicit = schema == "preference"
        table = _table(ds, ["prompt", "chosen", "rejected"] if explicit else ["instruction", "input", "chosen", "rejected"], source)
        prompts = _strings(source, "prompt", table.column("prompt"), what="prompt") if explicit else _prompts(source, table, template)
        chosen = _strings(source, "chosen", table.column("chosen"), non_empty=True, what="chosen response")
        rejected = _strings(source, "rejected", table.column("rejected"), non_empty=True, what="rejected response")
    identical = pc.and_(pc.invert(ties), pc.equal(chosen, rejected))
    n_ties, n_identical = pc.sum(ties).as_py() or 0, pc.sum(identical).as_py() or 0
    if dropped := n_ties + n_identical:
        logger.warning("%s: dropped %d of %d rows that state no preference (%d ties, %d with identical chosen and rejected)",
                       source, dropped, len(ties), n_ties, n_identical)
    if dropped == len(ties):
        raise _error(source, f"no preference pair left ({len(ties)} rows, {dropped} dropped as ties or identical pairs)",
                     "give rows whose chosen and rejected responses differ")
    keep = pc.invert(pc.or_(ties, identical))
    result = Dataset(pa.table({"prompt": prompts.filter(keep), "chosen": chosen.filter(keep), "rejected": rejected.filter(keep)}))
    return (result, dropped) if return_dropped else result


def _webgpt_questions(source: str, column) -> pa.ChunkedArray:
    """The question texts of webgpt rows: {"full_text": ...} objects, or strings in a flattened copy."""
    if pa.types.is_struct(column.type) and column.type.get_field_index("full_text") >= 0:
        if (i := _first(pc.is_null(column))) is not None:
            raise _error(source, "is missing (null)", "give every comparison its question", i, "question")
        return _strings(source, "question.full_text", pc.struct_field(column, "full_text"), non_empty=True, what="question")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type):
        return _strings(source, "question", column, non_empty=True, what="question")
    i = _first(pc.is_valid(column)) or 0
    raise _error(source, f"expected an object with 'full_text' (or a string), found {_describe(column[i].as_py())}",
                 "store the question as {\"full_text\": \"...\"}, as openai/webgpt_comparisons does", i, "question")
