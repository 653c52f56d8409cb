"""Supervised fine-tuning with LoRA: TRL's SFTTrainer and a PEFT adapter on a GPT.

    accelerate launch recipes/sft_lora.py                          # embedded default: offline, minutes on a laptop
    accelerate launch recipes/sft_lora.py --config recipes/configs/sft_lora_alpaca.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/sft_lora.py   # DDP (on CPU: gloo)

Each example is an instruction formatted with the prompt template plus its response and end-of-text;
the loss counts the response tokens only. Conversational rows (a `messages` column, or instructions with
--as_messages) are rendered by the chat template instead (ChatML, added to the tokenizer with its two
tokens, whose embedding rows the adapter trains), the loss counting the assistant's messages only.
At the end the held-out loss is reported with the adapter and without it (the base model), and a few
held-out answers are generated both ways.
"""

from trl import SFTConfig, SFTTrainer

from hf_llm.training import (
    DataArguments, ModelArguments, RecipeRun, RunArguments, TrainableTokensHeadMixin, adapter_disabled,
    compare_answers, finetuning_defaults, guarded, held_out_figures, load_finetuning_inputs,
    lora_hyperparameters, prompt_completion_view, recipe_main,
)

RECIPE = "sft_lora"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, RunArguments, SFTConfig)

DEFAULTS = finetuning_defaults(
    "outputs/sft_lora",
    lora_r=4, lora_alpha=32, lora_dropout=0.1, lora_target_modules=["c_attn"], lora_task_type="CAUSAL_LM",
    max_length=256,
    gradient_accumulation_steps=1,
    learning_rate=6e-4,
    adam_beta1=0.9, adam_beta2=0.95,
    weight_decay=0.1,
    warmup_steps=15,
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs={"min_lr_rate": 0.1},
    max_grad_norm=1.0,
    max_eval_samples=128,
)


def main(model_args, data_args, run_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args, data_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    inputs = load_finetuning_inputs(model_args, data_args, training_args, "sft")
    trainer = guarded(SFTTrainer, TrainableTokensHeadMixin)(args=training_args, **inputs.trainer_inputs())
    metrics = {**run.train(trainer), **trainer.evaluate()}
    with adapter_disabled(trainer.model) as disabled:
        if disabled:  # the base model's held-out loss: the before of the tutorial's before/after
            base = trainer.evaluate(metric_key_prefix="eval_base")
            metrics.update({k: v for k, v in base.items() if k.endswith("_loss")})
    # The held-out figures recipes/evaluate.py reproduces from the saved adapter: response loss with and
    # without the adapter, ROUGE-L of greedy answers (of a conversation: its last answer).
    held_out = prompt_completion_view(inputs.data["test"], inputs.tokenizer)
    metrics.update(held_out_figures(
        ["response_loss", "rouge_l"], trainer.model, inputs.tokenizer, held_out,
        max_length=training_args.max_length, max_new_tokens=run_args.sample_max_new_tokens,
    ))
    compare_answers(
        trainer.model, inputs.tokenizer, held_out["prompt"][:3], training_args.output_dir, run_args.sample_max_new_tokens,
        write=trainer.is_world_process_zero(),
    )

    run.finish(
        trainer,
        metrics,
        task="causal_lm",
        title="LoRA adapter fine-tuned with hf_llm" if model_args.use_peft else "GPT fine-tuned with hf_llm",
        summary="Supervised fine-tuning (`recipes/sft_lora.py`, TRL SFTTrainer); the loss counts response tokens only.",
        base_model=model_args.model_name_or_path,
        tags=["lora", "sft", "trl", "peft"] if model_args.use_peft else ["sft", "trl"],
        hyperparameters=lora_hyperparameters(model_args),
        headline={"eval_loss": "eval_base_loss"},
        evaluation={"max_length": training_args.max_length, "max_new_tokens": run_args.sample_max_new_tokens},
        try_it=f"python recipes/chat.py --model_name_or_path {training_args.output_dir}" if inputs.conversational
        else f"python recipes/generate.py --model_name_or_path {training_args.output_dir} --instruction \"...\"",
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
