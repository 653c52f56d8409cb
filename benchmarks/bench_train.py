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

Reported per architecture (medians over alternating rounds, see common.py):
  tokens/s        batch * seq_len / wall seconds per step
  step s          wall seconds per step; cpu s: process CPU seconds per step
  GFLOP/s         6 * N * tokens / wall seconds (N = non-embedding params + LM head), and that as a
                  share of the fp32 matmul peak measured in the same run
  peak step MiB   extra resident memory the step needs over what is live before it (CPU: VmHWM
                  reset + malloc_trim, one fresh subprocess per model; CUDA: max_memory_allocated)

Default run (~8 minutes on 2 CPU cores, memory children included): the small architecture (n_embd 256, 4 layers, 4 heads,
vocab 50,257) at batch 8 x 256, and the 124M architecture at batch 2 x 256.

    python benchmarks/bench_train.py                         # both architectures, CPU fp32, sdpa
    python benchmarks/bench_train.py --arch small --attn eager --repeats 9
    python benchmarks/bench_train.py --device cuda --dtype bf16 --attn flash_attention_2 --batch 8 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import probes  # noqa: E402

ARCHS = {
    "small": {"arch": {"n_embd": 256, "n_layer": 4, "n_head": 4}, "batch": 8, "seq_len": 256, "warmup": 2, "repeats": 5},
    "124m": {"arch": {"n_embd": 768, "n_layer": 12, "n_head": 12}, "batch": 2, "seq_len": 256, "warmup": 1, "repeats": 5},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="all", choices=[*ARCHS, "all", "custom"])
    parser.add_argument("--n-embd", type=int, default=None, help="custom architecture (with --arch custom)")
    parser.add_argument("--n-layer", type=int, default=None)
    parser.add_argument("--n-head", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=None, help="override the architecture's default batch size")
    parser.add_argument("--seq-len", type=int, default=None, help="override the default sequence length (256)")
    parser.add_argument("--dropout", type=float, default=None, help="resid/embd/attn dropout (default GPT-2's 0.1)")
    common.add_optimizer_arg(parser)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lm-loss", default="chunked", choices=LM_LOSSES, help="how ours computes its loss (see above)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)  # set for memory children
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    common.add_common_args(parser, warmup=None, repeats=None)
    return parser.parse_args(argv)

LM_LOSSES = ("chunked", "chunked-no-tied", "plain", "trl-fused")


def cases(args) -> list[tuple[str, dict]]:
    if args.arch == "custom":
        if None in (args.n_embd, args.n_layer, args.n_head):
            raise SystemExit("--arch custom needs --n-embd, --n-layer and --n-head")
        spec = {"arch": {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head}, "batch": 4,
                "seq_len": 256, "warmup": 1, "repeats": 4}
        chosen = [("custom", spec)]
    else:
        chosen = [(name, spec) for name, spec in ARCHS.items() if args.arch in (name, "all")]
    resolved = []
    for name, spec in chosen:
        spec = dict(spec)
        spec["arch"] = {**spec["arch"], "vocab_size": args.vocab_size}
        for key in ("batch", "seq_len", "warmup", "repeats"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
        resolved.append((name, spec))
    return resolved


def make_batch(spec, args, device):
    generator = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, spec["arch"]["vocab_size"], (spec["batch"], spec["seq_len"]), generator=generator)
    return ids.to(device)


def prepare_lm_loss(model, name, lm_loss):
    """Switch ours to the LM-head loss `lm_loss` asks for; stock stays plain. Returns extra forward kwargs."""
    if name == common.STOCK:
        return {}
    if lm_loss == "trl-fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
        return {"fused_lm_head": True}
    model.use_chunked_lm_loss(lm_loss.startswith("chunked"))
    if lm_loss == "chunked-no-tied":
        import hf_llm.models.gpt.modeling_gpt as modeling

        modeling.tied_head_gradient_for = lambda wte, lm_head: None
    return {}


def make_step(model, ids, args, name):
    kwargs = prepare_lm_loss(model, name, args.lm_loss)
    return common.training_step(model, lambda: model(input_ids=ids, labels=ids, **kwargs).loss, args.lr, args.optimizer)


def check_equal(models, ids, lm_loss) -> dict:
    """Loss and LM-head gradient without dropout: ours' `lm_loss` path against stock's plain loss."""
    results = {}
    reference = None
    for name, model in models.items():
        kwargs = prepare_lm_loss(model, name, lm_loss)
        # Training mode (the chunked loss runs only there) with dropout off, so both compute the same.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        loss = model(input_ids=ids, labels=ids, **kwargs).loss
        loss.backward()
        grad = model.get_input_embeddings().weight.grad.detach().float().clone()
        model.zero_grad(set_to_none=True)
        if name == common.STOCK:
            reference = (loss.item(), grad)
        results[name] = (loss.item(), grad)
    out = {}
    for name, (loss, grad) in results.items():
        if name != common.STOCK:
            out[name] = {
                "loss_abs_diff": abs(loss - reference[0]),
                "wte_grad_max_abs_diff": (grad - reference[1]).abs().max().item(),
            }
    return out


