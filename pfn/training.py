"""Training with PyTorch Lightning: datasets drawn from the prior on the training device.

`PriorDataModule` streams batches drawn from the prior; batch number `step` is drawn from a
generator seeded by (seed, rank, step), so the same seed gives the same batches and a resumed
run continues with exactly the batches it would have seen. `PFNModule` holds the backbone and
the head and knows the loss; the Lightning `Trainer` runs the loop.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from pfn.checkpoint import file_sha256
from pfn.config import Config, resolve_speed, training_device_type
from pfn.exact_targets import check_exact_targets, exact_targets
from pfn.heads import borders_from_samples, rebucket_output_layer
from pfn.model import pad_features
from pfn.network import build_backbone, build_head
from pfn.scaling import context_standardization
from priors import Prior, build_prior

if TYPE_CHECKING:
    from pfn.predictor import PFN


def seeded_generators(
    seed: int, *stream: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, torch.Generator]:
    """A CPU generator (for batch structure) and a device generator (for the data), both from
    the seed sequence (seed, *stream)."""
    cpu_seed, device_seed = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint64)
    cpu = torch.Generator().manual_seed(int(cpu_seed) >> 1)
    on_device = torch.Generator(device=device).manual_seed(int(device_seed) >> 1)
    return cpu, on_device


def draw_training_batch(
    prior: Prior, config: Config, step: int, rank: int = 0, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Batch number `step` for process `rank`: datasets plus how many points are context."""
    data = config.data
    # Stream 0 keeps the seeds of the runs made before streams existed. (Appending a 0 instead
    # would not help: trailing zeros do not change what a numpy SeedSequence generates.)
    stream = (data.stream,) if data.stream else ()
    structure, generator = seeded_generators(config.seed, rank, step, *stream, device=device)
    num_features, num_context = draw_batch_shape(config, structure)
    batch = prior.sample(data.batch_size, data.num_points, num_features, generator, device)
    drawn = {"x": batch.x, "y": batch.y, "num_context": num_context}
    if config.train.exact_targets and batch.hyperparameters is not None:  # what the exact targets need
        drawn["hyperparameters"] = batch.hyperparameters
    return drawn


def draw_batch_shape(config: Config, structure: torch.Generator) -> tuple[int, int]:
    """The number of features and of context points of one batch, drawn uniformly in their ranges."""
    data = config.data
    num_features = int(torch.randint(data.min_features, config.model.max_features + 1, (), generator=structure))
    num_context = int(torch.randint(data.min_context, data.longest_context + 1, (), generator=structure))
    return num_features, num_context


def prior_borders(prior: Prior, config: Config) -> torch.Tensor:
    """Bucket borders from quantiles of targets drawn from the prior (its own seed stream)."""
    samples = []
    datasets_per_draw = 250
    for draw in range(math.ceil(config.data.border_datasets / datasets_per_draw)):
        structure, generator = seeded_generators(config.seed, 10**6, draw)
        features, num_context = draw_batch_shape(config, structure)
        y = prior.sample(datasets_per_draw, config.data.num_points, features, generator).y
        if config.data.standardize_y:  # the scale the network will see: standardised by a context
            loc, scale = context_standardization(y[:, :num_context])
            y = (y - loc) / scale
        samples.append(y.flatten())
    return borders_from_samples(torch.cat(samples), config.model.num_buckets)


