"""The training-type steps `training_driver.py` times, ours against stock: for each, what model, what
wrapper (PEFT LoRA, a reward head), what batch and what loss. Everything else (identical weights,
processes, alternating rounds, memory, FLOP rates, the report) is the driver's.

Each case's docstring is its script's --help text.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from contenders import CAUSAL_LM, SEQ_CLS, STOCK, load_model


@dataclasses.dataclass(frozen=True)
class Setting:
    """One architecture and batch a case is run at, with its warm-up and round counts."""

    arch_name: str  # "small", "124m" or "custom"
    arch: dict[str, int]  # n_embd, n_layer, n_head, vocab_size
    batch: int  # sequences per step (the pairs per step, for the reward case)
    seq_len: int
    warmup: int
    repeats: int


@dataclasses.dataclass(frozen=True)
class Defaults:
    batch: int
    seq_len: int
    warmup: int
    repeats: int


class StepCase:
    """Base of the cases: the driver calls these hooks; a case overrides what differs."""

    name: str  # the --case value
    benchmark: str  # the JSON report's "benchmark"
    kind = CAUSAL_LM
    default_arch = "124m"
    lr: float
    flop_factor: int  # FLOPs per token per N (see contenders.flop_params)
    flop_formula: str  # as the table title shows it
    flop_rule: str  # the formula with N spelled out, for the JSON report
    throughput_metric = "tokens/s"
    checked_gradient: str  # which gradient the equality check compares, as printed
    batch_flags: tuple[str, ...] = ("--batch",)
    batch_help = "sequences per step (default: the architecture's)"
    memory_warmup = 1  # steps before the measured one in a memory child (optimizer state exists by then)

    def defaults(self, arch_name: str) -> Defaults:
        raise NotImplementedError

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The case's own flags."""

    def config_overrides(self, args) -> dict[str, Any]:
        """Extra GPT2Config fields for the saved reference checkpoint."""
        return {}

    def load(self, name: str, folder: str, args, device: torch.device):
        """Contender `name` loaded from `folder`, wrapped as the case trains it."""
        return load_model(name, self.kind, folder, args, device)

    def make_batch(self, setting: Setting, args, device: torch.device) -> dict[str, torch.Tensor]:
        """Token ids as labels too: the causal-LM loss on every token. Drawn once, shared by all contenders."""
        generator = torch.Generator().manual_seed(args.seed + 1)
        ids = torch.randint(0, setting.arch["vocab_size"], (setting.batch, setting.seq_len), generator=generator)
        ids = ids.to(device)
        return {"input_ids": ids, "labels": ids}

    def loss(self, model, batch: dict[str, torch.Tensor], name: str, args) -> torch.Tensor:
        return model(**batch).loss

    def checked_parameter(self, model) -> torch.Tensor:
        raise NotImplementedError

    def title(self, args) -> str:
        raise NotImplementedError

    def label(self, setting: Setting) -> str:
        return f"{setting.arch_name} {setting.batch}x{setting.seq_len}"

    def items_per_step(self, setting: Setting, batch: dict[str, torch.Tensor]) -> int:
        """The throughput's numerator: tokens (or pairs) one step processes."""
        return setting.batch * setting.seq_len

    def flop_tokens(self, setting: Setting, batch: dict[str, torch.Tensor]) -> int:
        return setting.batch * setting.seq_len


def _set_lm_loss(model, name: str, lm_loss: str) -> None:
    """Switch ours (and a variant) to the LM-head loss `lm_loss`; stock stays on its plain loss."""
    if name == STOCK:
        return
    if lm_loss == "trl-fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
        return
    model.use_chunked_lm_loss(lm_loss.startswith("chunked"))
    if lm_loss == "chunked-no-tied":
        import hf_llm.models.gpt.modeling_gpt as modeling

        modeling.tied_head_gradient_for = lambda wte, lm_head: None


