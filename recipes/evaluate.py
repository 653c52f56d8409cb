"""Evaluate a model, an adapter or a reward model on held-out data, with the code the training recipes end with.

    python recipes/evaluate.py                                        # the embedded default model: perplexity
    python recipes/evaluate.py --model_name_or_path outputs/sft_lora  # response loss (adapter on, off), ROUGE-L
    accelerate launch recipes/evaluate.py --model_name_or_path outputs/reward_modeling
    python recipes/evaluate.py --model_name_or_path outputs/dpo --reward_model outputs/reward_modeling --model_card true

Figures: perplexity of held-out text, response loss on held-out instructions, ROUGE-L of greedy answers
against the references, pairwise accuracy of a reward model, DPO's preference accuracy (implicit reward,
the adapter switched off as reference), and the mean reward and win rate of the model's answers against
a reference model's, judged by --reward_model (each model asked in its own template, a chat template
or the instruction one, and the judge scoring in its own). By default: those the recipe that trained the
model reports. The held-out split is rebuilt as that recipe builds it, from the data flags (--dataset_name,
--max_eval_samples, ...), --seed and settings its run recorded (hf_llm_run.json) unless given here; the figures
are then the ones in its all_results.json.

The figures are printed as one table and written to --output_dir as eval_results.json; --model_card
true also writes the model's card there with them as its model-index. The metrics are `evaluate`
modules that ship with hf_llm (hf_llm/metrics/) and load offline.
"""

from hf_llm.training import (
    DEFAULT_BASE_MODEL, CheckpointArguments, DataArguments, EvaluateArguments, TrustArguments, evaluate_saved_model,
    recipe_main,
)

DATACLASS_TYPES = (CheckpointArguments, EvaluateArguments, DataArguments, TrustArguments)

# --too_long unset: each kind of data as its training recipe treats it (instructions truncated, pairs dropped).
DEFAULTS = dict(model_name_or_path=DEFAULT_BASE_MODEL, too_long=None)


def main(model_args, eval_args, data_args, trust_args):
    evaluate_saved_model(model_args, eval_args, data_args, trust_remote_code=trust_args.trust_remote_code)


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
