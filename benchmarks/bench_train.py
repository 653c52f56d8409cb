"""Training-step benchmark, ours vs stock GPT-2: the pretraining step (`PretrainingStep` in
training_cases.py) run by training_driver.py. `--help` lists what is timed and the flags.

    python benchmarks/bench_train.py --arch small              # add --lm-loss plain|chunked-no-tied|trl-fused
    python benchmarks/bench_train.py --arch 124m
"""

import training_driver

if __name__ == "__main__":
    training_driver.main("train")
