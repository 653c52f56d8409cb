"""Chat: the ChatML template on every tokenizer, SFT on conversations, and recipes/chat.py driven through a pipe."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT
from test_recipes import FAST, assert_adapter_card_loads_the_saved_adapter, run_recipe

CHAT = REPO_ROOT / "recipes" / "chat.py"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def chat(*args: str, stdin: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`printf STDIN | python recipes/chat.py ARGS`, with this checkout's hf_llm."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(CHAT), *args], input=stdin, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def chat_here(capsys, monkeypatch, *args: str, stdin: str) -> tuple[list[str], str]:
    """recipes/chat.py run in this process on piped `stdin`: (its answer lines, its standard error)."""
    import io

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    run_recipe("chat", *args)
    out, err = capsys.readouterr()
    return out.splitlines(), err


def answers(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n"), result.stdout
    return result.stdout[:-1].split("\n")


# --- the template on the tokenizers ---------------------------------------------------------------


def tokenizers(shared_data):
    from hf_llm.tokenization import build_char_tokenizer, load_gpt2_tokenizer, load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    return {
        "gpt2": load_gpt2_tokenizer(shared_data / "gpt2-tokenizer"),
        "stdlib-bpe": load_tokenizer(DEFAULT_BASE_MODEL),
        "char": build_char_tokenizer(["system user assistant: Be brief. Hi! Hello, how are you?\n"]),
    }


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello, how are you?"},
]


@pytest.mark.parametrize("name", ["gpt2", "stdlib-bpe", "char"])
def test_every_tokenizer_takes_the_chatml_template_and_keeps_it(name, shared_data, tmp_path):
    from hf_llm.tokenization import CHATML_TEMPLATE, add_chat_template, load_tokenizer

    tokenizer = tokenizers(shared_data)[name]
    size, pad = len(tokenizer), tokenizer.pad_token
    added = add_chat_template(tokenizer)
    assert added == [size, size + 1] and len(tokenizer) == size + 2
    assert tokenizer.convert_ids_to_tokens(added) == [IM_START, IM_END]
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == pad == "<|endoftext|>"
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                    "<|im_start|>assistant\nHello, how are you?<|im_end|>\n")
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and text.startswith(prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(added[0]) == 3 and ids.count(added[1]) == 3  # each marker one token, never split
    assert IM_START not in tokenizer.decode(ids, skip_special_tokens=True)  # special: skipped when decoding
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == CHATML_TEMPLATE and loaded.eos_token == IM_END and loaded.pad_token == pad
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert add_chat_template(loaded) == [] and len(loaded) == size + 2  # a second time adds nothing


def test_the_template_marks_the_assistants_answer_and_stop_token_for_the_loss(shared_data):
    from hf_llm.tokenization import add_chat_template

    tokenizer = tokenizers(shared_data)["gpt2"]
    add_chat_template(tokenizer)
    out = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "Hello, how are you?<|im_end|>"


def test_the_model_gets_rows_for_the_new_tokens_with_the_head_tied():
    from hf_llm import GPTForCausalLM
    from hf_llm.tokenization import add_chat_template, load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    tokenizer, model = load_tokenizer(DEFAULT_BASE_MODEL), GPTForCausalLM.from_pretrained(DEFAULT_BASE_MODEL)
    before = model.get_input_embeddings().weight.detach().clone()
    added = add_chat_template(tokenizer, model)
    weight = model.get_input_embeddings().weight
    assert model.config.vocab_size == weight.shape[0] == len(tokenizer) == before.shape[0] + 2
    assert model.get_output_embeddings().weight is weight  # still tied
    assert torch.equal(weight[: before.shape[0]], before)
    assert torch.allclose(weight[added], before.mean(dim=0).expand(2, -1))
    assert model.config.eos_token_id == added[1] and model.generation_config.eos_token_id == [added[1], 0]
    assert add_chat_template(tokenizer, model) == [] and model.get_input_embeddings().weight.shape[0] == len(tokenizer)


# --- conversational data --------------------------------------------------------------------------


def test_messages_rows_are_checked_and_instructions_become_conversations():
    from hf_llm.conversations import to_messages
    from hf_llm.data import DataFormatError

    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    assert to_messages(rows).to_dict()["messages"] == [rows[0]["messages"]]
    alpaca = [{"instruction": "Add.", "input": "1 2", "output": "3"}, {"instruction": "Say hi.", "input": "", "output": "hi"}]
    assert to_messages(alpaca).to_dict()["messages"] == [
        [{"role": "user", "content": "Add.\n\n1 2"}, {"role": "assistant", "content": "3"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
    ]
    bad = [
        ({"messages": [{"role": "robot", "content": "x"}]}, "row 0, field 'messages[0].role'", "use one of system, user, assistant"),
        ({"messages": [{"role": "user", "content": 3}]}, "row 0, field 'messages[0].content'", "expected text content"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "row 0, field 'messages'", "no assistant message"),
        ({"messages": []}, "row 0, field 'messages'", "non-empty list of messages"),
    ]
    for row, where, what in bad:
        with pytest.raises(DataFormatError) as err:
            to_messages([row])
        assert where in str(err.value) and what in str(err.value) and "Fix:" in str(err.value)


def test_as_messages_and_a_prompt_template_exclude_each_other():
    from hf_llm.training import DataArguments, RecipeError, load_sft_data

    with pytest.raises(RecipeError, match="--as_messages .* Pass one of them"):
        load_sft_data(DataArguments(as_messages=True, prompt_template="Q: {instruction}\nA: "))


def test_conversations_longer_than_the_context_are_measured_as_rendered():
    from types import SimpleNamespace

    from datasets import Dataset, DatasetDict

    from hf_llm.tokenization import add_chat_template, load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL, RecipeError, fit_to_model

    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    add_chat_template(tokenizer)
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    long_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 60}]
    long_question = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "Hello"}]
    data = DatasetDict({"train": Dataset.from_dict({"messages": [short, long_answer, long_question]}),
                        "test": Dataset.from_dict({"messages": [short]})})
    rendered = len(tokenizer(tokenizer.apply_chat_template(short, tokenize=False))["input_ids"])
    model = SimpleNamespace(config=SimpleNamespace(n_positions=40, vocab_size=len(tokenizer)))

    def fit(too_long):
        args = SimpleNamespace(max_length=None)
        return fit_to_model(data, tokenizer, model, args, too_long, [("prompt", "completion")], truncatable_after="prompt"), args

    kept, args = fit("truncate")  # the long answer is cut by the trainer; the long question leaves nothing to learn
    assert args.max_length == 40 and kept["train"]["messages"] == [short, long_answer]
    assert fit("drop")[0]["train"]["messages"] == [short] and rendered <= 40
    with pytest.raises(RecipeError, match=r"2 train rows are longer than 40 tokens.*rows \[1, 2\]"):
        fit("refuse")


# --- SFT on conversations, and chat.py on its result --------------------------------------------


def conversations(count: int) -> list[dict]:
    return [{"messages": [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": f"What is {i} plus {i + 1}?"},
        {"role": "assistant", "content": f"{2 * i + 1}"},
        {"role": "user", "content": "And plus one more?"},
        {"role": "assistant", "content": f"{2 * i + 2}"},
    ]} for i in range(count)]


@pytest.fixture(scope="module")
def chat_sft(tmp_path_factory) -> Path:
    """sft_lora.py, two steps on a small messages file: an adapter whose tokenizer has the chat template."""
    folder = tmp_path_factory.mktemp("chat_sft")
    data = folder / "conversations.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in conversations(24)) + "\n")
    out = folder / "sft"
    run_recipe("sft_lora", "--output_dir", str(out), "--dataset_name", str(data), "--max_steps", "2",
               "--warmup_steps", "0", "--learning_rate", "3e-3", "--sample_max_new_tokens", "4", "--merge_adapter", "true", *FAST)
    return out


def test_sft_lora_on_messages_saves_the_template_and_trains_the_new_rows(chat_sft):
    from safetensors.torch import load_file

    from hf_llm.tokenization import CHATML_TEMPLATE, load_tokenizer
    from hf_llm.training import ChatArguments, CheckpointArguments, chat_session, load_for_generation

    tokenizer = load_tokenizer(chat_sft)
    assert tokenizer.chat_template == CHATML_TEMPLATE and tokenizer.eos_token == IM_END
    new_ids = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    config = json.loads((chat_sft / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == new_ids and config["target_modules"] == ["c_attn"]
    saved = load_file(chat_sft / "adapter_model.safetensors")
    # PEFT's "delta" holds the rows' trained values, which replace the base rows (the mean of the others).
    trained = saved["base_model.model.transformer.wte.token_adapter.trainable_tokens_delta"]
    start = saved["base_model.model.transformer.wte.token_adapter.base_layer.weight"][new_ids]
    assert trained.shape == (2, 128) and (trained - start).abs().max() > 1e-3  # the two rows were trained
    assert_adapter_card_loads_the_saved_adapter(chat_sft)  # the card's code gives its base the two rows first
    # The held-out figures and answers: each conversation's last answer, asked as the chat template asks.
    metrics = json.loads((chat_sft / "all_results.json").read_text())
    assert metrics["eval_response_loss"] < metrics["eval_base_response_loss"] and "eval_rouge_l" in metrics
    prompts = [json.loads(line)["prompt"] for line in (chat_sft / "answers.jsonl").read_text().splitlines()]
    assert prompts and all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    # Loaded for generation, the base gets the two rows, and they hold what was trained.
    model, loaded = load_for_generation(CheckpointArguments(model_name_or_path=str(chat_sft)), ChatArguments())
    rows = model.get_input_embeddings().weight[new_ids]
    assert len(loaded) == model.get_input_embeddings().weight.shape[0] == 4098
    assert torch.equal(rows, trained)
    assert torch.equal(model.get_output_embeddings().weight[new_ids], rows)  # the head, tied, answers with them
    # chat.py talks to it in its template.
    session = chat_session(model, loaded, ChatArguments())
    assert session.uses_chat_template and session.stop_ids[0] == new_ids[1]
    assert session.render([("What is 1 plus 2?", "3")], "And plus one more?") == (
        "<|im_start|>user\nWhat is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
        "<|im_start|>user\nAnd plus one more?<|im_end|>\n<|im_start|>assistant\n")


# --- transformers serve, run for real on the GPT-2 export ------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_transformers_serve(folder: Path, log: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`transformers serve FOLDER` (the folder preloaded) on a free localhost port, on the CPU as chat.py runs
    here; returns the process and its base URL. Its output goes to `log`."""
    from transformers.utils.import_utils import is_serve_available

    assert is_serve_available(), 'transformers serve needs its extras: pip install -e ".[dev]" (it has transformers[serving])'
    port = free_port()
    # Offline (conftest), and no PyPI look-up for a newer transformers at start-up.
    env = {**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", *flags]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return server, f"http://127.0.0.1:{port}"


def stop(server: subprocess.Popen):
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_ready(server: subprocess.Popen, url: str, log: Path, timeout: float = 180):
    """Poll /health until it answers (the preloaded model is in memory by then); fail with the server's output
    if it exits or does not answer within `timeout` seconds."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"transformers serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"transformers serve did not answer /health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def chat_completion(url: str, model: str, messages: list[dict], max_tokens: int) -> str:
    """POST /v1/chat/completions, greedy (temperature 0 turns sampling off there); the answer's text."""
    import urllib.request

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": False}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.loads(response.read())
    assert reply["object"] == "chat.completion" and reply["model"] == model, reply
    return reply["choices"][0]["message"]["content"]


def test_transformers_serve_answers_as_chat_py_on_the_gpt2_export_of_the_merged_chat_model(chat_sft, tmp_path):
    """`transformers serve` on `hf-llm-export-gpt2 merged/`: its chat completions, greedy, are chat.py's answers,
    turn after turn (the server renders the messages with the folder's ChatML template)."""
    from hf_llm.export import main as export_main
    from hf_llm.training import ChatArguments, CheckpointArguments, chat_session, load_for_generation

    export_main([str(chat_sft / "merged"), str(tmp_path / "gpt2-chat")])
    assert json.loads((tmp_path / "gpt2-chat" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    log = tmp_path / "serve.log"
    server, url = start_transformers_serve(tmp_path / "gpt2-chat", log)
    try:
        wait_until_ready(server, url, log)
        model, tokenizer = load_for_generation(CheckpointArguments(model_name_or_path=str(chat_sft)), ChatArguments())
        session = chat_session(model, tokenizer, ChatArguments(max_new_tokens=8))
        messages = []
        for question in ("What is 2 plus 3?", "And plus one more?"):
            messages.append({"role": "user", "content": question})
            served = chat_completion(url, str(tmp_path / "gpt2-chat"), messages, max_tokens=8)
            assert served == session.reply(question), log.read_text()[-3000:]
            messages.append({"role": "assistant", "content": served})
        assert any(answer for _, answer in session.turns)  # the model said something: the comparison is not vacuous
    finally:
        stop(server)


def test_transformers_serve_refuses_our_own_folder_even_trusting_its_remote_code(chat_sft, tmp_path):
    """The server builds `getattr(transformers, architectures[0])`: `GPTForCausalLM` is not there, and
    `--trust-remote-code` does not change that (the README says so, and says to export to GPT-2)."""
    log = tmp_path / "serve.log"
    server, _ = start_transformers_serve(chat_sft / "merged", log, "--trust-remote-code")
    try:
        returncode = server.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("transformers serve now starts on an hf_llm folder (GPTForCausalLM): update the README's "
                    f"paragraph on it and test the folder as the GPT-2 export is tested\n{log.read_text()[-3000:]}")
    finally:
        stop(server)
    assert returncode != 0
    assert "AttributeError: module transformers has no attribute GPTForCausalLM" in log.read_text(), log.read_text()[-3000:]


def test_chat_on_the_sft_adapter_uses_its_template_and_remembers_the_first_turn(chat_sft):
    """Two scripted conversations that differ only in their first message: the second answers differ."""
    second = "And plus one more?"
    a = answers(chat("--model_name_or_path", str(chat_sft), "--max_new_tokens", "12",
                     stdin=f"What is 2 plus 3?\n{second}\n"))
    b = answers(chat("--model_name_or_path", str(chat_sft), "--max_new_tokens", "12",
                     stdin=f"Tell me about the weather in Paris in spring.\n{second}\n"))
    assert len(a) == len(b) == 2
    assert a[1] != b[1]


def test_chat_under_a_two_process_launch_answers_once_on_the_main_process(chat_sft, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 recipes/chat.py`: the main process chats (each
    message answered once, as `python recipes/chat.py` answers it); the other process ends before loading
    anything (each process that looks for the model says which it found)."""
    import shutil

    shutil.copytree(chat_sft, tmp_path / "outputs" / "sft_lora")
    from test_distributed import launch

    stdin = "What is 2 plus 3?\nAnd plus one more?\n"
    launched = launch([str(CHAT), "--max_new_tokens", "6"], port=29542, cwd=tmp_path, input=stdin, timeout=300)
    assert answers(launched) == answers(chat("--model_name_or_path", str(chat_sft), "--max_new_tokens", "6", stdin=stdin))
    assert launched.stderr.count("talking with outputs/sft_lora") == 1
    assert "the 1 other launched process ends now" in launched.stderr


def test_chat_with_a_model_without_template_and_reset(capsys, monkeypatch):
    """A model without a chat template (here the packaged base) gets each turn in the instruction template;
    /reset starts afresh."""
    from hf_llm.training import DEFAULT_BASE_MODEL

    first, second = "Write a class for a binary tree with insert and search methods.", "Now write its docstring."
    args = ("--model_name_or_path", DEFAULT_BASE_MODEL, "--max_new_tokens", "16")
    lines, err = chat_here(capsys, monkeypatch, *args, stdin=f"{first}\n{second}\n\n/reset\n{first}\n/exit\n{second}\n")
    assert len(lines) == 3  # one line per message; blank lines and commands get none; nothing after /exit
    assert lines[2] == lines[0]  # after /reset the first message is answered as at the start
    assert "(conversation reset)" in err
    other, _ = chat_here(capsys, monkeypatch, *args, stdin=f"Parse a URL into its parts.\n{second}\n")
    assert other[1] != lines[1]  # the second answer depends on the first turn


def test_without_a_chat_template_the_turns_are_instructions_and_responses(base_model):
    from hf_llm.data import format_prompt
    from hf_llm.training import ChatSession

    model, tokenizer = base_model
    session = ChatSession(model, tokenizer, system_prompt="You write Python.")
    session.turns = [("Add 1 and 2.", "3"), ("Name a prime.", "7")]
    assert session.render(session.turns, "Why?") == (
        "You write Python.\n\n" + format_prompt("Add 1 and 2.") + "3\n\n" + format_prompt("Name a prime.") + "7\n\n"
        + format_prompt("Why?")
    )
    custom = ChatSession(model, tokenizer, prompt_template="Q: {instruction}\nA: ")
    assert custom.render([("1+2?", "3")], "2+2?") == "Q: 1+2?\nA: 3\n\nQ: 2+2?\nA: "


def test_chat_without_a_model_says_what_to_run_first(tmp_path):
    result = chat(stdin="hi\n", cwd=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert "accelerate launch recipes/sft_lora.py" in result.stderr and "outputs/sft_lora" in result.stderr
    assert "Loading" not in result.stderr  # nothing was loaded, no base model stands in


def test_chat_picks_the_most_advanced_finished_output(tmp_path, chat_sft, capsys, monkeypatch):
    import shutil

    shutil.copytree(chat_sft, tmp_path / "outputs" / "sft_lora")
    (tmp_path / "outputs" / "dpo").mkdir()  # an unfinished DPO run: skipped
    (tmp_path / "outputs" / "dpo" / "hf_llm_run.json").write_text(json.dumps({"recipe": "dpo", "completed": False}))
    monkeypatch.chdir(tmp_path)
    lines, err = chat_here(capsys, monkeypatch, "--max_new_tokens", "4", stdin="What is 2 plus 3?\n")
    assert len(lines) == 1
    assert "outputs/dpo holds no finished run; skipped" in err and "talking with outputs/sft_lora" in err


# --- the history within the context --------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model():
    from hf_llm import GPTForCausalLM
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    return GPTForCausalLM.from_pretrained(DEFAULT_BASE_MODEL).eval(), load_tokenizer(DEFAULT_BASE_MODEL)


@pytest.mark.parametrize("template", [False, True])
def test_the_prompt_never_exceeds_the_context(base_model, template, monkeypatch):
    from hf_llm.tokenization import add_chat_template
    from hf_llm.training import ChatSession

    model, tokenizer = base_model
    if template:
        import copy

        model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
        add_chat_template(tokenizer, model)
    lengths, notices = [], []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda input_ids, **kwargs: lengths.append(input_ids.shape[1]) or generate(input_ids=input_ids, **kwargs))
    session = ChatSession(model, tokenizer, max_new_tokens=16, system_prompt="You write Python.", notify=notices.append)
    messages = [f"Message {i}: " + "explain the function os.path.join and its arguments " * 5 for i in range(5)]
    for message in messages:
        before = list(session.turns)
        session.reply(message)
    assert max(lengths) + 16 <= model.config.n_positions == 256
    # Only as many turns left as had to: with the last one dropped back in, the prompt would not fit.
    kept = session.turns[:-1]
    dropped = before[: len(before) - len(kept)]
    assert dropped and before[len(dropped):] == kept
    assert len(session.encode(session.render(dropped[-1:] + kept, messages[-1]))) + 16 > 256
    assert any("oldest turn" in n for n in notices)
    assert 1 <= len(session.turns) < len(messages) and session.turns[-1][0] == messages[-1]  # the newest turns stay
    prompt = session.render(session.turns[:-1], messages[-1])
    assert prompt.startswith("You write Python.") or prompt.startswith("<|im_start|>system\nYou write Python.")
    # A message longer than the context keeps its end, with a notice.
    session.reset()
    long = " ".join(f"word{i}" for i in range(400)) + " THE END"
    answer = session.reply(long)
    assert isinstance(answer, str) and lengths[-1] + 16 <= 256
    assert session.turns[0][0].endswith("THE END") and len(session.turns[0][0]) < len(long)
    assert "only its last" in notices[-1]


def test_a_max_new_tokens_that_leaves_no_room_is_refused(base_model):
    from hf_llm.training import ChatSession, RecipeError

    model, tokenizer = base_model
    with pytest.raises(RecipeError, match="--max_new_tokens 250 leaves no room"):
        ChatSession(model, tokenizer, max_new_tokens=250)


def test_piped_long_conversation_gives_one_line_per_message(capsys, monkeypatch):
    from hf_llm.training import DEFAULT_BASE_MODEL

    messages = [f"Turn {i}: " + "describe the json module and the way it encodes objects " * 10 for i in range(4)]
    lines, err = chat_here(capsys, monkeypatch, "--model_name_or_path", DEFAULT_BASE_MODEL, "--max_new_tokens", "8",
                           stdin="\n".join(messages) + "\n")
    assert len(lines) == 4
    assert "left the conversation" in err


def test_evaluate_reproduces_the_figures_of_an_sft_run_on_conversations(chat_sft, tmp_path):
    """recipes/evaluate.py reads a conversational run's held-out conversations as sft_lora.py does: their last answers."""
    data = chat_sft.parent / "conversations.jsonl"
    run_recipe("evaluate", "--model_name_or_path", str(chat_sft), "--output_dir", str(tmp_path / "eval"),
               "--dataset_name", str(data), "--max_new_tokens", "4")
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    recorded = json.loads((chat_sft / "all_results.json").read_text())
    assert set(evaluated) == {"eval_response_loss", "eval_base_response_loss", "eval_rouge_l"}
    for name, value in evaluated.items():
        assert value == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name


# --- DPO and RL from a chat-tuned model: prompts in its chat template --------------------------------


def test_instructions_are_prompted_in_the_chat_template_of_a_model_that_has_one(tmp_path):
    """dpo.py's pairs and rl.py's prompts: the instruction (and its input) as the user's message in the model's
    chat template when its tokenizer has one, else the Alpaca template; --prompt_template beside a chat
    template is refused, as one of them would be ignored."""
    from hf_llm.tokenization import add_chat_template, load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL, DataArguments, RecipeError, load_preference_data, load_sft_data

    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "Show the sum." if i % 2 else "", "output": f"{2 * i + 1}",
             "chosen": f"{2 * i + 1}", "rejected": f"{2 * i}"} for i in range(6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    args = DataArguments(dataset_name=str(data))
    tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
    assert tokenizer.chat_template is None
    assert all(p.startswith("Below is an instruction") for p in load_preference_data(args, tokenizer=tokenizer)["train"]["prompt"])

    add_chat_template(tokenizer)
    expected = {f"{IM_START}user\nAdd {i} and {i + 1}.{chr(10) * 2 + 'Show the sum.' if i % 2 else ''}{IM_END}\n{IM_START}assistant\n"
                for i in range(6)}
    for loaded in (load_preference_data(args, tokenizer=tokenizer), load_sft_data(args, tokenizer=tokenizer)):
        assert set(loaded["train"]["prompt"]) | set(loaded["test"]["prompt"]) == expected
    # The chat template rendered once around "{instruction}" asks exactly as rendering each user message would,
    # braces in the instruction or input included.
    from hf_llm.conversations import user_message
    from hf_llm.data import format_prompt
    from hf_llm.training.chat import chat_prompt

    for instruction, input_ in (("Print {input} and {instruction}.", "{x}"), ("Add.", ""), ("Add {}", "1 and 2")):
        assert format_prompt(instruction, input_, chat_prompt(tokenizer)) == tokenizer.apply_chat_template(
            [user_message(instruction, input_)], tokenize=False, add_generation_prompt=True)
    with pytest.raises(RecipeError, match="--prompt_template .* chat template.* Drop --prompt_template"):
        load_preference_data(DataArguments(dataset_name=str(data), prompt_template="Q: {instruction}\nA: "), tokenizer=tokenizer)


def test_dpo_from_a_chat_model_trains_on_its_template_and_evaluate_reproduces_it(chat_sft, tmp_path, monkeypatch):
    """dpo.py from the conversational SFT adapter: the trainer's pairs are the instructions asked in the chat
    template (the model's own tokens), each answer ending with its end-of-turn; recipes/evaluate.py rebuilds
    the same pairs from the saved adapter and gives the run's figures."""
    from trl import DPOTrainer

    from test_recipes import record_trainers

    trainers = record_trainers(monkeypatch, DPOTrainer)
    out = tmp_path / "dpo"
    run_recipe("dpo", "--model_name_or_path", str(chat_sft), "--output_dir", str(out), "--max_steps", "2",
               "--max_train_samples", "16", "--max_eval_samples", "8", "--per_device_train_batch_size", "4",
               "--learning_rate", "5e-3", "--warmup_steps", "0", *FAST)
    (trainer,) = trainers
    tokenizer = trainer.processing_class
    im_start, im_end = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    for split in (trainer.train_dataset, trainer.eval_dataset):
        for row in split:
            prompt = tokenizer.decode(row["prompt_ids"])
            assert row["prompt_ids"][0] == im_start and row["prompt_ids"].count(im_start) == 2, prompt
            assert prompt.startswith(f"{IM_START}user\n") and prompt.endswith(f"{IM_END}\n{IM_START}assistant\n"), prompt
            assert "Below is an instruction" not in prompt
            assert row["chosen_ids"][-1] == row["rejected_ids"][-1] == im_end  # the end-of-turn SFT taught

    recorded = json.loads((out / "all_results.json").read_text())
    assert recorded["eval_preference_margin"] != 0
    run_recipe("evaluate", "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "8")
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert set(evaluated) == {"eval_preference_accuracy", "eval_preference_margin"}
    for name, value in evaluated.items():
        assert value == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name


def test_sft_on_instructions_from_a_chat_model_asks_them_in_its_template_and_evaluate_reproduces_it(chat_sft, tmp_path):
    """sft_lora.py on instruction rows (the embedded default) from the conversational SFT's merged model: the
    prompts are the instructions asked in its chat template, as chat.py will ask, and recipes/evaluate.py
    rebuilds the same prompts from the saved adapter and gives the run's figures."""
    out = tmp_path / "sft_again"
    run_recipe("sft_lora", "--model_name_or_path", str(chat_sft / "merged"), "--output_dir", str(out), "--max_steps", "2",
               "--max_eval_samples", "8", "--learning_rate", "3e-3", "--warmup_steps", "0", "--sample_max_new_tokens", "4", *FAST)
    prompts = [json.loads(line)["prompt"] for line in (out / "answers.jsonl").read_text().splitlines()]
    assert prompts and all(p.startswith(f"{IM_START}user\n") and p.endswith(f"{IM_START}assistant\n") for p in prompts)
    recorded = json.loads((out / "all_results.json").read_text())
    run_recipe("evaluate", "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "8",
               "--max_new_tokens", "4")
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert {"eval_response_loss", "eval_base_response_loss", "eval_rouge_l"} <= set(evaluated)
    for name, value in evaluated.items():
        assert value == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name


def test_a_reward_model_from_the_chat_sft_adapter_reads_its_template_and_serves_rl(chat_sft, tmp_path, monkeypatch, caplog):
    """reward_modeling.py from the conversational SFT adapter: the adapter merged into its base under a new
    score head, the pairs asked in its chat template; recipes/evaluate.py reproduces its pair accuracy, and
    rl.py (policy: the same SFT adapter, prompts: the SFT run's conversations up to their last answer) trains
    against it, its figures reproduced by recipes/evaluate.py."""
    from trl import GRPOTrainer
    from trl import RewardTrainer

    from test_recipes import assert_adapter_card_loads_the_saved_adapter, record_trainers
    from test_rl import SHORT, assert_evaluate_reproduces

    trainers = record_trainers(monkeypatch, RewardTrainer)
    reward = tmp_path / "reward_modeling"
    run_recipe("reward_modeling", "--model_name_or_path", str(chat_sft), "--output_dir", str(reward), "--max_steps", "2",
               "--max_train_samples", "16", "--max_eval_samples", "8", "--learning_rate", "3e-3", *FAST)
    (trainer,) = trainers
    tokenizer = trainer.processing_class
    assert tokenizer.chat_template is not None and len(tokenizer) == 4098
    for row in trainer.train_dataset:
        text = tokenizer.decode(row["chosen_ids"])
        assert text.startswith(f"{IM_START}user\n") and f"{IM_END}\n{IM_START}assistant\n" in text, text
    assert_adapter_card_loads_the_saved_adapter(reward)
    run_recipe("evaluate", "--model_name_or_path", str(reward), "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "8")
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    recorded = json.loads((reward / "all_results.json").read_text())
    assert set(evaluated) == {"eval_pairwise_accuracy", "eval_pairwise_margin"}
    for name, value in evaluated.items():
        assert value == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name

    rl, data = tmp_path / "rl", ["--dataset_name", str(chat_sft.parent / "conversations.jsonl")]
    rl_trainers = record_trainers(monkeypatch, GRPOTrainer)
    with caplog.at_level(logging.WARNING, logger="hf_llm"):
        run_recipe("rl", "--model_name_or_path", str(chat_sft), "--reward_model_name_or_path", str(reward),
                   "--output_dir", str(rl), "--max_steps", "1", "--max_train_samples", "16", *data, *SHORT, *FAST)
    assert not [r for r in caplog.records if "format it never saw" in r.getMessage()]  # one format: no warning
    (rl_trainer,) = rl_trainers
    # Each conversation of conversations() asked up to its last answer, which is the reference.
    start, end = re.escape(IM_START), re.escape(IM_END)
    expected = re.compile(rf"{start}system\nYou add numbers\.{end}\n{start}user\nWhat is (\d+) plus \d+\?{end}\n{start}assistant\n\d+{end}\n"
                          rf"{start}user\nAnd plus one more\?{end}\n{start}assistant\n")
    for row in rl_trainer.train_dataset:
        i = int(expected.fullmatch(row["prompt"]).group(1))
        assert row["completion"] == str(2 * i + 2)
    assert_evaluate_reproduces(rl, tmp_path / "eval_rl", json.loads((rl / "all_results.json").read_text()))


def test_generate_asks_an_instruction_in_the_chat_template_of_a_model_that_has_one(chat_sft, capsys, monkeypatch):
    """generate.py --instruction on the conversational SFT adapter: the instruction and its input as the user's
    message in its chat template, the assistant's turn opened, as the other recipes ask it; --prompt_template
    beside a chat template is refused with their message."""
    import hf_llm.training

    seen = []
    monkeypatch.setattr(hf_llm.training, "generate_text", lambda model, tokenizer, prompt, gen_args: seen.append(prompt) or [prompt])
    run_recipe("generate", "--model_name_or_path", str(chat_sft), "--instruction", "What is 1 plus 2?", "--input", "Be brief.")
    assert seen == [f"{IM_START}user\nWhat is 1 plus 2?\n\nBe brief.{IM_END}\n{IM_START}assistant\n"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        run_recipe("generate", "--model_name_or_path", str(chat_sft), "--instruction", "Hi.", "--prompt_template", "Q: {instruction}\nA: ")
    message = capsys.readouterr().err
    assert err.value.code == 2 and "chat template" in message and "Drop --prompt_template" in message


def test_win_rate_asks_each_model_in_its_own_template(chat_sft, tmp_path, monkeypatch, capsys):
    """evaluate.py --figures win_rate rouge_l on the conversational SFT adapter: it is asked (and its ROUGE-L answers
    given) in its chat template; the reference, the packaged base with its own tokenizer (no chat template, two
    tokens fewer), in the Alpaca template; the judge, a reward model without a chat template, scores each answer
    after the Alpaca prompt it reads."""
    import hf_llm.training.evaluation as evaluation
    from hf_llm import GPTForSequenceClassification
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DEFAULT_BASE_MODEL

    judge = tmp_path / "judge"
    GPTForSequenceClassification.from_pretrained(DEFAULT_BASE_MODEL, num_labels=1).save_pretrained(judge)
    load_tokenizer(DEFAULT_BASE_MODEL).save_pretrained(judge)
    asked, scored = [], []
    generate, score = evaluation.generate_answers, evaluation.reward_scores
    monkeypatch.setattr(evaluation, "generate_answers", lambda model, tokenizer, prompts, *args: asked.append(
        (len(tokenizer), list(prompts))) or generate(model, tokenizer, prompts, *args))
    monkeypatch.setattr(evaluation, "reward_scores", lambda model, tokenizer, prompts, *args, **kwargs: scored.append(
        list(prompts)) or score(model, tokenizer, prompts, *args, **kwargs))
    run_recipe("evaluate", "--model_name_or_path", str(chat_sft), "--figures", "win_rate", "rouge_l", "--reward_model", str(judge),
               "--reference_model", DEFAULT_BASE_MODEL, "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "4",
               "--answers", "2", "--max_new_tokens", "4")
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert {"eval_win_rate", "eval_rouge_l"} <= set(evaluated)
    (policy_size, policy), (reference_size, reference), (_, rouge) = asked
    assert (policy_size, reference_size) == (4098, 4096) and len(policy) == len(reference) == 2
    for chat, alpaca in zip(policy, reference):
        assert chat.startswith(f"{IM_START}user\n") and chat.endswith(f"{IM_END}\n{IM_START}assistant\n"), chat
        assert alpaca.startswith("Below is an instruction") and alpaca.endswith("### Response:\n"), alpaca
        assert chat.removeprefix(f"{IM_START}user\n").split(IM_END)[0].split("\n")[0] in alpaca  # the same question
    assert rouge == policy
    assert scored == [reference, reference]  # the judge reads the Alpaca prompts, as it was trained
    # Conversations cannot be put to a reference without a chat template: refused, naming the fix.
    with pytest.raises(SystemExit) as err:
        run_recipe("evaluate", "--model_name_or_path", str(chat_sft), "--figures", "win_rate", "--reward_model", str(judge),
                   "--reference_model", DEFAULT_BASE_MODEL, "--output_dir", str(tmp_path / "eval_conversations"),
                   "--dataset_name", str(chat_sft.parent / "conversations.jsonl"), "--max_eval_samples", "2")
    assert err.value.code == 2 and "has no chat template to ask them in" in capsys.readouterr().err
