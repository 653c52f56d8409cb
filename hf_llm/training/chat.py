"""Chat: fine-tuning on conversations (the ChatML template and its new tokens), and talking with the result.

`prepare_chat_training` readies tokenizer, model and trainer settings for conversational SFT data;
`ChatSession` keeps a multi-turn history within the model's context and answers each user message;
`chat_loop` reads messages from a terminal (answers streamed) or a pipe (one answer line per message line).
"""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TextStreamer

from ..conversations import user_message
from ..tokenization import CHATML_END, add_chat_template
from .errors import RecipeError
from .output_dir import read_run_file

# Where the recipes leave their models, the most advanced stage first: the folder chat.py talks to by default.
DEFAULT_CHAT_MODELS = ("outputs/dpo", "outputs/rl", "outputs/sft_lora")
COMMANDS = {"/reset": "forget the conversation", "/exit": "end the chat"}


# --- training on conversations ------------------------------------------------------------------


def prepare_chat_training(data, tokenizer, model, training_args) -> list[int] | None:
    """For conversational rows ("messages"): give a tokenizer without a chat template the ChatML one (its
    two special tokens added, the model's embeddings resized with the head tied, `add_chat_template`), and
    count the loss on the assistant's messages only (TRL's `assistant_only_loss`, which needs a fast
    tokenizer's offsets; a character-level tokenizer trains on whole conversations). Returns the ids of the
    tokens added, whose embedding rows an adapter must train (`peft_config_for(..., trainable_tokens=)`);
    None when the rows are not conversations, which leaves everything as it was."""
    if "messages" not in next(iter(data.values())).column_names:
        return None
    added = add_chat_template(tokenizer, model) if tokenizer.chat_template is None else []
    training_args.assistant_only_loss = bool(getattr(tokenizer, "is_fast", False))
    return added


def prompt_completion_view(split, tokenizer):
    """An SFT split as prompt/completion rows, what the held-out figures and answers read: prompt/completion
    rows as they are; a conversation as the chat template renders it up to its last assistant message (the
    assistant's turn opened) and that message, whose end-of-turn `response_loss` appends as the tokenizer's
    end-of-sequence. Any other column is kept."""
    if "messages" not in split.column_names:
        return split
    prompts, completions = [], []
    for messages in split["messages"]:
        last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
        prompts.append(tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True))
        completions.append(messages[last]["content"])
    kept = {name: split[name] for name in split.column_names if name != "messages"}
    return Dataset.from_dict({**kept, "prompt": prompts, "completion": completions})


def chat_prompt(tokenizer) -> str:
    """The prompt template of instruction rows for a model with a chat template: that template rendered around
    the user's message "{instruction}", up to the assistant's turn opened. `format_prompt` fills it in, with the
    input after a blank line, as `to_messages` writes the user's message. An answer that follows, with the
    tokenizer's end-of-sequence (the template's end-of-turn for ChatML), is the assistant's message as the
    template renders it."""
    return tokenizer.apply_chat_template([user_message("{instruction}")], tokenize=False, add_generation_prompt=True)


