"""Supervised fine-tuning with LoRA: TRL's SFTTrainer and a PEFT (or hf_llm.lora) adapter on a GPT.

    accelerate launch recipes/sft_lora.py                          # embedded default: offline, minutes on a laptop
    accelerate launch recipes/sft_lora.py --config recipes/configs/sft_lora_alpaca.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/sft_lora.py   # DDP (on CPU: gloo)

Each example is an instruction formatted with the prompt template plus its response and end-of-text;
the loss counts the response tokens only. At the end the held-out loss is reported with the adapter
and without it (the base model), and a few held-out answers are generated both ways.
"""

from trl import SFTConfig, SFTTrainer

from hf_llm.training.arguments import DataArguments, LoraArguments, ModelArguments, RunArguments
from hf_llm.training.compare import compare_answers
from hf_llm.training.recipe_data import enforce_length_limit, load_sft_data
from hf_llm.training.defaults import DEFAULT_BASE_MODEL, bf16_available, cpu_only
from hf_llm.training.outputs import how_to_load
from hf_llm.training.lora_setup import adapter_disabled, apply_lora, save_extra
from hf_llm.training.run import (
    TRAINING_KEYS, finish_run, begin_run, guarded, hyperparameters, recipe_main,
)
from hf_llm.training.setup import (
    check_vocab_agreement, load_model, mark_run, resolve_tokenizer,
)

RECIPE = "sft_lora"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, LoraArguments, RunArguments, SFTConfig)

DEFAULTS = dict(
    model_name_or_path=DEFAULT_BASE_MODEL,
    bf16=bf16_available(),
    use_cpu=cpu_only(),
    output_dir="outputs/sft_lora",
    lora_r=4, lora_alpha=32, lora_dropout=0.1, lora_target_modules=["c_attn"],
    max_length=256,
    num_train_epochs=1,
    max_steps=150,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    gradient_accumulation_steps=1,
    learning_rate=6e-4,
    adam_beta1=0.9, adam_beta2=0.95,
    weight_decay=0.1,
    warmup_steps=15,
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs={"min_lr_rate": 0.1},
    max_grad_norm=1.0,
    eval_strategy="no",
    save_strategy="steps",
    save_steps=50,
    logging_steps=10,
    report_to="none",
    max_eval_samples=128,
)


def main(model_args, data_args, lora_args, run_args, training_args):
    resume, push = begin_run(training_args, run_args, RECIPE)

    # Everything that can fail on bad input runs before the output folder is touched.
    tokenizer = resolve_tokenizer(model_args)
    data = load_sft_data(data_args, eos_token=tokenizer.eos_token, seed=training_args.seed)
    model = load_model(model_args, "causal-lm", tokenizer, trust_remote_code=training_args.trust_remote_code)
    check_vocab_agreement(model, tokenizer)
    data, training_args.max_length = enforce_length_limit(
        data, tokenizer, model, training_args.max_length, data_args.too_long, [("prompt", "completion")],
        truncatable_after="prompt",
    )
    model, peft_config = apply_lora(model, lora_args, task_type="CAUSAL_LM")

    trainer = guarded(SFTTrainer)(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if trainer.is_world_process_zero():
        mark_run(training_args.output_dir, RECIPE, completed=False)
    train_result = trainer.train(resume_from_checkpoint=resume)

    metrics = {**train_result.metrics, **trainer.evaluate()}
    with adapter_disabled(trainer.model, lora_args) as disabled:
        if disabled:  # the base model's held-out loss: the before of the tutorial's before/after
            base = trainer.evaluate(metric_key_prefix="eval_base")
            metrics.update({k: v for k, v in base.items() if k.endswith("_loss")})
    if trainer.is_world_process_zero():
        metrics["answers"] = compare_answers(
            trainer.model, tokenizer, data["test"]["prompt"][:3], lora_args, training_args.output_dir, run_args.sample_max_new_tokens
        )

    finish_run(
        trainer,
        recipe=RECIPE,
        output_dir=training_args.output_dir,
        push=push,
        metrics={k: v for k, v in metrics.items() if k != "answers"},
        trainer_saves=not (lora_args.use_lora and lora_args.lora_backend == "hf_llm"),
        save_model=lambda out: save_extra(trainer.model, tokenizer, out, lora_args, merge=run_args.merge_adapter),
        card=dict(
            title="LoRA adapter fine-tuned with hf_llm",
            summary="A LoRA adapter trained by supervised fine-tuning (`recipes/sft_lora.py`, TRL SFTTrainer); "
            "the loss counts response tokens only.",
            base_model=model_args.model_name_or_path,
            datasets=[data_args.dataset_name or "hf_llm stdlib-instructions (embedded)"],
            hyperparameters={**hyperparameters(training_args, keys=TRAINING_KEYS), **hyperparameters(lora_args)},
            tags=["lora", "sft", "trl", "peft"],
            pipeline_tag="text-generation",
            is_adapter=lora_args.use_lora,
            how_to_load=how_to_load(push["repo_id"], model_args.model_name_or_path, task="causal_lm", is_adapter=lora_args.use_lora),
        ),
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
