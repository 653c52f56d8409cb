"""Pretrain a GPT (causal language modelling) with the HF Trainer, from scratch or continued.

    accelerate launch recipes/pretrain.py                          # embedded default: stdlib code, offline
    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_verdict.yaml
    python recipes/pretrain.py --model_name_or_path scratch --tokenizer_name_or_path char \
        --dataset_name corpus.txt --n_layer 12 --n_embd 128 --n_head 16 --n_positions 64

Texts are tokenized (a loaded tokenizer, or a character-level / byte-level BPE one built on the
training texts), joined with end-of-text and cut into blocks by a sliding window. Each evaluation
reports loss and perplexity and samples continuations of --sample_prompts.
"""

from transformers import Trainer, TrainingArguments, default_data_collator

from hf_llm.training import (
    ArchitectureArguments, DataArguments, ModelArguments, PretrainArguments, RecipeRun, RunArguments,
    SampleGenerationCallback, TrustArguments, blocks_dataset, check_block_size, check_vocab_agreement,
    guarded, held_out_figures, load_model, load_text_corpus, recipe_defaults, recipe_main, resolve_tokenizer,
)

RECIPE = "pretrain"  # the name this recipe's runs are recorded under in their output_dir
DATACLASS_TYPES = (ModelArguments, ArchitectureArguments, DataArguments, PretrainArguments, RunArguments, TrustArguments, TrainingArguments)

DEFAULTS = recipe_defaults(
    "outputs/pretrain",
    # The embedded default: a small GPT trained from scratch (4 layers, width 128, context 256: the sizes
    # 'scratch' takes unless --n_layer etc. say otherwise), with a BPE tokenizer built on the corpus.
    model_name_or_path="scratch",
    tokenizer_name_or_path="bpe",
    block_size=256,
    bpe_vocab_size=4096,
    sample_prompts=["def "],
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,
    learning_rate=1e-3,
    weight_decay=0.1,
    warmup_steps=20,
    lr_scheduler_type="cosine",
    eval_strategy="epoch",
    save_strategy="epoch",
)


def main(model_args, architecture, data_args, pretrain_args, run_args, trust_args, training_args):
    run = RecipeRun(RECIPE, training_args, run_args, data_args)

    # Everything that can fail on bad input runs before the output folder is touched.
    corpus = load_text_corpus(data_args, seed=training_args.seed)
    # A character vocabulary must cover the held-out text too, or evaluation meets unknown characters
    # (the tutorials build it from the whole text); byte-level BPE covers any text, so it learns from training text only.
    vocab_texts = list(corpus["train"]["text"])
    if model_args.tokenizer_name_or_path == "char":
        vocab_texts += list(corpus["test"]["text"])
    tokenizer = resolve_tokenizer(model_args, vocab_texts, bpe_vocab_size=pretrain_args.bpe_vocab_size)
    model = load_model(model_args, "causal-lm", tokenizer, trust_remote_code=trust_args.trust_remote_code, architecture=architecture)
    # The lean LM-head loss: no full-vocabulary logits in training steps (README, Benchmarks).
    model.use_chunked_lm_loss()
    check_vocab_agreement(model, tokenizer)
    block_size = check_block_size(pretrain_args.block_size, model)
    train_dataset = blocks_dataset(corpus["train"]["text"], tokenizer, block_size, pretrain_args.stride, "train")
    eval_dataset = blocks_dataset(corpus["test"]["text"], tokenizer, block_size, block_size, "evaluation")

    callbacks = []
    if run_args.sample_prompts:
        callbacks.append(SampleGenerationCallback(tokenizer, run_args.sample_prompts, run_args.sample_max_new_tokens))
    trainer = guarded(Trainer)(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    metrics = {**run.train(trainer), **trainer.evaluate(), "train_blocks": len(train_dataset), "eval_blocks": len(eval_dataset)}
    # The held-out perplexity as recipes/evaluate.py computes it for the saved model (token-weighted, exact).
    metrics.update(held_out_figures(["perplexity"], trainer.model, tokenizer, eval_dataset))

    name = model_args.model_name_or_path
    run.finish(
        trainer,
        metrics,
        task="causal_lm",
        title=f"GPT pretrained with hf_llm ({model.config.n_layer} layers, width {model.config.n_embd})",
        summary="A GPT-2-architecture causal language model pretrained with `recipes/pretrain.py`.",
        base_model=None if name in ("scratch", None) or name.startswith("gpt2-") else name,
        tags=["text-generation", "pretraining"],
        hyperparameters={
            **vars(pretrain_args),
            **{k: getattr(model.config, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")},
            "init_scheme": architecture.init_scheme,
        },
        headline={"eval_loss": None, "eval_perplexity": None},
        try_it=f"python recipes/generate.py --model_name_or_path {training_args.output_dir} --prompt \"def \"",
        evaluation={"block_size": block_size},  # the held-out blocks' size (recipes/evaluate.py's --block_size)
    )


if __name__ == "__main__":
    recipe_main(main, DATACLASS_TYPES, DEFAULTS)