class PretrainingStep(StepCase):
    """Training-step throughput and peak memory: hf_llm GPTForCausalLM vs stock GPT2LMHeadModel.

    One step = forward with labels (causal-LM loss) + backward + AdamW step + zero_grad(set_to_none); AdamW
    is the fused kernel that transformers' Trainer uses by default (`--optimizer for-loop` for torch's CPU default).
    Both models are loaded from one saved stock checkpoint (identical weights) and see the same token
    batch; both are in training mode. Stock materialises the logits and uses transformers' ForCausalLMLoss;
    ours computes its loss as `--lm-loss` says (for ours only; stock is always the plain reference):
      chunked         hf_llm's chunked linear+cross-entropy (`model.use_chunked_lm_loss()`, as the
                      pretraining recipe trains), handing the tied head's gradient to the embedding (default)
      chunked-no-tied the same without that gradient handover (what the handover earns)
      plain           the full logits and transformers' loss, as stock (what the chunked loss earns)
      trl-fused       TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, which SFTTrainer applies)
    Dropout is GPT-2's default (0.1) unless --dropout says otherwise.

    Reported per architecture (medians over alternating rounds, see training_driver.py):
      tokens/s        batch * seq_len / wall seconds per step
      step s          wall seconds per step; cpu s: process CPU seconds per step
      GFLOP/s         6 * N * tokens / wall seconds (N = non-embedding params + LM head), and that as a
                      share of the fp32 matmul peak measured in the same run
      peak step MiB   extra resident memory the step needs over what is live before it (CPU: VmHWM
                      reset + malloc_trim, one fresh subprocess per model; CUDA: max_memory_allocated)

    Default run (~8 minutes on 2 CPU cores, memory children included): the small architecture (n_embd 256, 4 layers, 4 heads,
    vocab 50,257) at batch 8 x 256, and the 124M architecture at batch 2 x 256.

        python benchmarks/bench_train.py                         # both architectures, CPU fp32, sdpa
        python benchmarks/bench_train.py --arch small --lm-loss plain
        python benchmarks/bench_train.py --arch small --attn eager --repeats 9
        python benchmarks/bench_train.py --device cuda --dtype bf16 --attn flash_attention_2 --batch 8 --seq-len 1024
    """

    name, benchmark = "train", "train_step"
    default_arch = "all"
    lr = 1e-4
    flop_factor = 6
    flop_formula = "6*N*tokens"
    flop_rule = "6 * N * tokens, N = non-embedding params + LM head (vocab x n_embd)"
    checked_gradient = "wte"
    memory_warmup = 2
    LM_LOSSES = ("chunked", "chunked-no-tied", "plain", "trl-fused")

    def defaults(self, arch_name):
        return {
            "small": Defaults(batch=8, seq_len=256, warmup=2, repeats=5),
            "124m": Defaults(batch=2, seq_len=256, warmup=1, repeats=5),
        }.get(arch_name, Defaults(batch=4, seq_len=256, warmup=1, repeats=4))

    def add_arguments(self, parser):
        parser.add_argument("--lm-loss", default="chunked", choices=self.LM_LOSSES, help="how ours computes its loss (see above)")

    def load(self, name, folder, args, device):
        model = super().load(name, folder, args, device)
        _set_lm_loss(model, name, args.lm_loss)
        return model

    def loss(self, model, batch, name, args):
        fused = name != STOCK and args.lm_loss == "trl-fused"
        return model(**batch, **({"fused_lm_head": True} if fused else {})).loss

    def checked_parameter(self, model):
        return model.get_input_embeddings().weight

    def title(self, args):
        return f"Training step (fwd+bwd+AdamW [{args.optimizer}]), ours' LM loss {args.lm_loss}"


class LoraSftStep(StepCase):
    """LoRA SFT step: PEFT LoRA on hf_llm GPTForCausalLM vs PEFT LoRA on stock GPT2LMHeadModel.

    Both base models are loaded from one saved stock checkpoint (identical weights) and wrapped with the
    same PEFT config: r=4, lora_alpha=32, lora_dropout=0, target_modules=["c_attn"] (hf_llm's c_attn is
    an nn.Linear; stock's is a Conv1D, which PEFT handles with fan_in_fan_out=True). The LoRA matrices
    are initialised from the same seed, so both start from the same function. One step = forward with
    labels (causal-LM loss on every token; ours with its chunked loss) + backward + AdamW on the LoRA
    parameters + zero_grad. Dropout in the base model is GPT-2's default (0.1) unless --dropout says otherwise.

    FLOPs = 4 * N * tokens: forward 2N, backward 2N for the activation gradients; the frozen weights get
    no weight gradients (the LoRA matrices' share is negligible). N = non-embedding params + LM head.

    Default (124M architecture, batch 8 x 256) takes about 2-3 minutes on 2 CPU cores:

        python benchmarks/bench_lora.py
        python benchmarks/bench_lora.py --arch small --repeats 5
        python benchmarks/bench_lora.py --device cuda --dtype bf16 --attn flash_attention_2 --batch 16 --seq-len 1024
    """

    name, benchmark = "lora", "lora_step"
    lr = 1e-4
    flop_factor = 4
    flop_formula = "4*N*tokens"
    flop_rule = "4 * N * tokens (no weight gradients for frozen weights), N = non-embedding params + LM head"
    checked_gradient = "layer-0 lora_B"

    def defaults(self, arch_name):
        return Defaults(batch=8, seq_len=256, warmup=1, repeats=3)

    def add_arguments(self, parser):
        parser.add_argument("--rank", type=int, default=4)
        parser.add_argument("--alpha", type=int, default=32)
        parser.add_argument("--targets", nargs="+", default=["c_attn"])

    def load(self, name, folder, args, device):
        from peft import LoraConfig, get_peft_model

        model = super().load(name, folder, args, device)
        if name != STOCK:
            model.use_chunked_lm_loss()
        config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets,
                            task_type="CAUSAL_LM", fan_in_fan_out=(name == STOCK))
        torch.manual_seed(args.seed + 7)  # same LoRA initialisation for every contender
        return get_peft_model(model, config)

    def checked_parameter(self, model):
        return next(p for n, p in model.named_parameters() if "h.0." in n and "lora_B" in n)

    def title(self, args):
        return f"LoRA SFT step r={args.rank} (fwd+bwd+AdamW [{args.optimizer}] on LoRA params)"

    def label(self, setting):
        return f"LoRA {super().label(setting)}"


