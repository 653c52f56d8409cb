"""Reward modelling: TRL's RewardTrainer on GPTForSequenceClassification, with LoRA and a trained score head.

    accelerate launch recipes/reward_modeling.py                   # embedded default: offline, minutes on a laptop
    accelerate launch recipes/reward_modeling.py --config recipes/configs/reward_webgpt.yaml

The model reads prompt + answer and outputs one number at the last token; the pairwise
(Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected) teaches it to score the chosen answer
higher. Held-out accuracy is the share of pairs where it does.
"""

from trl import RewardConfig, RewardTrainer

from hf_llm.training import (
    DEFAULT_BASE_MODEL, DataArguments, ExactPairMetricsMixin, ModelArguments, RecipeRun, RunArguments, bf16_available,
    check_vocab_agreement, cpu_only, enforce_length_limit, guarded, load_model, load_preference_data,
    lora_hyperparameters, peft_config_for, recipe_main, resolve_tokenizer,
)

RECIPE = "reward_modeling"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, RunArguments, RewardConfig)

DEFAULTS = dict(
    model_name_or_path=DEFAULT_BASE_MODEL,
    bf16=bf16_available(),
    use_cpu=cpu_only(),
    output_dir="outputs/reward_modeling",
    use_peft=True, lora_r=1, lora_alpha=8, lora_dropout=0.4, lora_target_modules=["c_attn"], lora_modules_to_save=["score"],
    lora_task_type="SEQ_CLS",
    max_length=256,
    too_long="drop",
    num_train_epochs=1,
    max_steps=150,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    learning_rate=1e-3,
    weight_decay=0.0,
    warmup_steps=10,
    lr_scheduler_type="cosine",
    eval_strategy="no",
    save_strategy="steps",
    save_steps=50,
    logging_steps=10,
    report_to="none",
    max_eval_samples=256,
)


def main(model_args, data_args, run_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    tokenizer = resolve_tokenizer(model_args)
    data = load_preference_data(data_args, seed=training_args.seed)
    model = load_model(model_args, "sequence-classification", tokenizer, num_labels=1, trust_remote_code=training_args.trust_remote_code)
    check_vocab_agreement(model, tokenizer)
    data, training_args.max_length = enforce_length_limit(
        data, tokenizer, model, training_args.max_length, data_args.too_long, [("prompt", "chosen"), ("prompt", "rejected")],
        eos_appended_by_trainer=tokenizer.eos_token,
    )

    trainer = guarded(RewardTrainer, ExactPairMetricsMixin)(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=peft_config_for(model, model_args),
    )
    before = trainer.evaluate(metric_key_prefix="eval_initial")
    metrics = {**run.train(trainer), **trainer.evaluate()}
    metrics.update({k: v for k, v in before.items() if k in ("eval_initial_loss", "eval_initial_accuracy")})

    run.finish(
        trainer,
        metrics,
        task="reward",  # a pairwise loss: its exponential is no perplexity
        title="Reward model trained with hf_llm",
        summary="A GPT-2-architecture reward model (`score` head on the last token) trained with pairwise loss "
        "by `recipes/reward_modeling.py` (TRL RewardTrainer), LoRA on the backbone and the score head trained in full.",
        base_model=model_args.model_name_or_path,
        dataset=data_args.dataset_name or "hf_llm stdlib-preferences (embedded)",
        tags=["reward-model", "trl", "lora", "peft"],
        hyperparameters=lora_hyperparameters(model_args),
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
