"""Launched by test_distributed.py under `accelerate launch`: run a recipe as `python recipes/<name>.py` does, plus test hooks.

    launch_recipe.py [--print-weights-digest] [--stop-after-step N] recipes/<name>.py [recipe flags...]

Under an FSDP accelerate config on the CPU this script turns FSDP on: accelerate 1.15 enables FSDP only
for GPU-type process groups and quietly trains a CPU (gloo) launch as DDP instead.
--print-weights-digest: at the end of training each rank prints a digest of its trainable weights.
--stop-after-step N: once step N (and its checkpoint) is done every rank raises, as a run killed there ends.
"""

import os
import runpy
import sys

from transformers import Trainer, TrainerCallback

from helpers import weights_digest

def enable_fsdp_on_cpu():
    """Give a CPU process group with an FSDP plugin what AcceleratorState gives a GPU one: distributed_type FSDP."""
    import accelerate.state
    from accelerate.utils import DistributedType

    init = accelerate.state.AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            # PartialState too, as AcceleratorState records it there: later AcceleratorState() calls copy it back.
            self.distributed_type = accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = __init__


class PrintWeightsDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        print(f"rank {args.process_index}: weights at train end sha256 {weights_digest(model)}", flush=True)


class StopAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"stopped by the test after step {self.step}")


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
        elif option == "--stop-after-step":
            callbacks.append(StopAfterStep(int(args.pop(0))))
        else:
            raise SystemExit(f"launch_recipe.py: unknown option {option}")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        enable_fsdp_on_cpu()
    add_callbacks(callbacks)
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