class PriorStream(IterableDataset):
    """An endless stream of prior batches that starts at the trainer's current step."""

    def __init__(self, datamodule: PriorDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[dict[str, Any]]:
        trainer = self.datamodule.trainer
        step = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        prior, config = self.datamodule.prior, self.datamodule.config
        if not (config.data.prefetch and device.type == "cuda"):
            while True:
                yield draw_training_batch(prior, config, step, rank, device)
                step += 1
        # Lightning asks for batch s + 1 before it runs step s, so a batch drawn on a side stream
        # is drawn while the previous step runs on the main stream. The same generators draw the
        # same numbers on any stream; the main stream waits for the batch in
        # `PriorDataModule.on_after_batch_transfer`, just before the step that uses it.
        side = torch.cuda.Stream(device)
        while True:
            with torch.cuda.stream(side):
                batch = draw_training_batch(prior, config, step, rank, device)
                batch["ready"] = side.record_event()
            yield batch
            step += 1


class PriorDataModule(L.LightningDataModule):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.prior = build_prior(config.prior)

    def train_dataloader(self) -> DataLoader:
        # Batches are drawn on the training device in this process: no workers, no collation.
        return DataLoader(PriorStream(self), batch_size=None, num_workers=0)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        ready = batch.pop("ready", None)
        if ready is not None:  # drawn on a side stream (data.prefetch)
            stream = torch.cuda.current_stream(batch["x"].device)
            stream.wait_event(ready)
            for tensor in (batch["x"], batch["y"], *batch.get("hyperparameters", {}).values()):
                tensor.record_stream(stream)  # its memory is not reused until this stream is done with it
        return batch


class PFNModule(L.LightningModule):
    """The PFN's training logic: backbone + head (Riemann or categorical); the loss is the head's."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = Config.from_dict(config).validate()
        # A Riemann head's borders are placed in `setup`, so loading a checkpoint (which brings
        # its own borders) never draws the thousands of prior datasets that placing them takes.
        self.prior = build_prior(self.config.prior)
        self.head = build_head(self.config.model)
        self.backbone = build_backbone(self.config.model)
        self.speed = resolve_speed(
            self.config.train,
            training_device_type(self.config.train.accelerator),
            # A linear readout solves its systems with MAGMA's batched Cholesky, which CUDA graph
            # capture refuses ("operation not permitted when stream is capturing", H100, torch 2.11).
            cuda_graphs=not self.config.model.linear_readout,
        )
        if self.config.train.exact_targets:
            check_exact_targets(self.prior)  # at start-up, not at the first step
        train_only(self, self.config.train.trainable)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(self.config.train.matmul_precision)

    def setup(self, stage: str) -> None:
        # Lightning restores a resumed run's checkpoint after `setup`, overwriting these borders.
        if self.config.model.head == "riemann" and not self.head.borders.any():
            borders = prior_borders(self.prior, self.config)
            self.head.borders.copy_(borders.to(self.head.borders.device))

    def forward(self, x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        return self.backbone(x_context, y_context, x_query)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean loss of the query points (those after the first `num_context`) of a prior batch."""
        x, drawn_y, n = batch["x"], batch["y"], batch["num_context"]
        y, standardization = drawn_y, None  # y: the targets on the scale the network sees
        if self.config.data.standardize_y:
            standardization = context_standardization(drawn_y[:, :n])
            loc, scale = standardization
            y = (drawn_y - loc) / scale
        if not self.speed.static_shapes:
            logits = self(x[:, :n], y[:, :n], x[:, n:])
        else:
            is_context = torch.arange(x.shape[1], device=x.device) < n  # [num_points]
            padded = pad_features(x, self.config.model.max_features)
            logits = self.backbone.forward_static(padded, y, is_context)[:, n:]  # the queries' predictions
        if self.config.train.exact_targets:
            # The prior's predictive is for the targets as drawn; `standardization` moves it onto the buckets.
            hyperparameters = batch.get("hyperparameters")
            target = exact_targets(self.prior, x[:, :n], drawn_y[:, :n], x[:, n:], hyperparameters, standardization)
            return self.head.expected_loss(logits, target).mean()
        return self.head.loss(logits, y[:, n:]).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # Not `prog_bar=True`: Lightning turns progress-bar values into Python numbers after every
        # step, which waits for the GPU. A logged tensor stays on the device until the logger
        # writes it, every `log_every` steps; on the steps between, `self.log` would only cost ~0.6 ms
        # of Python (a host-bound GPU step of the "small" config takes ~25 ms). The condition is
        # the logger's own, `global_step` counting the steps already taken.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clipped here rather than by the Trainer, whose AMP plugin refuses fused AdamW. The
        # optimizer's list of parameters, not `self.parameters()`, whose walk through the module
        # tree costs ~0.25 ms of Python per step (benchmarks/host_overhead.py).
        parameters = [
            parameter for group in optimizer.param_groups for parameter in group["params"] if parameter.grad is not None
        ]
        if self.config.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.train.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([parameter.grad for parameter in parameters])
        # A non-finite gradient (a rare bf16 overflow) would turn every weight into NaN for good.
        # Fused AdamW skips its whole step, on the device, when `found_inf` is nonzero (the way
        # torch's GradScaler uses it), so this costs no host-device synchronisation to check.
        optimizer.found_inf = (~torch.isfinite(norm)).float()

    def configure_optimizers(self):
        train = self.config.train
        # Fused: one kernel for all parameters, and the only AdamW that honours `found_inf`.
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay, fused=True)

        def warmup_cosine(step: int) -> float:
            if step < train.warmup_steps:
                return (step + 1) / train.warmup_steps
            progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train_only(module: nn.Module, prefixes: list[str]) -> None:
    """Freeze every parameter of `module` whose name does not start with one of `prefixes` (a
    whole part of a dotted name: "backbone.decoder" is not "backbone.decoder2"); none if empty."""
    if not prefixes:
        return
    names = [name for name, _ in module.named_parameters()]

    def selected_by(prefix: str, name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    unknown = [prefix for prefix in prefixes if not any(selected_by(prefix, name) for name in names)]
    if unknown:
        parts = sorted({".".join(name.split(".")[:2]) for name in names})
        raise ValueError(f"train.trainable: no parameter is named {unknown} or under it; the model's parts: {parts}")
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(any(selected_by(prefix, name) for prefix in prefixes))


class TimeBudget(L.Callback):
    """Fit training into `minutes` of wall-clock time by re-estimating `max_steps` as it runs.

    At a few points of the budget the step rate is measured over the window since the previous
    point (so a machine that gets busier or quieter is followed), and `max_steps` is set so that
    training ends when the budget does; the warm-up + cosine schedule reads `max_steps` on every
    step, so it follows. Lightning's own `max_time` stops the run if the estimate is off. On
    resume the budget counts again from the restart.
    """

    def __init__(self, minutes: float, skip_steps: int = 20) -> None:
        self.seconds = 60.0 * minutes
        self.skip_steps = skip_steps  # the first steps include one-off start-up costs
        self.fractions = [0.1, 0.3, 0.5, 0.7, 0.85]
        self.start_time = 0.0
        self.window_start: tuple[int, float] | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start_time = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if self.window_start is None:
            if step >= self.skip_steps:
                self.window_start = (step, now)
            return
        elapsed = now - self.start_time
        if not self.fractions or elapsed < self.fractions[0] * self.seconds:
            return
        self.fractions.pop(0)
        steps_per_second = (step - self.window_start[0]) / max(now - self.window_start[1], 1e-9)
        self.window_start = (step, now)
        max_steps = max(step + 1, int(step + steps_per_second * (self.seconds - elapsed)))
        trainer.fit_loop.epoch_loop.max_steps = max_steps
        module.config.train.max_steps = max_steps  # the schedule and the exported config see it


def make_trainer(config: Config, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    train = config.train
    output = Path(train.output_dir)
    precision = train.precision
    if precision == "auto":
        precision = "bf16-mixed" if training_device_type(train.accelerator) == "cuda" else "32-true"
    if config.logger == "csv":
        logger = L.pytorch.loggers.CSVLogger(output, name="logs")
    elif config.logger == "wandb":
        logger = L.pytorch.loggers.WandbLogger(save_dir=output, project="pfn", config=config.to_dict())
    else:
        logger = False
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=output / "checkpoints", every_n_train_steps=train.checkpoint_every, save_last=True, save_top_k=1
    )
    callbacks = [checkpoints, *(callbacks or [])]
    max_time = None
    if train.max_minutes is not None:
        callbacks.append(TimeBudget(train.max_minutes))
        max_time = {"seconds": 60.0 * train.max_minutes * 1.05 + 30}
    return L.Trainer(
        max_steps=train.max_steps,
        max_time=max_time,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=precision,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=train.log_every,
        enable_progress_bar=train.progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=output,
    )


def next_stream(config: Config, source: Config) -> Config:
    """`config`, moved past the source model's stream of training batches when it would repeat it
    (same seed, a stream not after the source's), so a continued model sees new datasets."""
    if config.seed != source.seed or config.data.stream > source.data.stream:
        return config
    moved = copy.deepcopy(config)
    moved.data.stream = source.data.stream + 1
    print(f"train.init_from: drawing data.stream {moved.data.stream}, after the source model's", flush=True)
    return moved


# Rebucketing a trained output layer floors each new bucket's share of its old bucket at this
# (`rebucket_output_layer`): heavier readout tails (model.readout_tail_dof 3) put buckets out to
# |z| = 13 (1,000 buckets) where the old half-normal tail had ~1e-26 of its mass.
REBUCKET_MIN_SHARE = 1e-3


def initialize_from(module: PFNModule, source: PFN) -> dict[str, Any]:
    """Copy a trained model's weights into `module` before training: to train a shipped model
    further (a new warm-up + cosine schedule) or to fine-tune it on another prior.

    Every `model.*` setting must match, except gaining `learned_temperature` (its new layer starts
    at temperature 1, so predictions are unchanged at the start), gaining `linear_readout` (the
    transformer is kept, the output layer and buckets start afresh), gaining `readout_evidence`
    (its new weight starts at 0.12, near the readout's own guess), gaining `readout_input_scale`
    (its scales start at 1: predictions unchanged), more basis functions in a `linear_readout`
    (the new ones start near zero, `grow_readout_basis`: predictions all but unchanged) and `num_buckets`: with another
    number of buckets the borders are placed for this config and the output layer is rebuilt to
    give the model's own predictive distribution on them (`rebucket_output_layer`); with the same
    number the model's own borders are kept, since its output layer was trained on them; the same
    for another `readout_tail_dof` of a readout's buckets. Returns what was loaded, for the
    exported model's metadata.
    """
    ours, theirs = module.config, source.config
    name_or_path = ours.train.init_from  # as the user wrote it, for the error messages
    gains_readout = bool(ours.model.linear_readout) and not theirs.model.linear_readout
    grows_readout = 0 < theirs.model.linear_readout < ours.model.linear_readout
    differing = [
        f"model.{field.name} ({getattr(theirs.model, field.name)!r} there, {getattr(ours.model, field.name)!r} here)"
        for field in dataclasses.fields(ours.model)
        if field.name != "num_buckets"
        and getattr(ours.model, field.name) != getattr(theirs.model, field.name)
        and not (field.name == "learned_temperature" and ours.model.learned_temperature)
        and not (field.name == "linear_readout" and (gains_readout or grows_readout))
        and not (field.name == "readout_evidence" and ours.model.readout_evidence)
        and not (field.name == "readout_input_scale" and ours.model.readout_input_scale)
        and field.name != "readout_tail_dof"  # a rebucketing, as num_buckets
    ]
    if differing:
        raise ValueError(f"train.init_from {name_or_path!r} has another architecture: {', '.join(differing)}")
    if ours.model.head == "riemann" and ours.data.standardize_y != theirs.data.standardize_y:
        raise ValueError(
            f"train.init_from {name_or_path!r} was trained with data.standardize_y={theirs.data.standardize_y}, "
            f"so its buckets are on another scale than data.standardize_y={ours.data.standardize_y} here"
        )
    state = source.backbone.state_dict()
    if gains_readout:
        # Its logits were over the prior's y; here they describe z = (y - loc) / scale on fixed
        # buckets. The new output layer starts at zero (see PFNTransformer), so the predictive
        # starts as the readout's Gaussian, on the trained transformer's tokens.
        state = {key: value for key, value in state.items() if not key.startswith("decoder.2.")}
    target = module.backbone.state_dict()
    if grows_readout:
        state = grow_readout_basis(state, target)
    resized = [key for key, value in target.items() if key in state and state[key].shape != value.shape]
    module.backbone.load_state_dict({key: value for key, value in state.items() if key not in resized}, strict=False)
    # (A gained readout keeps its head's fresh buckets.)
    if ours.model.head == "riemann" and not gains_readout:
        # The borders the output layer was trained on, unless this config places others (another
        # number of buckets, or other readout tails): then the output layer starts where it gives
        # the model's own predictive distribution on the new ones, so training continues rather
        # than restarts.
        if ours.model.linear_readout:
            borders = module.head.borders.clone()  # fixed by the config (`build_head`)
        else:
            borders = prior_borders(module.prior, ours) if resized else source.head.borders
        module.head.borders.copy_(borders)  # `setup` keeps borders that are already set
        if not torch.equal(borders, source.head.borders):
            weight, bias = rebucket_output_layer(
                source.backbone.decoder[-1], source.head.borders, borders, min_share=REBUCKET_MIN_SHARE
            )
            output = module.backbone.decoder[-1]
            with torch.no_grad():
                output.weight.copy_(weight)
                output.bias.copy_(bias)
    print(f"initialised from {source.path}" + (f"; rebucketed: {', '.join(resized)}" if resized else ""), flush=True)
    return {
        "path": str(source.path),
        # A shipped name later points to a newer file; the digest says which one this started from.
        "sha256": file_sha256(source.path),
        "trained_steps": source.metadata.get("trained_steps"),
        "rebucketed": resized,
    }


# A new basis function of a grown readout starts this small against the trained ones: squared, far
# below the prior-to-noise precision ratios the readout uses (about 1e-9 to 1e-4 of the features'
# scale on nearly noiseless data), so the regression barely sees it, yet not zero, where its
# gradient would vanish; Adam's steps do not scale with the gradient, so it grows from there.
NEW_BASIS_SCALE = 1e-5


def grow_readout_basis(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trained backbone's weights (`state`) for a backbone with more readout basis functions
    (`target`, its state dict): the trained basis functions kept as the first ones, the new ones
    random and NEW_BASIS_SCALE times as large."""
    state = dict(state)
    prefix = "linear_readout.basis."
    last = max(int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix))
    generator = torch.Generator().manual_seed(0)
    for name in ("weight", "bias"):
        key = f"{prefix}{last}.{name}"
        trained, wanted = state[key], target[key]
        fresh = torch.randn(wanted.shape[0] - trained.shape[0], *trained.shape[1:], generator=generator)
        scale = NEW_BASIS_SCALE * trained.float().std()
        state[key] = torch.cat([trained, (scale * fresh).to(trained.dtype)])
    return state


def compile_backbone(module: PFNModule) -> None:
    """`torch.compile` the network the way `module.loss` calls it (`module.speed`)."""
    speed = module.speed
    if speed.static_shapes:  # one shape for every batch: no dynamic shapes, one graph
        backbone = module.backbone
        backbone.forward_static = torch.compile(backbone.forward_static, dynamic=False, mode=speed.compile_mode)
    else:
        module.backbone = torch.compile(module.backbone, mode=speed.compile_mode)


def train(config: Config, ckpt_path: str | None = None, callbacks: list[L.Callback] | None = None) -> Path:
    """Train from a config (resuming from `ckpt_path`, e.g. "last"); returns the exported model file."""
    from pfn.checkpoint import save_model
    from pfn.predictor import load

    source = load(config.train.init_from) if config.train.init_from is not None else None
    if source is not None:
        config = next_stream(config, source.config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    trainer = make_trainer(config, callbacks)
    module = PFNModule(config.to_dict())
    metadata: dict[str, Any] = {}
    if source is not None:
        # On resume, Lightning then restores the run's own checkpoint over these weights.
        metadata["initialized_from"] = initialize_from(module, source)
    if module.speed.compile:
        compile_backbone(module)
    trainer.fit(module, datamodule=PriorDataModule(config), ckpt_path=ckpt_path)
    path = Path(config.train.output_dir) / "model.pfn"
    if trainer.is_global_zero:
        # The config keeps "auto"; the metadata says how the steps actually ran.
        metadata["speed"] = dataclasses.asdict(module.speed)
        save_model(module, path, weights_dtype=config.train.export_dtype, trained_steps=trainer.global_step, **metadata)
    return path
