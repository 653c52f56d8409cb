"""Chat with a fine-tuned GPT, turn after turn: answers streamed at a terminal, one line per message from a pipe.

    python recipes/chat.py                                    # the most advanced of outputs/dpo, outputs/rl, outputs/sft_lora
    python recipes/chat.py --model_name_or_path outputs/sft_lora --system_prompt "Answer in Python."
    printf 'Add two numbers.\\nNow three.\\n' | python recipes/chat.py --model_name_or_path outputs/sft_lora
    accelerate launch recipes/chat.py                         # the same; several processes: the main one chats

A tokenizer with a chat template (sft_lora.py on conversations adds ChatML) formats the conversation;
without one, each turn is formatted with the instruction template the model was fine-tuned with
(Alpaca's, or --prompt_template), earlier turns followed by their answers. Before each answer the
oldest turns are dropped until the prompt plus --max_new_tokens fits the model's context. Type /reset
to forget the conversation and /exit (or end the input) to stop. From a pipe, each non-empty line is a
message and gets exactly one line: its answer, newlines written as \\n; notices go to standard error.
"""

from hf_llm.training import (
    ChatArguments, CheckpointArguments, TrustArguments, chat_loop, chat_session, default_chat_model, is_chat_process,
    load_for_generation, recipe_main,
)

DATACLASS_TYPES = (CheckpointArguments, ChatArguments, TrustArguments)

DEFAULTS = {}  # no model named: the most advanced recipe output found (default_chat_model), never a base model


def main(model_args, chat_args, trust_args):
    if not is_chat_process():  # under a multi-process launch the main process holds the conversation
        return
    if model_args.model_name_or_path is None:
        model_args.model_name_or_path = default_chat_model()
    model, tokenizer = load_for_generation(model_args, chat_args, trust_remote_code=trust_args.trust_remote_code)
    chat_loop(chat_session(model, tokenizer, chat_args), stream=chat_args.stream)


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
