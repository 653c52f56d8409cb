"""Online RL from our own reward model: TRL's GRPOTrainer or RLOOTrainer on a LoRA adapter over the SFT model,
with a KL penalty to that model (the adapter switched off: no second copy is held).

    accelerate launch recipes/rl.py          # after sft_lora.py and reward_modeling.py: starts from their outputs, offline
    accelerate launch recipes/rl.py --algorithm rloo --beta 0.1
    accelerate launch recipes/rl.py --reward_funcs python_syntax --reward_weights 1.0 0.5

For each prompt the policy samples a few answers, the reward model (reward_modeling.py's output) scores them,
and each answer is pushed up or down by how it compares with the others for that prompt. The prompts are the
SFT data's, split as SFT splits them, in the SFT model's chat template if its tokenizer has one (conversations: up
to their last answer). On the held-out prompts, before and after training: the mean reward of
greedy answers, the KL to the reference, the answer length, and a check that does not use the reward model
(the loss of the data's own answers, which rises when the policy games the reward model); answers.jsonl has
a few answers side by side. --algorithm also chooses the trainer flags taken: `--algorithm rloo --help`.
"""

from hf_llm.training import (
    DataArguments, ModelArguments, RLArguments, RecipeRun, RunArguments, finetuning_defaults, guarded,
    load_rl_inputs, lora_hyperparameters, recipe_main, report_metrics, rl_config_class, rl_report,
    write_side_by_side,
)

RECIPE = "rl"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, RunArguments, RLArguments, rl_config_class())
# The held-out figures of the summary, each with its value before training.
FIGURES = ("reward", "sampled_reward", "kl", "response_loss", "response_length")

DEFAULTS = finetuning_defaults(
    "outputs/rl",
    model_name_or_path="outputs/sft_lora",  # the SFT stage's default output
    lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["c_attn"], lora_task_type="CAUSAL_LM",
    too_long="drop",
    beta=0.05,
    num_generations=4,
    max_completion_length=128,
    learning_rate=1e-3,
    warmup_steps=5,
    lr_scheduler_type="constant_with_warmup",
    max_steps=120,
    save_steps=60,
    logging_steps=5,
    max_eval_samples=32,
)


def main(model_args, data_args, run_args, rl_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args, data_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    inputs = load_rl_inputs(model_args, data_args, rl_args, training_args)
    trainer = guarded(inputs.trainer_class)(args=training_args, **inputs.trainer_inputs())
    held_out = inputs.data["test"]
    prompts, references = list(held_out["prompt"]), list(held_out["completion"])
    report = (trainer.model, inputs.tokenizer, inputs.reward_model, inputs.reward_tokenizer, prompts, references,
              training_args.max_completion_length)
    before = rl_report(*report)
    metrics = run.train(trainer)
    after = rl_report(*report)
    metrics.update(report_metrics(before.figures, after.figures, before.rewards, after.rewards))
    if trainer.is_world_process_zero():
        write_side_by_side(f"{training_args.output_dir}/answers.jsonl", prompts, references, before, after,
                           rl_args.report_examples)

    run.finish(
        trainer,
        metrics,
        task="causal_lm",
        lm_loss=False,  # the RL objective: no next-token loss
        title=f"LoRA adapter tuned by online RL ({rl_args.algorithm.upper()}) with hf_llm",
        summary=f"Online RL (`recipes/rl.py`, TRL {inputs.trainer_class.__name__}) of a LoRA adapter against the reward "
        f"model {rl_args.reward_model_name_or_path}, with a KL penalty (beta {training_args.beta}) to the starting model "
        "(the adapter switched off). eval_response_loss is the held-out loss of the data's own answers, a check that "
        "does not use the reward model.",
        base_model=model_args.model_name_or_path,
        tags=["rl", rl_args.algorithm, "trl", "lora", "peft"],
        hyperparameters={**lora_hyperparameters(model_args), "algorithm": rl_args.algorithm, "beta": training_args.beta,
                         "num_generations": training_args.num_generations,
                         "max_completion_length": training_args.max_completion_length,
                         "reward_model": rl_args.reward_model_name_or_path, "reward_funcs": rl_args.reward_funcs},
        headline={f"eval_{name}": f"eval_initial_{name}" for name in FIGURES},
        try_it=f"python recipes/generate.py --model_name_or_path {training_args.output_dir} --instruction \"...\"",
        evaluation={"max_new_tokens": training_args.max_completion_length, "reward_model": rl_args.reward_model_name_or_path},
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