def child(args) -> None:
    """A `--memory-child` or `--timing-child` process: one model, one architecture."""
    common.quiet_transformers()
    device = common.setup(args)
    (_, spec), = cases(args)

    def factory(name):
        model = common.load_model(name, "causal_lm", args.checkpoint, args, device)
        return make_step(model, make_batch(spec, args, device), args, name)

    common.child_main(args, factory, device, memory_warmup=2, timing_warmup=spec["warmup"])


def child_argv(args, arch_name, spec, folder) -> list[str]:
    argv = ["--arch", arch_name, "--batch", str(spec["batch"]), "--seq-len", str(spec["seq_len"]),
            "--vocab-size", str(args.vocab_size), "--device", args.device, "--dtype", args.dtype,
            "--attn", args.attn, "--seed", str(args.seed), "--lr", str(args.lr), "--optimizer", args.optimizer, "--lm-loss", args.lm_loss, "--checkpoint", folder]
    if arch_name == "custom":
        argv += ["--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer), "--n-head", str(args.n_head)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.variant:
        argv += ["--variant", args.variant]
    if args.dropout is not None:
        argv += ["--dropout", str(args.dropout)]
    return argv


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_child or args.timing_child:
        return child(args)
    common.quiet_transformers()
    device = common.setup(args)
    names = common.contenders(args)
    dtype = common.DTYPES[args.dtype]
    print(f"training step: ours vs stock GPT-2 on {device} {args.dtype}, attn={args.attn}", file=sys.stderr)
    peak_before = common.peak_matmul_gflops(device, dtype)

    rows, report_cases = [], {}
    for arch_name, spec in cases(args):
        tokens = spec["batch"] * spec["seq_len"]
        label = f"{arch_name} {spec['batch']}x{spec['seq_len']}"
        print(f"  {label}: {spec['arch']}", file=sys.stderr)
        with common.temp_checkpoint_dir() as folder:
            config = common.gpt2_config(spec["arch"], dropout=args.dropout)
            common.save_reference_checkpoint(config, "causal_lm", folder, args.seed)
            models = {name: common.load_model(name, "causal_lm", folder, args, device) for name in names}
            ids = make_batch(spec, args, device)
            check = {} if args.no_check else check_equal(models, ids, args.lm_loss)
            models = {name: common.load_model(name, "causal_lm", folder, args, device) for name in names}
            n_flop = common.flop_params(models[common.STOCK], "causal_lm")
            argv = child_argv(args, arch_name, spec, folder)
            times = common.time_training_steps(
                args, models, lambda model, name: make_step(model, ids, args, name), os.path.abspath(__file__), argv,
                device, spec["warmup"], spec["repeats"],
            )
            memory = {}
            if not args.no_memory:
                memory = common.run_memory_children(os.path.abspath(__file__), argv, names, device)

        wall = {n: common.median(times[n]["wall"]) for n in names}
        cpu = {n: common.median(times[n]["cpu"]) for n in names}
        rows.append({"case": label, "metric": "tokens/s", "values": {n: tokens / wall[n] for n in names}})
        rows.append({"case": label, "metric": "step s (wall)", "values": wall})
        rows.append({"case": label, "metric": "step s (cpu)", "values": cpu})
        rows.append({"case": label, "metric": "GFLOP/s", "values": {n: 6 * n_flop * tokens / wall[n] / 1e9 for n in names}})
        if memory:
            rows.append({"case": label, "metric": "peak step MiB", "values": {n: memory[n]["peak_step_mib"] for n in names}})
        report_cases[label] = {
            "arch": spec["arch"], "batch": spec["batch"], "seq_len": spec["seq_len"], "tokens_per_step": tokens,
            "warmup": spec["warmup"], "repeats": spec["repeats"], "flop_params_N": n_flop,
            "times": times, "median_wall_s": wall, "median_cpu_s": cpu, "memory": memory, "check": check,
        }
    peak_after = common.peak_matmul_gflops(device, dtype)

    peak = common.median([peak_before, peak_after])
    for row in rows:
        if row["metric"] == "GFLOP/s":
            rows.append({"case": row["case"], "metric": "% of matmul peak",
                         "values": {n: 100 * v / peak for n, v in row["values"].items()}})
    rows.sort(key=lambda r: r["case"])  # keep each case's rows together
    title = (f"Training step (fwd+bwd+AdamW [{args.optimizer}]), ours' LM loss {args.lm_loss}, {device} {args.dtype}, attn={args.attn}, dropout="
             f"{args.dropout if args.dropout is not None else 0.1}; FLOPs = 6*N*tokens; "
             f"matmul peak {peak_before:.0f}/{peak_after:.0f} GFLOP/s (before/after)")
    common.print_table(title, rows, names)
    for label, case in report_cases.items():
        for name, diff in case["check"].items():
            print(f"  check {label} {name} vs stock: loss diff {diff['loss_abs_diff']:.2e}, "
                  f"wte grad max diff {diff['wte_grad_max_abs_diff']:.2e}")
    common.write_json(args.json, {
        "benchmark": "train_step", "environment": probes.environment(device), "args": vars(args),
        "flop_rule": "6 * N * tokens, N = non-embedding params + LM head (vocab x n_embd)",
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "size": 2048},
        "rows": rows, "cases": report_cases,
    })


if __name__ == "__main__":
    main()
