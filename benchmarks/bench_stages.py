"""What preference tuning (DPO) and online RL gain on held-out data, seed after seed, each stage against
its own value before training in the same run.

    python benchmarks/bench_stages.py                         # seeds 42 and 7, in a temporary folder
    python benchmarks/bench_stages.py --seeds 42 7 1 --work runs/stages --json stages.json

The SFT adapter and the reward model are trained once, with their recipes' defaults (seed 42), as
`recipes/pipeline.sh` trains them. Then, for each seed, `dpo.py` and `rl.py` run with their defaults and
that `--seed`, which also draws their held-out split. Every recipe runs as `accelerate launch` runs it
with one process (`python recipes/<name>.py`), on the embedded default, offline.

Reported per seed:
- DPO: the share of held-out pairs whose implicit reward prefers the chosen answer, before training
  (every pair a tie, as the policy is its reference) and after, with the pair counts;
- RL: the reward model's mean score of the policy's answers before (the SFT model) and after, both of
  answers sampled as the trainer samples them (4 per prompt) and of the greedy answers, each with the
  standard error of the per-prompt differences (the same prompts before and after: paired); the KL to
  the SFT model; the held-out response loss of the data's own answers (no reward model) and its change,
  which the default settings keep within 10%.

Verdicts: a stage's gain is "beyond the seeds' noise" when its smallest gain over the seeds exceeds the
spread of its after-values between seeds (max - min), and, for RL, when every seed's gain is also more
than twice its paired standard error. DPO's before-value, 0, is a tie on every pair, not a model that
prefers the rejected answers: a coin would get half the pairs right. So DPO is also judged against that
chance level: its smallest after-value must exceed 0.5 by more than the spread between seeds, and each
seed's count of pairs right gets its one-sided binomial p-value against a fair coin.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_llm.training.rl import REPORT_SAMPLES  # rl.py's sampled answers per held-out prompt

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
RESPONSE_LOSS_LIMIT = 0.10  # the RL check without the reward model: within 10% of the SFT model's


def run_recipe(name: str, work: Path, *args: str, reuse: bool = False) -> float:
    """`python recipes/<name>.py ARGS` in `work` (outputs/ there); its wall time in seconds. With `reuse`, a
    folder that already holds a finished run is kept and its recorded time returned."""
    folder = Path(args[args.index("--output_dir") + 1]) if "--output_dir" in args else work / "outputs" / name
    record = folder / "hf_llm_run.json"
    if reuse and record.is_file() and json.loads(record.read_text()).get("completed"):
        return json.loads(record.read_text())["seconds"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(RECIPES / f"{name}.py"), *args, "--disable_tqdm", "true"],
                            cwd=work, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name}.py {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def metrics(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def held_out_pairs(folder: Path, seed: int, extra: list[str]) -> int:
    """The number of held-out pairs dpo.py scored: its preference data rebuilt as recipes/evaluate.py does,
    with dpo.py's defaults for the evaluation rows and length, unless `extra` sets them."""
    import runpy

    from hf_llm import GPTForCausalLM
    from hf_llm.tokenization import load_tokenizer
    from hf_llm.training import DataArguments
    from hf_llm.training.evaluation import held_out_data

    settings = dict(runpy.run_path(str(RECIPES / "dpo.py"))["DEFAULTS"])
    for name, kind in (("max_eval_samples", int), ("max_length", int), ("too_long", str)):
        if f"--{name}" in extra:
            settings[name] = kind(extra[extra.index(f"--{name}") + 1])
    model = GPTForCausalLM.from_pretrained(folder / "base")
    data_args = DataArguments(max_eval_samples=settings["max_eval_samples"], too_long=settings["too_long"])
    data, _ = held_out_data("preference", data_args,
                            load_tokenizer(folder), model, seed=seed, max_length=settings["max_length"])
    return len(data)


def dpo_row(folder: Path, seed: int, seconds: float, extra: list[str]) -> dict:
    found = metrics(folder)
    pairs = held_out_pairs(folder, seed, extra)
    before, after = found["eval_initial_preference_accuracy"], found["eval_preference_accuracy"]
    right = round(after * pairs)
    # P(a fair coin gets at least `right` of `pairs` right): how surprising the count is at chance level.
    p_value = sum(math.comb(pairs, k) for k in range(right, pairs + 1)) / 2**pairs
    return {"seed": seed, "pairs": pairs, "before": before, "after": after, "gain": after - before,
            "chosen_after": right, "p_value_against_chance": p_value, "margin_after": found["eval_preference_margin"],
            "seconds": seconds}


def paired(rows: list[dict], key: str) -> tuple[float, float]:
    """The mean of the per-prompt differences after - before of `key`, and its standard error."""
    differences = [row[f"{key}_after"] - row[f"{key}_before"] for row in rows]
    error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
    return statistics.mean(differences), error


def rl_row(folder: Path, seed: int, seconds: float) -> dict:
    found = metrics(folder)
    rows = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    loss_before, loss_after = found["eval_initial_response_loss"], found["eval_response_loss"]
    row = {"seed": seed, "prompts": len(rows), "kl": found["eval_kl"], "response_loss_before": loss_before,
           "response_loss_after": loss_after, "response_loss_change": loss_after / loss_before - 1, "seconds": seconds}
    for figure, key in (("sampled_reward", "sampled_reward"), ("reward", "reward")):
        gain, error = paired(rows, key)
        row[figure] = {"before": found[f"eval_initial_{figure}"], "after": found[f"eval_{figure}"], "gain": gain,
                       "paired_standard_error": error}
    return row


