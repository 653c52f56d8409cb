"""Reward modelling: TRL's RewardTrainer on GPTForSequenceClassification, with LoRA and a trained score head.

    accelerate launch recipes/reward_modeling.py                   # embedded default: offline, minutes on a laptop
    accelerate launch recipes/reward_modeling.py --config recipes/configs/reward_webgpt.yaml

The model reads prompt + answer and outputs one number at the last token; the pairwise
(Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected) teaches it to score the chosen answer
higher. Held-out accuracy is the share of pairs where it does.
"""

from trl import RewardConfig, RewardTrainer

from hf_llm.training.arguments import DataArguments, LoraArguments, ModelArguments, RunArguments
from hf_llm.training.callbacks import ExactPairMetricsMixin
from hf_llm.training.recipe_data import enforce_length_limit, load_preference_data
from hf_llm.training.defaults import DEFAULT_BASE_MODEL, bf16_available, cpu_only
from hf_llm.training.outputs import how_to_load
from hf_llm.training.lora_setup import apply_lora, save_extra
from hf_llm.training.run import (
    TRAINING_KEYS, finish_run, begin_run, guarded, hyperparameters, recipe_main,
)
from hf_llm.training.setup import (
    check_vocab_agreement, load_model, mark_run, resolve_tokenizer,
)

RECIPE = "reward_modeling"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, LoraArguments, RunArguments, RewardConfig)

DEFAULTS = dict(
    model_name_or_path=DEFAULT_BASE_MODEL,
    bf16=bf16_available(),
    use_cpu=cpu_only(),
    output_dir="outputs/reward_modeling",
    lora_r=1, lora_alpha=8, lora_dropout=0.4, lora_target_modules=["c_attn"], lora_modules_to_save=["score"],
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


def main(model_args, data_args, lora_args, run_args, training_args):
    resume, push = begin_run(training_args, run_args, RECIPE)

    # Everything that can fail on bad input runs before the output folder is touched.
    tokenizer = resolve_tokenizer(model_args)
    data = load_preference_data(data_args, seed=training_args.seed)
    model = load_model(model_args, "sequence-classification", tokenizer, num_labels=1, trust_remote_code=training_args.trust_remote_code)
    check_vocab_agreement(model, tokenizer)
    data, training_args.max_length = enforce_length_limit(
        data, tokenizer, model, training_args.max_length, data_args.too_long, [("prompt", "chosen"), ("prompt", "rejected")],
        eos_appended_by_trainer=tokenizer.eos_token,
    )
    model, peft_config = apply_lora(model, lora_args, task_type="SEQ_CLS")

    trainer = guarded(RewardTrainer, ExactPairMetricsMixin)(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if trainer.is_world_process_zero():
        mark_run(training_args.output_dir, RECIPE, completed=False)
    before = trainer.evaluate(metric_key_prefix="eval_initial")
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate()}
    metrics.update({k: v for k, v in before.items() if k in ("eval_initial_loss", "eval_initial_accuracy")})

    finish_run(
        trainer,
        recipe=RECIPE,
        output_dir=training_args.output_dir,
        push=push,
        metrics=metrics,
        trainer_saves=not (lora_args.use_lora and lora_args.lora_backend == "hf_llm"),
        language_model=False,  # a pairwise loss: its exponential is no perplexity
        save_model=lambda out: save_extra(
            trainer.model, tokenizer, out, lora_args, merge=run_args.merge_adapter, task_type="SEQ_CLS"
        ),
        card=dict(
            title="Reward model trained with hf_llm",
            summary="A GPT-2-architecture reward model (`score` head on the last token) trained with pairwise loss "
            "by `recipes/reward_modeling.py` (TRL RewardTrainer), LoRA on the backbone and the score head trained in full.",
            base_model=model_args.model_name_or_path,
            datasets=[data_args.dataset_name or "hf_llm stdlib-preferences (embedded)"],
            hyperparameters={**hyperparameters(training_args, keys=TRAINING_KEYS), **hyperparameters(lora_args)},
            tags=["reward-model", "trl", "lora", "peft"],
            pipeline_tag="text-classification",
            is_adapter=lora_args.use_lora,
            how_to_load=how_to_load(push["repo_id"], model_args.model_name_or_path, task="reward", is_adapter=lora_args.use_lora),
        ),
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
