"""Loading any GPT checkpoint (full model or adapter) for generation, and generating with streaming."""

import json
import sys
from pathlib import Path

import torch
from transformers import CompileConfig, GenerationConfig, TextStreamer

from ..models.gpt import GPTForCausalLM
from .errors import RecipeError
from .loading import attach_adapter, check_weights_are_safe, from_pretrained_or_refuse, resolve_tokenizer


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_for_generation(model_args, gen_args, trust_remote_code: bool = False):
    """(model, tokenizer) for a checkpoint folder or Hub name; an adapter folder is loaded onto its base."""
    path = model_args.model_name_or_path
    adapter = gen_args.adapter_name_or_path
    if adapter is None and Path(path, "adapter_config.json").is_file():
        adapter = path
        path = json.loads(Path(path, "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not path:
            raise RecipeError(f"{adapter}/adapter_config.json names no base_model_name_or_path; pass --model_name_or_path BASE --adapter_name_or_path {adapter}.")
    kwargs = dict(
        trust_remote_code=trust_remote_code,
        use_safetensors=check_weights_are_safe(path, model_args.allow_pickle_checkpoints) or None,
    )
    if model_args.dtype:
        kwargs["dtype"] = getattr(torch, model_args.dtype) if model_args.dtype != "auto" else "auto"
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = from_pretrained_or_refuse(GPTForCausalLM, path, **kwargs)
    tokenizer_source = model_args.tokenizer_name_or_path
    if tokenizer_source is None:
        tokenizer_source = adapter if adapter and Path(adapter, "tokenizer_config.json").is_file() else path
    tokenizer = resolve_tokenizer(type(model_args)(model_name_or_path=path, tokenizer_name_or_path=tokenizer_source))
    if adapter is not None:
        model = attach_adapter(model, adapter, tokenizer)
    return model.to(_device(gen_args.device)).eval(), tokenizer


def decoding_compile_config(device: torch.device | str) -> CompileConfig:
    """A `CompileConfig` that makes `generate` compile its decoding step on any device.

    transformers compiles the decoding step by itself only on accelerators, and only with a static
    cache; this asks for it everywhere, as one full graph with fixed shapes (the static cache keeps
    every shape constant, so it compiles once). CUDA graphs ("reduce-overhead") only exist on CUDA.
    """
    device = torch.device(device)
    config = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True
    return config


def cache_settings(gen_args, device: torch.device) -> dict:
    """GenerationConfig fields for --cache_implementation and --compile."""
    cache = gen_args.cache_implementation
    if cache not in (None, "dynamic", "static"):
        raise RecipeError(f"--cache_implementation {cache!r} is not known here; use 'dynamic' or 'static'.")
    if gen_args.compile:
        if cache == "dynamic":
            raise RecipeError("--compile needs fixed shapes: use --cache_implementation static (or leave it unset).")
        return {"cache_implementation": "static", "compile_config": decoding_compile_config(device)}
    # Without --compile nothing is compiled, whatever the device.
    return {"cache_implementation": cache, "disable_compile": True}


def resolve_prompt(gen_args, default: str, tokenizer=None) -> str:
    """The prompt to continue: `--instruction` (with `--input`) asked as the model was tuned, else `read_prompt`.
    The instruction is the user's message in `tokenizer`'s chat template when it has one (a model tuned on
    conversations), else formatted as sft_lora.py formats instructions (`--prompt_template`, unset: Alpaca's),
    as `instruction_template` prompts the other recipes; `--prompt_template` beside a chat template is refused."""
    if gen_args.instruction is None:
        if gen_args.input or gen_args.prompt_template:
            raise RecipeError("--input and --prompt_template shape an --instruction; pass --instruction too (or only --prompt).")
        return read_prompt(gen_args.prompt, default)
    if gen_args.prompt is not None:
        raise RecipeError("Pass --prompt (the text as it is) or --instruction (formatted with the template), not both.")
    from ..data import format_prompt
    from .recipe_data import instruction_template

    return format_prompt(gen_args.instruction, gen_args.input, instruction_template(gen_args, tokenizer))


def read_prompt(prompt: str | None, default: str) -> str:
    """The prompt flag; '-' or no flag with piped input reads standard input; else `default`.

    From standard input only one final newline is dropped (the one `echo` adds): a prompt that
    ends in a newline, as the SFT template's does, keeps the rest.
    """
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        text = sys.stdin.read()
        if text.strip():
            return text.removesuffix("\n").removesuffix("\r")
        if prompt == "-":
            raise RecipeError("--prompt - reads the prompt from standard input, but it was empty.")
    return default if prompt is None else prompt


def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy continuation of `prompt`, kept within its context.

    A prompt longer than the context loses its start, not its end (the end is where an answer
    begins); at least one token is generated.
    """
    device = next(model.parameters()).device
    limit = model.config.n_positions
    ids = tokenizer(prompt, return_tensors="pt").input_ids[:, -(limit - 1) :].to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(1, min(max_new_tokens, limit - ids.shape[1])),
            do_sample=False, pad_token_id=pad_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def generate_text(model, tokenizer, prompt: str, gen_args) -> list[str]:
    """Generate continuations of `prompt`; a single sequence is streamed to stdout as it comes."""
    device = next(model.parameters()).device
    encoded = tokenizer(prompt, return_tensors="pt").to(device)
    limit = model.config.n_positions
    if encoded.input_ids.shape[1] >= limit:
        raise RecipeError(
            f"The prompt has {encoded.input_ids.shape[1]} tokens; the model's context is {limit}. Shorten the prompt."
        )
    config = GenerationConfig(
        max_new_tokens=None if gen_args.max_length else min(gen_args.max_new_tokens, limit - encoded.input_ids.shape[1]),
        max_length=min(gen_args.max_length, limit) if gen_args.max_length else None,
        do_sample=gen_args.do_sample,
        num_beams=gen_args.num_beams,
        no_repeat_ngram_size=gen_args.no_repeat_ngram_size,
        temperature=gen_args.temperature,
        top_k=gen_args.top_k,
        top_p=gen_args.top_p,
        repetition_penalty=gen_args.repetition_penalty,
        num_return_sequences=gen_args.num_return_sequences,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **cache_settings(gen_args, device),
    )
    streamer = None
    if gen_args.stream and gen_args.num_return_sequences == 1 and gen_args.num_beams == 1:
        streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    torch.manual_seed(gen_args.seed)
    with torch.no_grad():
        output = model.generate(**encoded, generation_config=config, streamer=streamer)
    texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in output]
    if streamer is None and gen_args.stream and len(texts) == 1:
        print(texts[0])  # beam search cannot stream; print the result instead
    return texts
