"""Reward modelling: TRL's RewardTrainer on GPTForSequenceClassification, with LoRA and a trained score head.

    accelerate launch recipes/reward_modeling.py                   # embedded default: offline, minutes on a laptop
    accelerate launch recipes/reward_modeling.py --config recipes/configs/reward_webgpt.yaml
    accelerate launch recipes/reward_modeling.py --model_name_or_path outputs/sft_lora   # from the SFT stage

The model reads prompt + answer and outputs one number at the last token; the pairwise
(Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected) teaches it to score the chosen answer
higher. Held-out accuracy is the share of pairs where it does. Started from an SFT adapter folder, the
adapter is merged into its base and the score head is new; its prompts follow that run's tokenizer (its
chat template, if it has one), so that the reward model reads what rl.py asks the SFT model.
"""

from trl import RewardConfig, RewardTrainer

from hf_llm.training import (
    DataArguments, ExactPairMetricsMixin, ModelArguments, RecipeRun, RunArguments, guarded,
    held_out_figures, load_finetuning_inputs, lora_hyperparameters, preference_defaults, recipe_main,
)

RECIPE = "reward_modeling"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, RunArguments, RewardConfig)

DEFAULTS = preference_defaults(
    "outputs/reward_modeling",
    lora_r=1, lora_alpha=8, lora_dropout=0.4, lora_target_modules=["c_attn"], lora_modules_to_save=["score"],
    lora_task_type="SEQ_CLS",
    learning_rate=1e-3,
    weight_decay=0.0,
    max_eval_samples=256,
)


def main(model_args, data_args, run_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args, data_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    inputs = load_finetuning_inputs(model_args, data_args, training_args, "preference", task="sequence-classification")
    trainer = guarded(RewardTrainer, ExactPairMetricsMixin)(args=training_args, **inputs.trainer_inputs())
    metrics = {**run.train(trainer), **trainer.evaluate()}
    metrics.update(run.before_training(trainer, ("loss", "accuracy")))
    # The pair accuracy recipes/evaluate.py reproduces from the saved adapter (the same metric as eval_accuracy).
    metrics.update(held_out_figures(["pairwise_accuracy"], trainer.model, inputs.tokenizer, inputs.data["test"],
                                    max_length=training_args.max_length))

    run.finish(
        trainer,
        metrics,
        task="reward",  # a pairwise loss: its exponential is no perplexity
        title="Reward model trained with hf_llm",
        summary="A GPT-2-architecture reward model (`score` head on the last token) trained with pairwise loss "
        "by `recipes/reward_modeling.py` (TRL RewardTrainer), LoRA on the backbone and the score head trained in full.",
        base_model=model_args.model_name_or_path,
        tags=["reward-model", "trl", "lora", "peft"],
        hyperparameters=lora_hyperparameters(model_args),
        headline={"eval_accuracy": "eval_initial_accuracy", "eval_loss": "eval_initial_loss"},
        evaluation={"max_length": training_args.max_length},
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
