"""hf_llm: GPT-2 written from scratch as a transformers-native model, with training recipes.

Importing hf_llm registers the GPT classes with transformers' Auto classes
(`AutoModelForCausalLM.from_config(GPTConfig(...))` builds ours). Saved folders say
`model_type: gpt2`, so any transformers reads them as stock GPT-2; `GPTForCausalLM.from_pretrained`
(or `trust_remote_code=True`) reads them as ours.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .models import gpt
from .models.gpt import (
    GPT2_PRESETS,
    GPTConfig,
    GPTForCausalLM,
    GPTForSequenceClassification,
    GPTModel,
    GPTPreTrainedModel,
)

from . import data, lora, stdlib_data
from .data import DataFormatError
from .export import export_to_gpt2
from .tokenization_char import CharTokenizer, UnknownCharacterError
from .tokenization import (
    build_char_tokenizer,
    load_gpt2_tokenizer,
    load_tokenizer,
    register_char_tokenizer,
    train_bpe_tokenizer,
)

__version__ = "0.1.0"


def _register_auto_classes():
    AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
    AutoModel.register(GPTConfig, GPTModel, exist_ok=True)
    AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(GPTConfig, GPTForSequenceClassification, exist_ok=True)
    # save_pretrained then writes an auto_map and copies the config and modeling sources next to the
    # weights, so the checkpoint also loads with trust_remote_code=True where hf_llm is not installed.
    GPTConfig.register_for_auto_class("AutoConfig")
    GPTModel.register_for_auto_class("AutoModel")
    GPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    GPTForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    register_char_tokenizer()


_register_auto_classes()

__all__ = [
    "CharTokenizer",
    "DataFormatError",
    "UnknownCharacterError",
    "build_char_tokenizer",
    "data",
    "export_to_gpt2",
    "load_gpt2_tokenizer",
    "load_tokenizer",
    "lora",
    "stdlib_data",
    "train_bpe_tokenizer",
    "__version__",
    *gpt.__all__,
]
