"""LoRA SFT step: PEFT LoRA on hf_llm GPTForCausalLM vs PEFT LoRA on stock GPT2LMHeadModel.

Both base models are loaded from one saved stock checkpoint (identical weights) and wrapped with the
same PEFT config: r=4, lora_alpha=32, lora_dropout=0, target_modules=["c_attn"] (hf_llm's c_attn is
an nn.Linear; stock's is a Conv1D, which PEFT handles with fan_in_fan_out=True). The LoRA matrices
are initialised from the same seed, so both start from the same function. One step = forward with
labels (causal-LM loss on every token) + backward + AdamW on the LoRA parameters + zero_grad.
Dropout in the base model is GPT-2's default (0.1) unless --dropout says otherwise.

FLOPs = 4 * N * tokens: forward 2N, backward 2N for the activation gradients; the frozen weights get
no weight gradients (the LoRA matrices' share is negligible). N = non-embedding params + LM head.

Default (124M architecture, batch 8 x 256) takes about 2-3 minutes on 2 CPU cores:

    python benchmarks/bench_lora.py
    python benchmarks/bench_lora.py --n-embd 256 --n-layer 4 --n-head 4 --repeats 5
    python benchmarks/bench_lora.py --device cuda --dtype bf16 --attn flash_attention_2 --batch 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import probes  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=None, help="base-model dropout (default GPT-2's 0.1)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--targets", nargs="+", default=["c_attn"])
    common.add_optimizer_arg(parser)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    common.add_common_args(parser, warmup=1, repeats=3)
    return parser.parse_args(argv)


def load_lora_model(name, folder, args, device):
    from peft import LoraConfig, get_peft_model

    model = common.load_model(name, "causal_lm", folder, args, device)
    if name != common.STOCK:
        model.use_chunked_lm_loss()  # hf_llm's chunked loss in training mode
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets,
                        task_type="CAUSAL_LM", fan_in_fan_out=(name == common.STOCK))
    torch.manual_seed(args.seed + 7)  # same LoRA initialisation for every contender
    return get_peft_model(model, config)


def make_batch(args, device):
    generator = torch.Generator().manual_seed(args.seed + 1)
    return torch.randint(0, args.vocab_size, (args.batch, args.seq_len), generator=generator).to(device)


def make_step(model, ids, args):
    return common.training_step(model, lambda: model(input_ids=ids, labels=ids).loss, args.lr, args.optimizer)


def check_equal(models, ids) -> dict:
    """Without dropout: loss and the gradient of layer 0's LoRA B matrix, against stock+PEFT."""
    results = {}
    for name, model in models.items():
        # Training mode (where ours' chunked loss runs) with dropout off, so both compute the same.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grad = next(p.grad for n, p in model.named_parameters() if "h.0." in n and "lora_B" in n).detach().clone()
        model.zero_grad(set_to_none=True)
        results[name] = (loss.item(), grad)
    ref_loss, ref_grad = results[common.STOCK]
    return {
        name: {"loss_abs_diff": abs(loss - ref_loss), "lora_B_grad_max_abs_diff": (grad - ref_grad).abs().max().item()}
        for name, (loss, grad) in results.items() if name != common.STOCK
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    common.quiet_transformers()
    device = common.setup(args)
    if args.memory_child or args.timing_child:
        def factory(name):
            return make_step(load_lora_model(name, args.checkpoint, args, device), make_batch(args, device), args)

        return common.child_main(args, factory, device, memory_warmup=1, timing_warmup=args.warmup)

    names = common.contenders(args)
    dtype = common.DTYPES[args.dtype]
    arch = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head, "vocab_size": args.vocab_size}
    tokens = args.batch * args.seq_len
    label = f"LoRA r={args.rank} {args.n_embd}x{args.n_layer} {args.batch}x{args.seq_len}"
    print(f"LoRA SFT step: ours+PEFT vs stock+PEFT on {device} {args.dtype}, attn={args.attn}: {arch}", file=sys.stderr)
    peak_before = common.peak_matmul_gflops(device, dtype)
    with common.temp_checkpoint_dir() as folder:
        common.save_reference_checkpoint(common.gpt2_config(arch, dropout=args.dropout), "causal_lm", folder, args.seed)
        models = {name: load_lora_model(name, folder, args, device) for name in names}
        ids = make_batch(args, device)
        check = {} if args.no_check else check_equal(models, ids)
        models = {name: load_lora_model(name, folder, args, device) for name in names}  # dropout back on
        n_flop = common.flop_params(models[common.STOCK], "causal_lm")
        trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
        child_argv = common.passthrough_argv(argv, ["--checkpoint", folder])
        times = common.time_training_steps(
            args, models, lambda model, name: make_step(model, ids, args), os.path.abspath(__file__), child_argv,
            device, args.warmup, args.repeats,
        )
        memory = {}
        if not args.no_memory:
            memory = common.run_memory_children(os.path.abspath(__file__), child_argv, names, device)
    peak_after = common.peak_matmul_gflops(device, dtype)
    peak = common.median([peak_before, peak_after])

    wall = {n: common.median(times[n]["wall"]) for n in names}
    cpu = {n: common.median(times[n]["cpu"]) for n in names}
    gflops = {n: 4 * n_flop * tokens / wall[n] / 1e9 for n in names}
    rows = [
        {"case": label, "metric": "tokens/s", "values": {n: tokens / wall[n] for n in names}},
        {"case": label, "metric": "step s (wall)", "values": wall},
        {"case": label, "metric": "step s (cpu)", "values": cpu},
        {"case": label, "metric": "GFLOP/s", "values": gflops},
        {"case": label, "metric": "% of matmul peak", "values": {n: 100 * g / peak for n, g in gflops.items()}},
    ]
    if memory:
        rows.append({"case": label, "metric": "peak step MiB", "values": {n: memory[n]["peak_step_mib"] for n in names}})
    common.print_table(
        f"LoRA SFT step (fwd+bwd+AdamW [{args.optimizer}] on LoRA params), {device} {args.dtype}, attn={args.attn}; FLOPs = 4*N*tokens; "
        f"matmul peak {peak_before:.0f}/{peak_after:.0f} GFLOP/s (before/after)",
        rows, names,
    )
    for name, diff in check.items():
        print(f"  check {name} vs stock: loss diff {diff['loss_abs_diff']:.2e}, "
              f"layer-0 lora_B grad max diff {diff['lora_B_grad_max_abs_diff']:.2e}")
    common.write_json(args.json, {
        "benchmark": "lora_step", "environment": probes.environment(device), "args": vars(args),
        "flop_rule": "4 * N * tokens (no weight gradients for frozen weights), N = non-embedding params + LM head",
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "size": 2048},
        "rows": rows, "case": {"label": label, "arch": arch, "tokens_per_step": tokens, "flop_params_N": n_flop,
                               "trainable_params": trainable, "times": times, "median_wall_s": wall,
                               "median_cpu_s": cpu, "memory": memory, "check": check},
    })


if __name__ == "__main__":
    main()
