"""What two pieces of per-step Python cost a training step, on this machine's CPU.

A GPU step of the "small" throughput config is bound by the host (~9 ms of kernels in ~23 ms),
so Python per step is throughput. This times, inside a real Lightning run of a tiny model:
- Lightning's `self.log` (training_step used to call it on every step; now only on the steps
  the logger writes),
- collecting the parameters to clip by walking the module tree (`self.parameters()`, as before)
  against reading the optimizer's list (as now).

    python benchmarks/host_overhead.py
"""

import time

import lightning as L
import torch

import pfn.benchmarks.throughput as throughput
from pfn.training import PriorDataModule, make_trainer
from priors import build_prior

STEPS = 400


class TimePieces(L.Callback):
    def __init__(self) -> None:
        self.log_seconds, self.tree_seconds, self.optimizer_seconds, self.steps = 0.0, 0.0, 0.0, 0

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        start = time.perf_counter()
        from_tree = [parameter for parameter in module.parameters() if parameter.grad is not None]
        self.tree_seconds += time.perf_counter() - start
        start = time.perf_counter()
        listed = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        from_optimizer = [parameter for parameter in listed if parameter.grad is not None]
        self.optimizer_seconds += time.perf_counter() - start
        assert len(from_tree) == len(from_optimizer)
        self.steps += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        module.log("every_step", outputs["loss"])  # what training_step did on every step
        self.log_seconds += time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    # The "small" preset's code path at a size where compute is negligible next to the Python.
    throughput.QUICK = {
        "emsize": 8,
        "nlayers": 6,
        "nhead": 2,
        "nhid": 8,
        "num_buckets": 20,
        "num_points": 8,
        "batch_size": 2,
    }
    config = throughput.preset_config("small", quick=True, output_dir="runs/host-overhead")
    config.train.max_steps = STEPS
    module = throughput.build_module(config, build_prior(config.prior), torch.device("cpu"))
    pieces = TimePieces()
    start = time.perf_counter()
    make_trainer(config, callbacks=[pieces]).fit(module, datamodule=PriorDataModule(config))
    per_step = 1e3 / pieces.steps
    print(
        f"{pieces.steps} steps, {per_step * (time.perf_counter() - start):.2f} ms each; per step: "
        f"self.log {per_step * pieces.log_seconds:.3f} ms, parameters from the module tree "
        f"{per_step * pieces.tree_seconds:.3f} ms, from the optimizer {per_step * pieces.optimizer_seconds:.3f} ms"
    )


if __name__ == "__main__":
    main()
