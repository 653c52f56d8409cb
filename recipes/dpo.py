"""Direct preference optimisation: TRL's DPOTrainer with a PEFT LoRA adapter on a GPT. The reference model
is the same base with the adapter switched off, so no second copy is held.

    accelerate launch recipes/dpo.py          # after recipes/sft_lora.py: starts from outputs/sft_lora, offline
    accelerate launch recipes/dpo.py --model_name_or_path outputs/sft_lora/merged \
        --dataset_name ../shared/data/raw/instruction-data-with-preference.json

The starting model is the SFT stage's output (its adapter merged into its base), or any causal LM.
Each pair is a prompt (an instruction formatted as the starting model was tuned: in its chat template when
its tokenizer has one, as after SFT on conversations, else with the SFT prompt template; or a prompt as
written) with a chosen and a rejected answer. Before and after training the held-out pairs are scored: preference
accuracy (the chosen answer's log-ratio to the reference above the rejected one's), the mean reward
margin, and the chosen and rejected log-probabilities.
"""

from trl import DPOConfig, DPOTrainer

from hf_llm.training import (
    DataArguments, ModelArguments, RecipeRun, RunArguments, guarded, held_out_figures,
    load_finetuning_inputs, lora_hyperparameters, preference_defaults, recipe_main,
)

RECIPE = "dpo"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, RunArguments, DPOConfig)
# The held-out figures reported before and after training.
PAIR_METRICS = ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")

DEFAULTS = preference_defaults(
    "outputs/dpo",
    model_name_or_path="outputs/sft_lora",  # the SFT stage's default output
    lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["c_attn"], lora_task_type="CAUSAL_LM",
    beta=0.1,
    learning_rate=5e-4,
    max_eval_samples=128,
)


def main(model_args, data_args, run_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args, data_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    inputs = load_finetuning_inputs(model_args, data_args, training_args, "preference")
    trainer = guarded(DPOTrainer)(args=training_args, **inputs.trainer_inputs())
    # The share of held-out pairs whose implicit reward prefers the chosen answer, pair by pair, before and after
    # training, as recipes/evaluate.py reproduces it (before: the adapter is zero, so every pair is a tie).
    preference = lambda: held_out_figures(["preference_accuracy"], trainer.model, inputs.tokenizer, inputs.data["test"],
                                          max_length=training_args.max_length, beta=training_args.beta)
    before = {k.replace("eval_", "eval_initial_", 1): v for k, v in preference().items()}
    metrics = {**run.train(trainer), **trainer.evaluate(), **preference(), **before}
    metrics.update(run.before_training(trainer, (*PAIR_METRICS, "loss")))

    run.finish(
        trainer,
        metrics,
        task="causal_lm",
        lm_loss=False,  # the DPO loss: its exponential is no perplexity
        title="LoRA adapter tuned on preferences (DPO) with hf_llm",
        summary="Direct preference optimisation (`recipes/dpo.py`, TRL DPOTrainer) of a LoRA adapter; the reference "
        "model is the base with the adapter switched off.",
        base_model=model_args.model_name_or_path,
        tags=["dpo", "trl", "lora", "peft"],
        hyperparameters={**lora_hyperparameters(model_args), "beta": training_args.beta},
        headline={f"eval_{name}": f"eval_initial_{name}" for name in ("preference_accuracy", "preference_margin", *PAIR_METRICS)},
        try_it=f"python recipes/generate.py --model_name_or_path {training_args.output_dir} --instruction \"...\"",
        evaluation={"max_length": training_args.max_length, "beta": training_args.beta},
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
