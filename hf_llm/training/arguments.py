"""Argument groups shared by the recipes, parsed together with TRL/transformers configs by `RecipeParser` (run.py).

Every field is a command-line flag (`--model_name_or_path ...`) and a key of the recipe's YAML file
(`--config recipes/configs/x.yaml`); flags override the YAML. Each class's `_argument_group_name` titles
its group in a recipe's `--help`, and the first paragraph of its docstring describes the group; a help
text says what unset (None) means, and `--help` adds the default where there is one.
"""

from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig

# The embedded default base model: a small GPT pretrained on the standard library's own code, shipped
# with hf_llm. Built by recipes/pretrain.py with its defaults; its model card has the exact command.
DEFAULT_BASE_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "stdlib-gpt")


def bf16_available() -> bool:
    """bf16 mixed precision by default only where a GPU supports it (TRL's configs default to bf16)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_only() -> bool:
    """No GPU (or Apple GPU) here: train on the CPU. Under a multi-process launch this also makes the
    Trainer run DDP over gloo on the CPU, instead of each process training alone."""
    import torch

    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def recipe_defaults(output_dir: str, **settings) -> dict:
    """The defaults every recipe's embedded run shares (the CPU where there is no GPU, one epoch, a log
    line every 10 steps, no external tracker), then the recipe's own `settings`."""
    # Every parameter of the model takes part in each step, so DDP need not search for unused ones (it
    # would, and warn, whenever gradient checkpointing is off).
    return {"output_dir": output_dir, "use_cpu": cpu_only(), "num_train_epochs": 1, "logging_steps": 10,
            "report_to": "none", "ddp_find_unused_parameters": False, **settings}


def finetuning_defaults(output_dir: str, **settings) -> dict:
    """`recipe_defaults` for fine-tuning the packaged base model with a PEFT LoRA adapter (SFT, reward
    modelling): bf16 where the GPU has it, 150 steps at batch 8, a checkpoint every 50 steps, no
    evaluation during training (the recipe evaluates before and after); then the recipe's `settings`."""
    shared = dict(
        model_name_or_path=DEFAULT_BASE_MODEL, bf16=bf16_available(), use_peft=True, max_steps=150,
        per_device_train_batch_size=8, per_device_eval_batch_size=16, eval_strategy="no", save_strategy="steps",
        save_steps=50,
    )
    return recipe_defaults(output_dir, **{**shared, **settings})


def preference_defaults(output_dir: str, **settings) -> dict:
    """`finetuning_defaults` for the recipes trained on preference pairs (reward modelling, DPO): pairs of
    at most 256 tokens with longer ones dropped, 10 warm-up steps into a cosine decay, and the held-out
    figures also computed before the first update (the before of the card's before/after); then the
    recipe's `settings`."""
    shared = dict(max_length=256, too_long="drop", warmup_steps=10, lr_scheduler_type="cosine", eval_on_start=True)
    return finetuning_defaults(output_dir, **{**shared, **settings})


@dataclass
class CheckpointArguments:
    """Which checkpoint to load, and how.

    What generation needs of a model; `ModelArguments` adds what training needs.
    """

    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An hf_llm checkpoint folder, a stock GPT-2 folder or Hub name (e.g. openai-community/gpt2), "
                  "or a LoRA adapter folder (loaded onto the base model its adapter_config.json names)."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "Weights dtype to load in: float32, bfloat16, float16 or auto; unset: the checkpoint's."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention implementation: eager, sdpa, flex_attention, or flash_attention_2 (needs the "
                  "flash-attn package); unset: transformers' choice."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub name; unset: the model's own (or its adapter's)."}
    )
    allow_pickle_checkpoints: bool = field(
        default=False,
        metadata={"help": "Accept .bin/.pt (pickle) weights; they are then read with torch.load(weights_only=True). "
                  "Otherwise only safetensors are read."},
    )


