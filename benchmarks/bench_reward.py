"""Reward-model step: hf_llm GPTForSequenceClassification vs stock GPT2ForSequenceClassification.

Both are loaded from one saved stock checkpoint (identical weights, a one-output score head) and see
the same batch of preference pairs, laid out as TRL's RewardTrainer lays them out: the chosen and the
rejected sequences of every pair in one batch, right-padded with the end-of-text token, with an
attention mask; the reward is the score at each sequence's last real token. One step = forward +
pairwise loss -logsigmoid(r_chosen - r_rejected) (mean over pairs) + backward + AdamW on every
parameter + zero_grad. Pair lengths are drawn between half and all of --seq-len.

FLOPs = 6 * N * real tokens (N = non-embedding params; the score head is n_embd x 1).

    python benchmarks/bench_reward.py                        # 124M architecture, 2 pairs x 256, CPU fp32
    python benchmarks/bench_reward.py --n-embd 256 --n-layer 4 --n-head 4 --pairs 8
    python benchmarks/bench_reward.py --device cuda --dtype bf16 --pairs 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import probes  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step (2x sequences)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=None, help="base-model dropout (default GPT-2's 0.1)")
    common.add_optimizer_arg(parser)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    common.add_common_args(parser, warmup=1, repeats=3)
    return parser.parse_args(argv)


def make_batch(args, device) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows (TRL's concatenation), right-padded with eos."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    rows = 2 * args.pairs
    pad = args.vocab_size - 1
    ids = torch.randint(0, args.vocab_size - 1, (rows, args.seq_len), generator=generator)
    lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (rows,), generator=generator)
    mask = torch.arange(args.seq_len)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, pad)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device)}


def pairwise_loss(model, batch) -> torch.Tensor:
    rewards = model(**batch).logits.squeeze(-1).float()
    chosen, rejected = rewards.chunk(2)
    return -F.logsigmoid(chosen - rejected).mean()


def load_reward_model(name, folder, args, device):
    model = common.load_model(name, "seq_cls", folder, args, device)
    model.config.pad_token_id = args.vocab_size - 1
    return model


def make_step(model, batch, args):
    return common.training_step(model, lambda: pairwise_loss(model, batch), args.lr, args.optimizer)


def check_equal(models, batch) -> dict:
    """Eval mode (no dropout): pairwise loss and the score head's gradient, against stock."""
    results = {}
    for name, model in models.items():
        model.eval()
        loss = pairwise_loss(model, batch)
        loss.backward()
        grad = model.score.weight.grad.detach().clone()
        model.zero_grad(set_to_none=True)
        results[name] = (loss.item(), grad)
    ref_loss, ref_grad = results[common.STOCK]
    return {
        name: {"loss_abs_diff": abs(loss - ref_loss), "score_grad_max_abs_diff": (grad - ref_grad).abs().max().item()}
        for name, (loss, grad) in results.items() if name != common.STOCK
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    common.quiet_transformers()
    device = common.setup(args)
    if args.memory_child or args.timing_child:
        def factory(name):
            return make_step(load_reward_model(name, args.checkpoint, args, device), make_batch(args, device), args)

        return common.child_main(args, factory, device, memory_warmup=1, timing_warmup=args.warmup)

    names = common.contenders(args)
    dtype = common.DTYPES[args.dtype]
    arch = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head, "vocab_size": args.vocab_size}
    batch = make_batch(args, device)
    tokens = int(batch["attention_mask"].sum())
    label = f"reward {args.n_embd}x{args.n_layer} {args.pairs} pairs x{args.seq_len}"
    print(f"reward-model step: ours vs stock GPT-2 on {device} {args.dtype}, attn={args.attn}: {arch}", file=sys.stderr)
    peak_before = common.peak_matmul_gflops(device, dtype)
    with common.temp_checkpoint_dir() as folder:
        config = common.gpt2_config(arch, dropout=args.dropout, num_labels=1, pad_token_id=args.vocab_size - 1)
        common.save_reference_checkpoint(config, "seq_cls", folder, args.seed)
        models = {name: load_reward_model(name, folder, args, device) for name in names}
        check = {} if args.no_check else check_equal(models, batch)
        n_flop = common.flop_params(models[common.STOCK], "seq_cls")
        child_argv = common.passthrough_argv(argv, ["--checkpoint", folder])
        times = common.time_training_steps(
            args, models, lambda model, name: make_step(model, batch, args), os.path.abspath(__file__), child_argv,
            device, args.warmup, args.repeats,
        )
        memory = {}
        if not args.no_memory:
            memory = common.run_memory_children(os.path.abspath(__file__), child_argv, names, device)
    peak_after = common.peak_matmul_gflops(device, dtype)
    peak = common.median([peak_before, peak_after])

    wall = {n: common.median(times[n]["wall"]) for n in names}
    cpu = {n: common.median(times[n]["cpu"]) for n in names}
    gflops = {n: 6 * n_flop * tokens / wall[n] / 1e9 for n in names}
    rows = [
        {"case": label, "metric": "pairs/s", "values": {n: args.pairs / wall[n] for n in names}},
        {"case": label, "metric": "step s (wall)", "values": wall},
        {"case": label, "metric": "step s (cpu)", "values": cpu},
        {"case": label, "metric": "GFLOP/s", "values": gflops},
        {"case": label, "metric": "% of matmul peak", "values": {n: 100 * g / peak for n, g in gflops.items()}},
    ]
    if memory:
        rows.append({"case": label, "metric": "peak step MiB", "values": {n: memory[n]["peak_step_mib"] for n in names}})
    common.print_table(
        f"Reward-model step (pairwise loss, fwd+bwd+AdamW [{args.optimizer}]), {device} {args.dtype}, attn={args.attn}; "
        f"FLOPs = 6*N*real tokens; matmul peak {peak_before:.0f}/{peak_after:.0f} GFLOP/s (before/after)",
        rows, names,
    )
    for name, diff in check.items():
        print(f"  check {name} vs stock: loss diff {diff['loss_abs_diff']:.2e}, "
              f"score grad max diff {diff['score_grad_max_abs_diff']:.2e}")
    common.write_json(args.json, {
        "benchmark": "reward_step", "environment": probes.environment(device), "args": vars(args),
        "flop_rule": "6 * N * real (unpadded) tokens, N = non-embedding params",
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "size": 2048},
        "rows": rows, "case": {"label": label, "arch": arch, "real_tokens_per_step": tokens, "flop_params_N": n_flop,
                               "times": times, "median_wall_s": wall, "median_cpu_s": cpu, "memory": memory,
                               "check": check},
    })


if __name__ == "__main__":
    main()
