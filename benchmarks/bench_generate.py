"""Greedy generation with the KV cache: hf_llm GPTForCausalLM vs stock GPT2LMHeadModel, tokens/s.

Both models are loaded from one saved stock checkpoint (identical weights, random, 124M architecture
by default) and generate from the same random prompts: a 64-token prompt, exactly 128 new tokens
(min_new_tokens = max_new_tokens, so both do the same work), batch 1 and batch 8. The generated
tokens are checked to be identical. tokens/s counts new tokens over the whole call (prefill included).
GFLOP/s uses 2 * N per generated token (N = non-embedding params + LM head; attention over the cache
not counted). Decoding streams every weight once per step whatever the batch, so at batch 1 the bound is
memory bandwidth, not FLOPs: "weight GB/s" = N * bytes per parameter * new tokens per sequence / wall
seconds, shown against a read bandwidth measured in the same run (summing a 512 MiB tensor).

    python benchmarks/bench_generate.py                      # 124M, batch 1 and 8, CPU fp32, sdpa
    python benchmarks/bench_generate.py --batches 1 --repeats 5
    python benchmarks/bench_generate.py --ablate few_rows   # what the few-row product earns

`--ablate few_rows` adds a contender "ours-no-few_rows": ours with every projection taking F.linear,
as nn.Linear does, timed in the same alternating rounds.
    python benchmarks/bench_generate.py --device cuda --dtype bf16 --attn flash_attention_2

All contenders share this process and are timed with torch.utils.benchmark (inprocess_timing.py):
alternating rounds, each contender's turn a `blocked_autorange` whose first, untimed call follows the
other contender's turn; the figure is the median over rounds of each turn's median call.
"""

from __future__ import annotations

import argparse
import sys

import torch

import contenders
import inprocess_timing
import probes
import report
from contenders import CAUSAL_LM, OURS, STOCK

ARCH = {"n_embd": 768, "n_layer": 12, "n_head": 12}
ABLATIONS = ("few_rows",)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--n-embd", type=int, default=ARCH["n_embd"])
    parser.add_argument("--n-layer", type=int, default=ARCH["n_layer"])
    parser.add_argument("--n-head", type=int, default=ARCH["n_head"])
    parser.add_argument("--ablate", nargs="*", default=[], choices=ABLATIONS, help="speed paths to time ours without")
    parser.add_argument(
        "--min-run-time", type=float, default=0.2,
        help="seconds each contender's turn runs at least (whole calls; default 0.2, torch.utils.benchmark's)",
    )
    contenders.add_contender_args(parser, warmup=1, repeats=3)
    return parser.parse_args(argv)


def make_generate(model, ids, new_tokens):
    mask = torch.ones_like(ids)

    def generate():
        with torch.no_grad():
            return model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=0, use_cache=True,
            )

    return generate


def few_row_choices() -> dict[str, str]:
    """Which product ours' projections picked for each weight shape and row count (see GPTLinear)."""
    from hf_llm.models.gpt.speed_paths import GPTLinear

    return {
        f"{key[0]}x{key[1]}, {key[3]} rows": product
        for key, product in sorted(GPTLinear.few_rows_choices.items(), key=lambda item: (item[0][3], item[0][:2]))
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    contenders.quiet_transformers()
    device = contenders.setup(args)
    names = contenders.contender_names(args)
    dtype = contenders.DTYPES[args.dtype]
    arch = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head}
    print(f"greedy generation: ours vs stock GPT-2 on {device} {args.dtype}, attn={args.attn}", file=sys.stderr)
    peak = inprocess_timing.peak_matmul_gflops(device, dtype)
    bandwidth = inprocess_timing.read_bandwidth_gbs(device)
    rows, cases = [], {}
    with contenders.temp_checkpoint_dir() as folder:
        contenders.save_reference_checkpoint(contenders.gpt2_config(arch), CAUSAL_LM, folder, args.seed)
        models = {name: contenders.load_model(name, CAUSAL_LM, folder, args, device).eval() for name in names}
        for path in args.ablate:
            model = models[f"{OURS}-no-{path}"] = contenders.load_model(OURS, CAUSAL_LM, folder, args, device).eval()
            for module in model.modules():
                if hasattr(module, "few_rows_product"):
                    module.few_rows_product = "plain"  # F.linear at every row count, as nn.Linear
        names = list(models)
        n_flop = contenders.flop_params(models[STOCK], CAUSAL_LM)
        for batch in args.batches:
            label = f"batch {batch}, {args.prompt_len}+{args.new_tokens}"
            generator = torch.Generator().manual_seed(args.seed + batch)
            ids = torch.randint(0, 50257, (batch, args.prompt_len), generator=generator).to(device)
            calls = {name: make_generate(model, ids, args.new_tokens) for name, model in models.items()}
            outputs = {name: call() for name, call in calls.items()}
            identical = {name: torch.equal(outputs[name], outputs[STOCK]) for name in names if name != STOCK}
            same = all(identical.values())
            times = inprocess_timing.alternate_rounds(calls, args.warmup, args.repeats, args.min_run_time)
            wall = {n: report.median(times[n]["wall"]) for n in names}
            new = batch * args.new_tokens
            streamed = n_flop * torch.finfo(dtype).bits // 8 * args.new_tokens
            rows += [
                report.row(label, "new tokens/s", {n: new / wall[n] for n in names}),
                report.row(label, "GFLOP/s", {n: 2 * n_flop * new / wall[n] / 1e9 for n in names}),
                report.row(label, "weight GB/s", {n: streamed / wall[n] / 1e9 for n in names}),
                report.row(label, "% of read bandwidth", {n: 100 * streamed / wall[n] / 1e9 / bandwidth for n in names}),
            ]
            cases[label] = {"times": times, "median_wall_s": wall, "identical_tokens": same,
                            "identical_tokens_by_contender": identical}
            print(f"  {label}: generated tokens identical to stock: {same}", file=sys.stderr)
    choices = few_row_choices()
    if choices:
        print(f"  ours' few-row products (out x in, rows up to: product): {choices}", file=sys.stderr)
    report.print_table(
        f"Greedy generation with KV cache, {device} {args.dtype}, attn={args.attn}; FLOPs = 2*N per new token; "
        f"matmul peak {peak:.0f} GFLOP/s, read bandwidth {bandwidth:.1f} GB/s",
        rows,
        names,
    )
    report.write_json(args.json, {
        "benchmark": "generate", "environment": probes.environment(device), "args": vars(args),
        "flop_rule": "2 * N per generated token", "few_row_products": choices, "matmul_peak_gflops": peak,
        "read_bandwidth_gbs": bandwidth, "rows": rows, "cases": cases,
    })


if __name__ == "__main__":
    main()
