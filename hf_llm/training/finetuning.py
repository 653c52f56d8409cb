"""What every fine-tuning recipe loads before its trainer: tokenizer, data, model, checked against each other.

The order matters: everything that can fail on bad input runs before the recipe touches its output folder.
"""

from dataclasses import dataclass
from typing import Any

from .adapters import peft_config_for
from .chat import prepare_chat_training
from .loading import load_model, resolve_tokenizer
from .recipe_data import PAIR_SEQUENCES, fit_to_model, load_preference_data, load_sft_data

# What each kind of data becomes in the trainers: its loader, the token sequences the length policy measures,
# and the field after which a too-long row may be cut ('truncate' policy).
DATA_KINDS = {
    "sft": (load_sft_data, [("prompt", "completion")], "prompt"),
    "preference": (load_preference_data, PAIR_SEQUENCES, None),
}


@dataclass
class FinetuningInputs:
    """The loaded pieces of a fine-tuning run. `trainer_inputs()` gives them as a TRL trainer's keywords."""

    tokenizer: Any
    model: Any
    data: Any  # a DatasetDict with "train" and "test"
    peft_config: Any  # a peft.LoraConfig, or None without --use_peft
    chat_tokens: list[int] | None = None  # tokens added for the chat template; None: the data is not conversations

    @property
    def conversational(self) -> bool:
        return self.chat_tokens is not None

    def trainer_inputs(self) -> dict:
        return dict(
            model=self.model,
            train_dataset=self.data["train"],
            eval_dataset=self.data["test"],
            processing_class=self.tokenizer,
            peft_config=self.peft_config,
        )


def load_finetuning_inputs(model_args, data_args, training_args, data_kind: str, task: str = "causal-lm") -> FinetuningInputs:
    """Tokenizer, held-out-split data of `data_kind` ("sft" or "preference"), and the model for `task`
    ("causal-lm" or "sequence-classification", one score), fitted to each other by `fit_to_model`; plus the
    PEFT config of the LoRA flags. Instruction prompts (SFT's and preference pairs') are rendered in the
    tokenizer's chat template when it has one (`instruction_template`). Conversational SFT data gets the tokenizer's chat template ready first
    (`prepare_chat_training`), and the adapter trains the rows of the tokens it added. Sets
    `training_args.max_length` to the limit the trainer must use."""
    load_data, sequences, truncatable_after = DATA_KINDS[data_kind]
    tokenizer = resolve_tokenizer(model_args)
    # Instructions are prompted in the starting model's chat template, if it has one, as chat.py will ask it.
    data = load_data(data_args, seed=training_args.seed, tokenizer=tokenizer)
    model = load_model(model_args, task, tokenizer, num_labels=1, trust_remote_code=training_args.trust_remote_code)
    chat_tokens = prepare_chat_training(data, tokenizer, model, training_args)
    data = fit_to_model(data, tokenizer, model, training_args, data_args.too_long, sequences, truncatable_after=truncatable_after)
    return FinetuningInputs(tokenizer, model, data, peft_config_for(model, model_args, trainable_tokens=chat_tokens), chat_tokens)
