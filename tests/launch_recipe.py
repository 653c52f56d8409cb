"""Launched by test_distributed.py under `accelerate launch`: run a recipe as `python recipes/<name>.py` does, plus test hooks.

    launch_recipe.py [--print-weights-digest] recipes/<name>.py [recipe flags...]

--print-weights-digest: at the end of training each rank prints a digest of its trainable weights.
"""

import runpy
import sys

from transformers import Trainer, TrainerCallback

from helpers import weights_digest


class PrintWeightsDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        print(f"rank {args.process_index}: weights at train end sha256 {weights_digest(model)}", flush=True)


def add_callbacks(callbacks):
    """Every Trainer the recipe builds gets `callbacks` added."""
    init = Trainer.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for callback in callbacks:
            self.add_callback(callback)

    Trainer.__init__ = __init__


if __name__ == "__main__":
    args = sys.argv[1:]
    callbacks = []
    while args[0].startswith("--"):
        option = args.pop(0)
        if option == "--print-weights-digest":
            callbacks.append(PrintWeightsDigest())
        else:
            raise SystemExit(f"launch_recipe.py: unknown option {option}")
    add_callbacks(callbacks)
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