def verdict(rows: list[dict], paired: bool = False, chance: float | None = None) -> dict:
    gains = [row["gain"] for row in rows]
    afters = [row["after"] for row in rows]
    spread = max(afters) - min(afters)
    beyond = min(gains) > spread
    if paired:
        beyond = beyond and all(row["gain"] > 2 * row["paired_standard_error"] for row in rows)
    found = {"mean_gain": statistics.mean(gains), "smallest_gain": min(gains), "spread_between_seeds": spread,
             "beyond_the_seeds_noise": beyond}
    if chance is not None:
        found["above_chance_beyond_the_seeds_noise"] = min(afters) - chance > spread
    return found


def print_report(dpo: list[dict], rl: list[dict], dpo_verdict: dict, rl_verdict: dict) -> None:
    print("\nDPO: held-out preference accuracy (share of pairs whose implicit reward prefers the chosen answer)")
    print(f"{'seed':>6} {'pairs':>6} {'before':>8} {'after':>8} {'right':>9} {'p(coin)':>8} {'margin':>8} {'seconds':>8}")
    for row in dpo:
        print(f"{row['seed']:>6} {row['pairs']:>6} {row['before']:>8.4f} {row['after']:>8.4f} "
              f"{row['chosen_after']:>3} of {row['pairs']:<3} {row['p_value_against_chance']:>8.4f} "
              f"{row['margin_after']:>8.4f} {row['seconds']:>8.0f}")
    print(f"gain: mean {dpo_verdict['mean_gain']:.4f}, smallest {dpo_verdict['smallest_gain']:.4f}; after-values spread "
          f"{dpo_verdict['spread_between_seeds']:.4f} between seeds: beyond the seeds' noise: {dpo_verdict['beyond_the_seeds_noise']}; "
          f"above a coin's 0.5 by more than that spread: {dpo_verdict['above_chance_beyond_the_seeds_noise']}")
    for figure, what in (("sampled_reward", f"mean score of {REPORT_SAMPLES} sampled answers per prompt, as the trainer samples"),
                         ("reward", "score of the greedy answer")):
        print(f"\nRL: the reward model's {what}, held-out prompts (before: the SFT model)")
        print(f"{'seed':>6} {'prompts':>7} {'before':>8} {'after':>8} {'gain':>8} {'+-se':>7} {'kl':>8} "
              f"{'resp.loss':>17} {'change':>7} {'seconds':>8}")
        for row in rl:
            cell = row[figure]
            print(f"{row['seed']:>6} {row['prompts']:>7} {cell['before']:>8.4f} {cell['after']:>8.4f} {cell['gain']:>8.4f} "
                  f"{cell['paired_standard_error']:>7.4f} {row['kl']:>8.4f} {row['response_loss_before']:>8.4f}->"
                  f"{row['response_loss_after']:.4f} {row['response_loss_change']:>+7.1%} {row['seconds']:>8.0f}")
        found = rl_verdict[figure]
        print(f"gain: mean {found['mean_gain']:.4f}, smallest {found['smallest_gain']:.4f}; after-values spread "
              f"{found['spread_between_seeds']:.4f} between seeds: beyond the seeds' noise (and 2 standard errors): "
              f"{found['beyond_the_seeds_noise']}")
    within = all(abs(row["response_loss_change"]) <= RESPONSE_LOSS_LIMIT for row in rl)
    print(f"response loss of the data's answers within {RESPONSE_LOSS_LIMIT:.0%} of the SFT model's on every seed: {within}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7], help="one DPO and one RL run per seed")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs already in --work (e.g. to rerun only the RL runs after deleting them)")
    parser.add_argument("--stage-args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags for every recipe run (last on the line), e.g. --max_steps 4 for a quick check")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        extra = args.stage_args
        prepare = {name: run_recipe(name, work, *extra, reuse=args.reuse) for name in ("sft_lora", "reward_modeling")}
        dpo, rl = [], []
        for seed in args.seeds:
            dpo_folder, rl_folder = work / "outputs" / f"dpo_seed{seed}", work / "outputs" / f"rl_seed{seed}"
            seconds = run_recipe("dpo", work, "--seed", str(seed), "--output_dir", str(dpo_folder), *extra, reuse=args.reuse)
            dpo.append(dpo_row(dpo_folder, seed, seconds, extra))
            # Every held-out prompt's answers and rewards go to answers.jsonl, for the paired standard error.
            seconds = run_recipe("rl", work, "--seed", str(seed), "--output_dir", str(rl_folder),
                                 "--report_examples", "100000", *extra, reuse=args.reuse)
            rl.append(rl_row(rl_folder, seed, seconds))

    dpo_verdict = verdict(dpo, chance=0.5)
    rl_verdict = {figure: verdict([row[figure] for row in rl], paired=True) for figure in ("sampled_reward", "reward")}
    print_report(dpo, rl, dpo_verdict, rl_verdict)
    if args.json:
        report = {"seeds": args.seeds, "stage_args": extra, "prepare_seconds": prepare, "dpo": dpo, "rl": rl,
                  "dpo_verdict": dpo_verdict, "rl_verdict": rl_verdict}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