@dataclass
class ModelArguments(CheckpointArguments, ModelConfig):
    """Which model to start from and how to load it.

    TRL's `ModelConfig` (revision, and the PEFT LoRA and quantization settings `--use_peft`, `--lora_r`,
    ... that `trl.get_peft_config` reads; `--help` lists them under trl.ModelConfig), with
    `CheckpointArguments`' fields in place of its model, dtype and attention ones.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An hf_llm checkpoint folder, a stock GPT-2 folder or Hub name (e.g. openai-community/gpt2), "
            "or a preset for training from scratch: gpt2-124m, gpt2-355m, gpt2-774m, gpt2-1558m, or 'scratch' "
            "(sizes from --n_layer/--n_embd/--n_head/--n_positions)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub name; unset: the model's own. Pretraining also takes 'char' or 'bpe' "
                  "(build one from the training corpus)."},
    )

    def __post_init__(self):
        super().__post_init__()
        # TRL turns a one-element list into a string; PEFT takes either, our target check takes a list.
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]


@dataclass
class ArchitectureArguments:
    """The sizes and initialisation of a model trained from scratch (`--model_name_or_path scratch` or a preset)."""

    _argument_group_name = "architecture"

    n_layer: int | None = field(default=None, metadata={"help": "Number of blocks."})
    n_embd: int | None = field(default=None, metadata={"help": "Width."})
    n_head: int | None = field(default=None, metadata={"help": "Attention heads."})
    n_positions: int | None = field(default=None, metadata={"help": "Context length."})
    dropout: float | None = field(default=None, metadata={"help": "Sets resid/embd/attn dropout."})
    init_scheme: str = field(
        default="gpt2",
        metadata={"help": "'gpt2' (N(0, 0.02), transformers' GPT-2) or 'pytorch' (each PyTorch layer's own initialisation, "
                  "as the from-scratch book's GPTModel)."},
    )
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Tie the LM head to the token embedding."})


@dataclass
class DataArguments:
    """Where the data comes from and how it becomes model inputs."""

    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub data set name, a local file (json, jsonl, csv, parquet, txt) or a folder; "
                  "unset: the recipe's embedded data set, built from the Python standard library."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub data set configuration (e.g. 'python')."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    eval_split_fraction: float = field(default=0.1, metadata={"help": "Held-out fraction when the data has no test split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation rows."})
    text_field: str | None = field(default=None, metadata={"help": "Column holding the text (pretraining)."})
    repository_name: str | None = field(
        default=None, metadata={"help": "code_search_net: keep rows of this repository only (e.g. apache/spark)."}
    )
    prompt_template: str | None = field(
        default=None, metadata={"help": "Prompt template with {instruction} (and optionally {input}); unset: Alpaca's. "
                                "Preference and RL prompts for a model whose tokenizer has a chat template are "
                                "rendered in that template instead (and this flag is refused)."}
    )
    too_long: str = field(
        default="truncate",
        metadata={"help": "Rows longer than the model's context: 'truncate' (SFT: cut to the limit; rows whose prompt alone fills it are dropped) or 'drop' (with a warning), or 'refuse' (an error naming the rows). Reward modelling drops or refuses; it cannot truncate a pair."},
    )
    as_messages: bool = field(
        default=False,
        metadata={"help": "SFT: train instruction rows as conversations (a user and an assistant message, rendered "
                  "by the chat template, ChatML unless the tokenizer has one) instead of with the prompt template. "
                  "Rows with a 'messages' column are conversations anyway."},
    )


@dataclass
class RunArguments:
    """What every recipe does around training."""

    _argument_group_name = "run"

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an output_dir that already holds another run."}
    )
    plot_loss: bool = field(default=True, metadata={"help": "Write loss_curve.png (train and eval loss)."})
    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "Prompts to sample from at each evaluation (pretraining) and at the end."}
    )
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate for each sample prompt."})
    merge_adapter: bool = field(default=False, metadata={"help": "Also save the base model with the adapter merged in."})


@dataclass
class PretrainArguments:
    """How texts become fixed-length training blocks, and which tokenizer a from-scratch run builds."""

    _argument_group_name = "pretraining"

    block_size: int = field(default=256, metadata={"help": "Tokens per training block (at most the model's n_positions)."})
    stride: int | None = field(
        default=None, metadata={"help": "Step between block starts (the tutorials' sliding window); unset: block_size."}
    )
    bpe_vocab_size: int = field(default=4096, metadata={"help": "Vocabulary size when --tokenizer_name_or_path bpe."})


@dataclass
class GenerateArguments:
    """The prompt, and how to decode (transformers' GenerationConfig fields of the same names)."""

    _argument_group_name = "generation"

    prompt: str | None = field(
        default=None,
        metadata={"help": "Prompt text, used as given; '-' or unset reads standard input (less one final newline, "
                  "the one `echo` adds)."},
    )
    instruction: str | None = field(
        default=None,
        metadata={"help": "Instead of --prompt: an instruction (with --input), asked as the model was tuned: the user's "
                  "message in its chat template if its tokenizer has one, else formatted as sft_lora.py trains "
                  "(--prompt_template); the prompt ends where the response starts."},
    )
    input: str = field(default="", metadata={"help": "The instruction's input, with --instruction."})
    prompt_template: str | None = field(
        default=None, metadata={"help": "With --instruction, for a model without a chat template: the template the "
                                   "adapter was trained with; unset: Alpaca's."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate."})
    max_length: int | None = field(default=None, metadata={"help": "Total length limit (prompt + new), instead of max_new_tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy/beam decoding."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width."})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "Forbid repeating n-grams of this size."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k most likely tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling probability mass."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty for repeated tokens."})
    num_return_sequences: int = field(default=1, metadata={"help": "Sequences per prompt."})
    seed: int = field(default=42, metadata={"help": "Random seed for sampling."})
    stream: bool = field(default=True, metadata={"help": "Print tokens as they are generated (single sequence only)."})
    adapter_name_or_path: str | None = field(default=None, metadata={"help": "A LoRA adapter folder to apply on the model."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or mps; unset: CUDA, else MPS, else the CPU."})
    cache_implementation: str | None = field(
        default=None,
        metadata={"help": "KV cache: 'dynamic' (grows per token; also what unset means) or 'static' (preallocated to "
                  "the maximum length, fixed shapes: what --compile needs)."},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "Compile the one-token decoding step with torch.compile (uses the static cache). The "
                  "first call pays the compilation; later tokens run the compiled graph."},
    )


@dataclass
class ChatArguments:
    """The conversation, and how to decode each answer (transformers' GenerationConfig fields of the same names)."""

    _argument_group_name = "chat"

    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message that opens the conversation and is never trimmed; unset: none."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "For a model without a chat template: the instruction template it was trained with; "
                  "unset: Alpaca's, as sft_lora.py trains."},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens in an answer; the history is trimmed to leave room for them."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k most likely tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling probability mass."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty for repeated tokens."})
    seed: int = field(default=42, metadata={"help": "Random seed for sampling."})
    stream: bool = field(
        default=True,
        metadata={"help": "At a terminal, print each answer's tokens as they are generated. Piped input always gets "
                  "one whole answer per line."},
    )
    adapter_name_or_path: str | None = field(default=None, metadata={"help": "A LoRA adapter folder to apply on the model."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or mps; unset: CUDA, else MPS, else the CPU."})


@dataclass
class TrustArguments:
    """Whether a checkpoint may bring its own code.

    For recipes whose trainer config lacks the flag (SFTConfig and RewardConfig have their own).
    """

    _argument_group_name = "remote code"

    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a checkpoint's own Python code to run. Never turned on by hf_llm itself."}
    )


@dataclass
class EvaluateArguments:
    """What `recipes/evaluate.py` computes, with which judge and reference, and where it writes."""

    _argument_group_name = "evaluation"

    figures: list[str] | None = field(
        default=None,
        metadata={"help": "Figures to compute: perplexity, response_loss, rouge_l, pairwise_accuracy, preference_accuracy, "
                  "win_rate, rl_report (rl.py's: reward of greedy and of sampled answers, KL, answer length, response loss; with --reward_model); unset: those of the recipe that trained the model (its hf_llm_run.json), else what fits the "
                  "model (a reward model: pairwise_accuracy; an adapter: response_loss; a language model: perplexity), "
                  "plus win_rate with --reward_model."},
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "A reward model (folder, adapter folder or Hub name) that judges answers for win_rate."}
    )
    reference_model: str | None = field(
        default=None,
        metadata={"help": "The reference for win_rate and preference_accuracy; unset: the evaluated adapter switched off."},
    )
    beta: float = field(default=0.1, metadata={"help": "DPO's beta, which scales the implicit reward (preference_accuracy)."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per held-out text block (perplexity), as pretraining's; unset: the model's context."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Length limit of each sequence, as the training recipe's; unset: the model's context."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate for each answer (rouge_l, win_rate)."})
    answers: int = field(default=8, metadata={"help": "How many held-out prompts are answered (rouge_l, win_rate)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per scoring forward."})
    seed: int = field(default=42, metadata={"help": "The training run's seed: it chose the held-out split (a run's "
                                            "folder: unset takes the seed its record keeps)."})
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Where eval_results.json (and README.md) are written."})
    model_card: bool = field(
        default=False,
        metadata={"help": "Also write README.md to output_dir: the model's card (or a new one) with the figures as its "
                  "model-index results."},
    )
