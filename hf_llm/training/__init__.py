"""What the recipes are made of, in one place: argument groups, data, model loading and the run.

A recipe reads top to bottom as "parse, load data, load tokenizer, load model, train, finish", with
TRL's and transformers' trainers doing the training and `RecipeRun` everything around it.
"""

from .adapters import adapter_disabled, peft_config_for
from .arguments import (
    DEFAULT_BASE_MODEL,
    ArchitectureArguments,
    ChatArguments,
    CheckpointArguments,
    DataArguments,
    EvaluateArguments,
    GenerateArguments,
    ModelArguments,
    PretrainArguments,
    RunArguments,
    TrustArguments,
    bf16_available,
    cpu_only,
    finetuning_defaults,
    preference_defaults,
    recipe_defaults,
)
from .callbacks import ExactPairMetricsMixin, SampleGenerationCallback, guarded
from .chat import (
    ChatSession,
    TrainableTokensHeadMixin,
    chat_loop,
    chat_session,
    default_chat_model,
    is_chat_process,
    prepare_chat_training,
    prompt_completion_view,
)
from .compare import compare_answers
from .errors import RecipeError
from .evaluation import (
    completion_logprobs, dataset_name, evaluate_saved_model, generate_answers, held_out_figures, implicit_rewards, load_metric, pairwise_accuracy,
    preference_accuracy, response_loss, reward_scores, rouge_l, text_perplexity, win_rate,
)
from .finetuning import FinetuningInputs, load_finetuning_inputs
from .generation import generate_text, load_for_generation, resolve_prompt
from .loading import check_vocab_agreement, load_model, resolve_tokenizer
from .recipe_data import (
    PAIR_SEQUENCES,
    blocks_dataset,
    check_block_size,
    enforce_length_limit,
    fit_to_model,
    load_preference_data,
    load_sft_data,
    load_text_corpus,
)
from .command_line import recipe_main
from .rl import RLArguments, load_reward_model, load_rl_inputs, report_metrics, rl_config_class, rl_report, write_side_by_side
from .run import RecipeRun, lora_hyperparameters

__all__ = [
    "DEFAULT_BASE_MODEL",
    "ArchitectureArguments",
    "ChatArguments",
    "ChatSession",
    "CheckpointArguments",
    "DataArguments",
    "EvaluateArguments",
    "ExactPairMetricsMixin",
    "FinetuningInputs",
    "GenerateArguments",
    "ModelArguments",
    "PretrainArguments",
    "RecipeError",
    "RecipeRun",
    "RLArguments",
    "RunArguments",
    "SampleGenerationCallback",
    "TrainableTokensHeadMixin",
    "TrustArguments",
    "adapter_disabled",
    "bf16_available",
    "chat_loop",
    "chat_session",
    "blocks_dataset",
    "check_block_size",
    "check_vocab_agreement",
    "compare_answers",
    "completion_logprobs",
    "cpu_only",
    "dataset_name",
    "default_chat_model",
    "PAIR_SEQUENCES",
    "enforce_length_limit",
    "evaluate_saved_model",
    "fit_to_model",
    "finetuning_defaults",
    "generate_answers",
    "generate_text",
    "guarded",
    "held_out_figures",
    "implicit_rewards",
    "is_chat_process",
    "load_finetuning_inputs",
    "load_for_generation",
    "load_metric",
    "load_model",
    "load_preference_data",
    "load_reward_model",
    "load_rl_inputs",
    "load_sft_data",
    "load_text_corpus",
    "lora_hyperparameters",
    "pairwise_accuracy",
    "peft_config_for",
    "preference_accuracy",
    "preference_defaults",
    "prepare_chat_training",
    "prompt_completion_view",
    "recipe_defaults",
    "recipe_main",
    "report_metrics",
    "resolve_prompt",
    "resolve_tokenizer",
    "rl_config_class",
    "rl_report",
    "write_side_by_side",
    "response_loss",
    "reward_scores",
    "rouge_l",
    "text_perplexity",
    "win_rate",
]
