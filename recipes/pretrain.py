"""Pretrain a GPT (causal language modelling) with the HF Trainer, from scratch or continued.

    accelerate launch recipes/pretrain.py                          # embedded default: stdlib code, offline
    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_verdict.yaml
    python recipes/pretrain.py --model_name_or_path scratch --tokenizer_name_or_path char \
        --dataset_name corpus.txt --n_layer 12 --n_embd 128 --n_head 16 --n_positions 64

Texts are tokenized (a loaded tokenizer, or a character-level / byte-level BPE one built on the
training texts), joined with end-of-text and cut into blocks by a sliding window. Each evaluation
reports loss and perplexity and samples continuations of --sample_prompts.
"""

from transformers import TrainingArguments, default_data_collator

from hf_llm.training.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments, TrustArguments
from hf_llm.training.callbacks import SampleGenerationCallback
from hf_llm.training.recipe_data import blocks_dataset, check_block_size, load_text_corpus
from hf_llm.training.defaults import cpu_only
from hf_llm.training.run import (
    TRAINING_KEYS, GuardedTrainer, begin_run, finish_run, hyperparameters, recipe_main,
)
from hf_llm.training.setup import (
    check_vocab_agreement, load_model, mark_run, resolve_tokenizer,
)

RECIPE = "pretrain"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, DataArguments, PretrainArguments, RunArguments, TrustArguments, TrainingArguments)

DEFAULTS = dict(
    # The embedded default: a small GPT trained from scratch (4 layers, width 128, context 256: the sizes
    # 'scratch' takes unless --n_layer etc. say otherwise), with a BPE tokenizer built on the corpus.
    model_name_or_path="scratch",
    tokenizer_name_or_path="bpe",
    block_size=256,
    bpe_vocab_size=4096,
    sample_prompts=["def "],
    output_dir="outputs/pretrain",
    use_cpu=cpu_only(),
    num_train_epochs=1,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,
    learning_rate=1e-3,
    weight_decay=0.1,
    warmup_steps=20,
    lr_scheduler_type="cosine",
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_steps=10,
    report_to="none",
)


def main(model_args, data_args, pretrain_args, run_args, trust_args, training_args):
    resume, push = begin_run(training_args, run_args, RECIPE)

    # Everything that can fail on bad input runs before the output folder is touched.
    corpus = load_text_corpus(data_args, seed=training_args.seed)
    # A character vocabulary must cover the held-out text too, or evaluation meets unknown characters
    # (the tutorials build it from the whole text); byte-level BPE covers any text, so it learns from training text only.
    vocab_texts = list(corpus["train"]["text"])
    if model_args.tokenizer_name_or_path == "char":
        vocab_texts += list(corpus["test"]["text"])
    tokenizer = resolve_tokenizer(model_args, vocab_texts, bpe_vocab_size=pretrain_args.bpe_vocab_size)
    model = load_model(model_args, "causal-lm", tokenizer, trust_remote_code=trust_args.trust_remote_code)
    # The lean LM-head loss: no full-vocabulary logits in training steps (README, Benchmarks).
    model.use_chunked_lm_loss()
    check_vocab_agreement(model, tokenizer)
    block_size = check_block_size(pretrain_args.block_size, model)
    train_dataset = blocks_dataset(corpus["train"]["text"], tokenizer, block_size, pretrain_args.stride, "train")
    eval_dataset = blocks_dataset(corpus["test"]["text"], tokenizer, block_size, block_size, "evaluation")

    callbacks = []
    if run_args.sample_prompts:
        callbacks.append(SampleGenerationCallback(tokenizer, run_args.sample_prompts, run_args.sample_max_new_tokens))
    trainer = GuardedTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    if trainer.is_world_process_zero():
        mark_run(training_args.output_dir, RECIPE, completed=False)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate(), "train_blocks": len(train_dataset), "eval_blocks": len(eval_dataset)}

    finish_run(
        trainer,
        recipe=RECIPE,
        output_dir=training_args.output_dir,
        push=push,
        metrics=metrics,
        card=dict(
            title=f"GPT pretrained with hf_llm ({model.config.n_layer} layers, width {model.config.n_embd})",
            summary="A GPT-2-architecture causal language model pretrained with `recipes/pretrain.py`.",
            base_model=None if model_args.model_name_or_path in ("scratch", None) or model_args.model_name_or_path.startswith("gpt2-") else model_args.model_name_or_path,
            datasets=[data_args.dataset_name or "hf_llm stdlib-functions (embedded)"],
            hyperparameters={
                **hyperparameters(training_args, keys=TRAINING_KEYS),
                **hyperparameters(pretrain_args),
                "n_layer": model.config.n_layer, "n_embd": model.config.n_embd, "n_head": model.config.n_head,
                "n_positions": model.config.n_positions, "vocab_size": model.config.vocab_size,
                "init_scheme": model_args.init_scheme,
            },
            tags=["text-generation", "pretraining"],
            pipeline_tag="text-generation",
            is_adapter=False,
            how_to_load=f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\nmodel = AutoModelForCausalLM.from_pretrained("{push["repo_id"]}", trust_remote_code=True)\ntokenizer = AutoTokenizer.from_pretrained("{push["repo_id"]}")\n# or, with hf_llm installed: import hf_llm; AutoModelForCausalLM.from_pretrained(...)',
        ),
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
