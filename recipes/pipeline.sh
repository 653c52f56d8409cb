#!/usr/bin/env bash
# The whole path on the embedded default, offline, from the packaged base: supervised fine-tuning, a reward
# model, preference tuning (DPO), online RL from the reward model, an evaluation of both tuned models against
# the SFT model judged by the reward model, and a scripted chat; then one table of every stage's held-out
# figures next to their value before the stage. The outputs go to outputs/ in the current folder:
#
#     bash recipes/pipeline.sh                    # about 12 minutes on 2 CPU cores
#     PRETRAIN=1 bash recipes/pipeline.sh         # first pretrain a base model instead of the packaged one
#     bash recipes/pipeline.sh --max_steps 2 --max_eval_samples 4     # a quick check that every stage runs
#
# Each stage starts from the one before through the default output folders (outputs/sft_lora, ...), so any
# stage can also be run alone with the same command. Extra arguments go to every training stage (e.g.
# --overwrite_output_dir true to run again over earlier outputs); --max_eval_samples also to the evaluations.
set -euo pipefail

recipes="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
launch=(accelerate launch)
if ! accelerate_env="$(accelerate env 2>/dev/null)"; then
    launch=(python)  # accelerate not installed or not set up: one process
elif grep -A1 "default config" <<<"$accelerate_env" | grep -q "Not found"; then
    # Without a config of its own, `accelerate launch` runs one process with one CPU thread unless
    # OMP_NUM_THREADS says otherwise: give that one process every core, as `python` does.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
fi

# The evaluations take --max_eval_samples from the extra arguments, and nothing else of them.
evaluation=()
for ((i = 1; i <= $#; i++)); do
    if [[ "${!i}" == "--max_eval_samples" ]]; then j=$((i + 1)); evaluation=(--max_eval_samples "${!j}"); fi
done

# Each stage's command, as run, before its output.
stage() { echo ">>> $*" >&2; "$@"; }

base=()
if [[ "${PRETRAIN:-0}" == "1" ]]; then
    stage "${launch[@]}" "$recipes/pretrain.py" --num_train_epochs 6 "$@"
    base=(--model_name_or_path outputs/pretrain)
fi
stage "${launch[@]}" "$recipes/sft_lora.py" "${base[@]}" "$@"
stage "${launch[@]}" "$recipes/reward_modeling.py" "${base[@]}" "$@"
stage "${launch[@]}" "$recipes/dpo.py" "$@"
stage "${launch[@]}" "$recipes/rl.py" "$@"
for tuned in dpo rl; do
    stage "${launch[@]}" "$recipes/evaluate.py" --model_name_or_path "outputs/$tuned" --figures win_rate \
        --reward_model outputs/reward_modeling --output_dir "outputs/evaluate_$tuned" "${evaluation[@]}"
done
printf '%s\n' "Write a Python function \`add(a, b)\` that: Return the sum of a and b." "/reset" \
    "Write a Python function \`is_empty(path)\` that: Return True if the folder is empty." | stage "${launch[@]}" "$recipes/chat.py"

echo
python -m hf_llm.training.stages outputs/sft_lora outputs/reward_modeling outputs/dpo outputs/rl \
    outputs/evaluate_dpo outputs/evaluate_rl
