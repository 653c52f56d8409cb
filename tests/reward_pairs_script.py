"""Evaluate 5 preference pairs at eval batch 4 with the reward recipe's trainer; print the metrics (rank 0)."""

import json
import sys

import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from hf_llm.training import ModelArguments
from hf_llm.training import ExactPairMetricsMixin
from hf_llm.training import DEFAULT_BASE_MODEL
from hf_llm.training import guarded
from hf_llm.training import load_model, resolve_tokenizer


def pairs() -> Dataset:
    return Dataset.from_dict({"prompt": [f"Q{i}: " for i in range(5)], "chosen": [f"good {i}" for i in range(5)],
                              "rejected": [f"bad answer {i}" for i in range(5)]})


def evaluate(output_dir: str, metric_key_prefix: str = "eval") -> tuple[dict, object, object]:
    model_args = ModelArguments(model_name_or_path=DEFAULT_BASE_MODEL)
    tokenizer = resolve_tokenizer(model_args)
    torch.manual_seed(0)
    model = load_model(model_args, "sequence-classification", tokenizer, num_labels=1)
    args = RewardConfig(output_dir=output_dir, per_device_eval_batch_size=4, report_to="none", use_cpu=True, max_length=64,
                        disable_tqdm=True)
    trainer = guarded(RewardTrainer, ExactPairMetricsMixin)(
        model=model, args=args, train_dataset=pairs(), eval_dataset=pairs(), processing_class=tokenizer
    )
    return trainer.evaluate(metric_key_prefix=metric_key_prefix), trainer, model


if __name__ == "__main__":
    metrics, trainer, _ = evaluate(sys.argv[1])
    if trainer.is_world_process_zero():
        print("METRICS " + json.dumps(metrics))
    if torch.distributed.is_initialized():
        # Tear the process group down before exit: left to interpreter shutdown, gloo can abort a rank.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
