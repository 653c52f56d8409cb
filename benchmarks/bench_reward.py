"""Reward-model-step benchmark, ours vs stock GPT-2 sequence classification (`RewardStep` in
training_cases.py) run by training_driver.py. `--help` lists what is timed and the flags.

    python benchmarks/bench_reward.py --settle 1               # 124M, 2 pairs x 256
"""

import training_driver

if __name__ == "__main__":
    training_driver.main("reward")
