"""LoRA SFT-step benchmark, ours+PEFT vs stock GPT-2+PEFT (`LoraSftStep` in training_cases.py) run by
training_driver.py. `--help` lists what is timed and the flags.

    python benchmarks/bench_lora.py                            # 124M, batch 8 x 256
"""

import training_driver

if __name__ == "__main__":
    training_driver.main("lora")
