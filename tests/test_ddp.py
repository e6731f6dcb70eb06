"""Two-process DDP on the CPU (gloo): each rank trains on its own datasets, the weights stay in step."""

import json
import os
import subprocess
import sys

import lightning as L
import torch

import pfn
from pfn.checkpoint import read_checkpoint
from pfn.training import draw_training_batch
from priors import build_prior
from tests.conftest import ROOT, tiny_config


class RecordBatches(L.Callback):
    """Writes, per rank, a fingerprint of every batch it trained on and of its final weights."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        y = batch["y"]
        self.batches.append({"step": trainer.global_step, "y_sum": float(y.sum()), "y_first": float(y[0, 0])})

    def on_train_end(self, trainer, module):
        weights = float(sum(p.detach().double().sum() for p in module.backbone.parameters()))
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "batches": self.batches}
        path = f"{trainer.default_root_dir}/batches-rank{trainer.global_rank}.json"
        with open(path, "w") as file:
            json.dump({**record, "weights": weights}, file)


SCRIPT = """
import sys
from pfn.config import load_config
from pfn.training import train
from tests.test_ddp import RecordBatches

train(load_config(sys.argv[1], sys.argv[2:]), callbacks=[RecordBatches()])
"""


def test_two_process_ddp_draws_different_data_per_rank_and_exports(tmp_path):
    # Lightning's "ddp" strategy starts rank 1 by running this same command line again, so it is
    # run in a subprocess (as `pfn train` would be), not inside pytest.
    steps = 4
    overrides = [
        *("--train.max_steps", str(steps), "--train.checkpoint_every", "100"),
        *("--train.accelerator", "cpu", "--train.devices", "2", "--train.strategy", "ddp"),
    ]
    config = tiny_config(tmp_path, *overrides)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    arguments = ["--train.output_dir", str(tmp_path), "--train.progress_bar", "false", "--logger", "none", *overrides]
    run = subprocess.run(
        [sys.executable, str(script), str(ROOT / "configs" / "tiny.yaml"), *arguments],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    path = tmp_path / "model.pfn"

    records = [json.loads((tmp_path / f"batches-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    prior = build_prior(config.prior)
    for rank, record in enumerate(records):
        assert [b["step"] for b in record["batches"]] == list(range(steps))
        for batch in record["batches"]:
            # Rank r's batch at step s is the one seeded by (seed, r, s).
            expected = draw_training_batch(prior, config, batch["step"], rank=rank)["y"]
            assert batch["y_first"] == float(expected[0, 0])
            assert abs(batch["y_sum"] - float(expected.sum())) < 1e-3
    for first, second in zip(records[0]["batches"], records[1]["batches"], strict=True):
        assert first["y_first"] != second["y_first"]  # the two ranks never see the same datasets
    # Gradients are averaged across ranks, so both end with the same weights.
    assert abs(records[0]["weights"] - records[1]["weights"]) < 1e-4 * max(1.0, abs(records[0]["weights"]))

    assert read_checkpoint(path)["metadata"]["trained_steps"] == steps
    model = pfn.load(path)
    dist = model.predict(torch.rand(5, 1), torch.randn(5), torch.rand(3, 1))
    assert torch.isfinite(dist.mean).all()
