"""Generate text from any GPT checkpoint: hf_llm's, a stock GPT-2 folder or Hub name, or a LoRA adapter on its base.

    python recipes/generate.py --prompt "def "                     # the embedded default model
    echo "Once upon a time" | python recipes/generate.py --model_name_or_path openai-community/gpt2
    python recipes/generate.py --config recipes/configs/generate_gpt2.yaml
    python recipes/generate.py --model_name_or_path outputs/sft_lora --do_sample --top_k 40 --temperature 0.8
    python recipes/generate.py --model_name_or_path outputs/sft_lora --instruction "Name a prime number."

Decoding flags are transformers' GenerationConfig ones (greedy by default; --num_beams, --do_sample,
--top_k, --top_p, --temperature, --no_repeat_ngram_size, --max_new_tokens). A single sequence is
streamed to the terminal as it is generated. --instruction (with --input) builds the prompt the way the
model learnt: for a model whose tokenizer has a chat template (tuned on conversations) the instruction is
the user's message in that template, with the assistant's turn opened; otherwise it is formatted as
recipes/sft_lora.py trains (--prompt_template, unset: Alpaca's).
"""

import sys

from hf_llm.training import (
    DEFAULT_BASE_MODEL, CheckpointArguments, GenerateArguments, TrustArguments, generate_text, load_for_generation,
    recipe_main, resolve_prompt,
)

DATACLASS_TYPES = (CheckpointArguments, GenerateArguments, TrustArguments)

DEFAULTS = dict(model_name_or_path=DEFAULT_BASE_MODEL)


def main(model_args, gen_args, trust_args):
    model, tokenizer = load_for_generation(model_args, gen_args, trust_remote_code=trust_args.trust_remote_code)
    prompt = resolve_prompt(gen_args, default="def ", tokenizer=tokenizer)
    texts = generate_text(model, tokenizer, prompt, gen_args)
    if not (gen_args.stream and len(texts) == 1):
        for i, text in enumerate(texts):
            print(f"--- sequence {i + 1} ---\n{text}" if len(texts) > 1 else text)
    sys.stdout.flush()


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