class TrainableTokensHeadMixin:
    """Mix into TRL's SFTTrainer when an adapter trains new token rows on a model whose LM head is tied.

    PEFT wraps the tied head in a `TrainableTokensWrapper`, which answers `weight` (merged with the
    trained rows) but not `bias`; TRL's fused LM-head loss reads both. GPT-2's head has no bias, so the
    wrapper is given the wrapped layer's `bias` (None) and the loss runs on the merged weight.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from peft.utils.other import TrainableTokensWrapper

        head = self.model.get_output_embeddings()
        if isinstance(head, TrainableTokensWrapper) and "bias" not in vars(head):
            head.bias = getattr(head.token_adapter.base_layer, "bias", None)


# --- talking with a model ------------------------------------------------------------------------


def default_chat_model(candidates=DEFAULT_CHAT_MODELS, notify=None) -> str:
    """The first of `candidates` (folders, relative to the working directory) that holds a finished run
    with a model or adapter. Never a base model: without one, a RecipeError says which command to run first."""
    notify = notify or _to_stderr
    for folder in candidates:
        run = read_run_file(folder)
        has_model = any(Path(folder, name).is_file() for name in ("adapter_config.json", "config.json"))
        if run and run.get("completed") and has_model:
            notify(f"chat.py: talking with {folder}, the first finished run of {', '.join(candidates)}. "
                   f"Pass --model_name_or_path for another model.")
            return folder
        if Path(folder).is_dir():
            notify(f"chat.py: {folder} holds no finished run; skipped.")
    raise RecipeError(
        f"chat.py needs a fine-tuned model, and none of {', '.join(candidates)} (in {Path.cwd()}) holds a finished "
        f"run. Run `accelerate launch recipes/sft_lora.py` first, or pass --model_name_or_path a model or adapter folder."
    )


class ChatSession:
    """A conversation with a causal LM, kept within its context.

    The prompt is the history plus the new user message, rendered by the tokenizer's chat template when it
    has one; otherwise each turn is formatted with the instruction template the model was fine-tuned with
    (`format_prompt`, Alpaca's unless `prompt_template`), earlier turns followed by their answers, so an
    instruction-tuned model reads the conversation as the instructions and responses it was trained on.
    Before each answer the oldest turns are dropped (for good) until prompt + `max_new_tokens` fits the
    model's `n_positions`; a system prompt is always kept. A new message that does not fit even alone keeps
    its end. `notify` (default: standard error) receives a line whenever either happens.
    """

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 128, system_prompt: str | None = None,
                 prompt_template: str | None = None, sampling: dict | None = None, notify=None):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.sampling = sampling or {"do_sample": False}
        self.notify = notify or _to_stderr
        self.uses_chat_template = tokenizer.chat_template is not None
        self.context = model.config.n_positions
        self.turns: list[tuple[str, str]] = []
        self.last_prompt_length = 0
        # Generation ends at the tokenizer's end-of-sequence, at <|im_end|> and at end-of-text, whichever comes.
        ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(CHATML_END) if CHATML_END in tokenizer.get_vocab() else None,
                tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None]
        self.stop_ids = list(dict.fromkeys(i for i in ends if i is not None))
        room = self.context - max_new_tokens - len(self.encode(self.render([], "")))
        if room < 1:
            raise RecipeError(
                f"--max_new_tokens {max_new_tokens} leaves no room for a message in the model's {self.context}-token "
                f"context (the template{' and system prompt' if system_prompt else ''} take the rest). Lower --max_new_tokens"
                f"{' or shorten --system_prompt' if system_prompt else ''}."
            )

    def reset(self):
        """Forget the conversation (the system prompt stays)."""
        self.turns = []

    def render(self, turns, message: str) -> str:
        """The prompt text for `turns` (user, answer) followed by the new `message`, ending where the answer starts."""
        if self.uses_chat_template:
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            for user, answer in turns:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": message})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        from ..data import format_prompt

        text = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        text += "".join(f"{format_prompt(user, '', self.prompt_template)}{answer}\n\n" for user, answer in turns)
        return text + format_prompt(message, "", self.prompt_template)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, message: str) -> tuple[list[int], str]:
        """The prompt's token ids for `message` after the history, and the message as kept: the oldest turns
        are dropped (and, if it must, the start of `message`) so that the prompt plus `max_new_tokens` fits
        the context."""
        limit = self.context - self.max_new_tokens
        ids = self.encode(self.render(self.turns, message))
        dropped = 0
        while len(ids) > limit and self.turns:
            self.turns.pop(0)
            dropped += 1
            ids = self.encode(self.render(self.turns, message))
        if dropped:
            self.notify(f"(the {dropped} oldest turn{'s' if dropped > 1 else ''} left the conversation, to stay within "
                        f"the {self.context}-token context)")
        if len(ids) > limit:
            tokens = self.encode(message)
            # Re-encoding at the cut can merge tokens differently, so cut one token more until it fits; the
            # empty message always fits (checked when the session began).
            for keep in range(len(tokens) - (len(ids) - limit), -1, -1):
                message = self.tokenizer.decode(tokens[len(tokens) - keep:])
                if len(ids := self.encode(self.render([], message))) <= limit:
                    break
            self.notify(f"(your message has {len(tokens)} tokens, more than the context leaves room for: only its last "
                        f"{keep} are kept)")
        return ids, message

    def reply(self, message: str, streamer=None) -> str:
        """The model's answer to `message` after the history (streamed to `streamer` if given); it joins the history."""
        ids, message = self.prompt_ids(message)
        self.last_prompt_length = len(ids)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.max_new_tokens,
                eos_token_id=self.stop_ids, pad_token_id=pad_id, streamer=streamer, **self.sampling,
            )
        answer = self.tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)
        self.turns.append((message, answer))
        return answer


def is_chat_process(notify=None) -> bool:
    """Whether this process holds the conversation: the only one, or the main one of an `accelerate launch`
    with several. A conversation is one sequence of turns, so it runs on one process; the others return at
    once (they would otherwise read the same standard input and answer every message several times)."""
    from .evaluation import process_state

    state = process_state()
    if state.is_main_process and state.num_processes > 1:
        others = state.num_processes - 1
        (notify or _to_stderr)(f"chat.py: the main process holds the conversation; the {others} other launched "
                               f"process{'es end' if others > 1 else ' ends'} now.")
    return state.is_main_process


def chat_session(model, tokenizer, chat_args) -> ChatSession:
    """A `ChatSession` set up from a `ChatArguments`: greedy unless `do_sample`, seeded with its `seed`."""
    sampling = {"do_sample": chat_args.do_sample, "repetition_penalty": chat_args.repetition_penalty}
    if chat_args.do_sample:
        sampling.update(temperature=chat_args.temperature, top_k=chat_args.top_k, top_p=chat_args.top_p)
        torch.manual_seed(chat_args.seed)
    return ChatSession(model, tokenizer, max_new_tokens=chat_args.max_new_tokens, system_prompt=chat_args.system_prompt,
                       prompt_template=chat_args.prompt_template, sampling=sampling)


def chat_loop(session: ChatSession, stdin=None, stdout=None, stream: bool = True) -> int:
    """Talk until /exit or the end of input; returns the number of answers given.

    At a terminal, each answer is streamed as it is generated (with `stream`). From a pipe, every
    non-empty line is one user message and gets exactly one line of output, its answer with each newline
    written as the two characters `\\n`, so scripts can pair answers with questions. Commands (/reset,
    /exit) and blank lines get no output line; notices go to standard error.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty()
    if interactive:
        _to_stderr(f"Chat ({'chat template' if session.uses_chat_template else 'instruction template'}, context "
                   f"{session.context} tokens). " + ", ".join(f"{c}: {what}" for c, what in COMMANDS.items()) + ".")
    answers = 0
    while True:
        try:
            line = input("> ") if interactive else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and not line:
            break  # end of the piped input
        message = line.strip()
        if not message:
            continue
        if message == "/exit":
            break
        if message == "/reset":
            session.reset()
            session.notify("(conversation reset)")
            continue
        if interactive and stream:
            session.reply(message, streamer=TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True))
        else:
            answer = session.reply(message)
            print(answer.replace("\r\n", "\n").replace("\n", "\\n"), file=stdout, flush=True)
        answers += 1
    return answers


def _to_stderr(text: str):
    print(text, file=sys.stderr, flush=True)
