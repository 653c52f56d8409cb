#!/usr/bin/env bash
# The whole path on the embedded default, offline, from the packaged base: supervised fine-tuning, a reward
# model, preference tuning (DPO), online RL from the reward model, an evaluation of both tuned models against
# the SFT model judged by the reward model, and a scripted chat; then one table of every stage's held-out
# figures next to their value before the stage. Run it from the project's root (the outputs go to outputs/):
#
#     bash recipes/pipeline.sh                    # about 15 minutes on 2 CPU cores
#     PRETRAIN=1 bash recipes/pipeline.sh         # first pretrain a base model instead of the packaged one
#
# Each stage starts from the one before through the default output folders (outputs/sft_lora, ...), so any
# stage can also be run alone with the same command. Extra arguments go to every training stage (e.g.
# --overwrite_output_dir true to run again over earlier outputs).
set -euo pipefail

launch="accelerate launch"
if ! accelerate env >/dev/null 2>&1; then launch="python"; fi  # accelerate not set up: one process

base=()
if [[ "${PRETRAIN:-0}" == "1" ]]; then
    $launch recipes/pretrain.py --num_train_epochs 6 "$@"
    base=(--model_name_or_path outputs/pretrain)
fi
$launch recipes/sft_lora.py "${base[@]}" "$@"
$launch recipes/reward_modeling.py "${base[@]}" "$@"
$launch recipes/dpo.py "$@"
$launch recipes/rl.py "$@"
python recipes/evaluate.py --model_name_or_path outputs/dpo --figures win_rate --reward_model outputs/reward_modeling \
    --output_dir outputs/evaluate_dpo
python recipes/evaluate.py --model_name_or_path outputs/rl --figures win_rate --reward_model outputs/reward_modeling \
    --output_dir outputs/evaluate_rl
printf '%s\n' "Write a Python function \`add(a, b)\` that: Return the sum of a and b." "/reset" \
    "Write a Python function \`is_empty(path)\` that: Return True if the folder is empty." | python recipes/chat.py

echo
python -m hf_llm.training.stages outputs/sft_lora outputs/reward_modeling outputs/dpo outputs/rl \
    outputs/evaluate_dpo outputs/evaluate_rl