class RewardStep(StepCase):
    """Reward-model step: hf_llm GPTForSequenceClassification vs stock GPT2ForSequenceClassification.

    Both are loaded from one saved stock checkpoint (identical weights, a one-output score head) and see
    the same batch of preference pairs, laid out as TRL's RewardTrainer lays them out: the chosen and the
    rejected sequences of every pair in one batch, right-padded with the end-of-text token, with an
    attention mask; the reward is the score at each sequence's last real token. One step = forward +
    pairwise loss -logsigmoid(r_chosen - r_rejected) (mean over pairs) + backward + AdamW on every
    parameter + zero_grad. Pair lengths are drawn between half and all of --seq-len.

    FLOPs = 6 * N * real tokens (N = non-embedding params; the score head is n_embd x 1).

        python benchmarks/bench_reward.py                        # 124M architecture, 2 pairs x 256, CPU fp32
        python benchmarks/bench_reward.py --arch small --pairs 8
        python benchmarks/bench_reward.py --device cuda --dtype bf16 --pairs 16 --seq-len 1024
    """

    name, benchmark = "reward", "reward_step"
    kind = SEQ_CLS
    lr = 1e-5
    flop_factor = 6
    flop_formula = "6*N*real tokens"
    flop_rule = "6 * N * real (unpadded) tokens, N = non-embedding params"
    throughput_metric = "pairs/s"
    checked_gradient = "score"
    batch_flags = ("--pairs", "--batch")
    batch_help = "preference pairs per step (2x sequences)"

    def defaults(self, arch_name):
        return Defaults(batch=2, seq_len=256, warmup=1, repeats=3)

    def config_overrides(self, args):
        return {"num_labels": 1, "pad_token_id": args.vocab_size - 1}

    def load(self, name, folder, args, device):
        model = super().load(name, folder, args, device)
        model.config.pad_token_id = args.vocab_size - 1
        return model

    def make_batch(self, setting, args, device):
        """Chosen rows first, then rejected rows (TRL's concatenation), right-padded with eos."""
        generator = torch.Generator().manual_seed(args.seed + 1)
        rows, vocab = 2 * setting.batch, setting.arch["vocab_size"]
        ids = torch.randint(0, vocab - 1, (rows, setting.seq_len), generator=generator)
        lengths = torch.randint(setting.seq_len // 2, setting.seq_len + 1, (rows,), generator=generator)
        mask = torch.arange(setting.seq_len)[None, :] < lengths[:, None]
        ids = ids.masked_fill(~mask, vocab - 1)
        return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device)}

    def loss(self, model, batch, name, args):
        rewards = model(**batch).logits.squeeze(-1).float()
        chosen, rejected = rewards.chunk(2)
        return -F.logsigmoid(chosen - rejected).mean()

    def checked_parameter(self, model):
        return model.score.weight

    def title(self, args):
        return f"Reward-model step (pairwise loss, fwd+bwd+AdamW [{args.optimizer}])"

    def label(self, setting):
        return f"reward {setting.arch_name} {setting.batch} pairs x{setting.seq_len}"

    def items_per_step(self, setting, batch):
        return setting.batch

    def flop_tokens(self, setting, batch):
        return int(batch["attention_mask"].sum())


CASES = {case.name: case for case in (PretrainingStep(), LoraSftStep(), RewardStep())}
