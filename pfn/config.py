"""Training configs: YAML files with four sections (prior, model, data, train) and command-line overrides.

Every key is checked: a typo is an error that names the key and suggests the closest valid one.
Overrides use dotted keys, e.g. ``--model.emsize 128`` or ``--prior.lengthscale=0.3``; values
are parsed as YAML, so numbers, lists and mappings work.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pfn.checkpoint import WEIGHT_DTYPES
from pfn.model import X_ENCODERS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's levels


@dataclass
class ModelConfig:
    emsize: int = 256
    nlayers: int = 6
    nhead: int = 4
    nhid: int = 512
    dropout: float = 0.0
    max_features: int = 5
    head: str = "riemann"  # "riemann" (regression) or "categorical" (classification)
    num_buckets: int = 1000  # riemann head: buckets of the output distribution
    num_classes: int = 10  # categorical head: labels 0..num_classes-1
    # The decoder also predicts, per query point, an inverse temperature that scales its logits.
    # A sharp predictive (a GP with noise variance 1e-4 in one feature: std 0.01 on targets of
    # scale 1) otherwise needs logits spanning thousands of nats from an output layer that
    # learns them slowly; the shipped gp model's logits spanned ~50 and its predictive std was
    # 2-2.5x the exact GP's in one feature although its median was within 0.1-0.3 std.
    learned_temperature: bool = False
    # How each point's (padded) features become a token: "linear", or "mlp" (Linear, GELU, Linear).
    # First-layer attention logits between linearly encoded points are x_q.A.x_c + u.x_c: they
    # can tilt towards a direction but cannot measure the distance |x_q - x_c| that a kernel
    # smoother weighs by, which needs |x_c|^2; an MLP encoder can supply such features. At equal
    # CPU time on the GP prior it was even with linear on average, slightly better at 50-100
    # points (benchmarks/results/x-encoder-2026-11-27.md).
    x_encoder: str = "linear"
    # Basis functions of a Bayesian-linear-regression readout (0: none). With it, each query's
    # predictive is loc + scale * z: loc and scale are the posterior predictive of a Bayesian
    # linear regression of the context's y on learned features of x (conditioned on the dataset
    # through the transformer), solved exactly per dataset, and the bar distribution is over z, so
    # the buckets describe the predictive's shape while its location comes from a solve that is
    # linear in y. For priors whose exact predictive is far sharper than a network can place a
    # bucket (gp_hyper: std 3e-4..1e-2 of the context's std, where the plain model's location is
    # off by 1e-3..5e-3; benchmarks/results/gp-hyper-precision-2026-11-27.md). Its batched
    # Cholesky solves cannot be captured in a CUDA graph, so a CUDA GPU trains such a model
    # compiled without CUDA graphs. How many it needs grows with the features and shrinks with the
    # lengthscale: at lengthscale 0.2 the kernel's own top 128 eigenfunctions are 1.1 nats/point
    # short of the exact GP at 100 points in 3 features and 29 in 5; 256 are exact in 3 and 0.87
    # short in 5 (benchmarks/results/readout-floor-short-lengthscale-2026-12-08.md). A model
    # gains more through train.init_from.
    linear_readout: int = 0
    # With linear_readout: move the readout's prior and noise precisions from the network's guess
    # towards their posterior means under each context's evidence (the Bayesian linear
    # regression's, computed exactly per dataset), by a weight the network learns.
    readout_evidence: bool = False
    # With linear_readout: place the buckets over z = (y - loc) / scale at equal-mass quantiles of
    # a Student-t with this many degrees of freedom instead of the standard normal (None). Standard
    # -normal buckets end at |z| = 3.7 for 5,000 buckets, and beyond that the tails fall off faster
    # than a Gaussian, so a query the readout is overconfident about costs tens of nats: on the
    # shipped gp_hyper, one of 20 benchmark datasets of 10 points had queries at z = 5-8 costing
    # 13-60 nats each. A Student-t with 3 degrees of freedom reaches |z| = 22 and keeps the
    # buckets near z = 0 as fine (its density there is 0.37 against the normal's 0.40).
    readout_tail_dof: float | None = None
    # With linear_readout: the basis functions see x multiplied per dataset and feature by a scale
    # read from the dataset's summary (a learned lengthscale, in effect). Without it they vary in x
    # at one pace for every dataset: on the shipped gp_hyper, a function of lengthscale 0.05 on
    # 100 points could not be fitted, and the readout took what it missed for noise (3.8 nats
    # behind NUTS on that dataset).
    readout_input_scale: bool = False


@dataclass
class DataConfig:
    batch_size: int = 64
    num_points: int = 100  # context + query points per dataset
    min_features: int = 1  # features per batch drawn uniformly in [min_features, model.max_features]
    min_context: int = 0  # context points per batch drawn uniformly in [min_context, max_context]
    max_context: int | None = None  # default: num_points - 1
    border_datasets: int = 2000  # prior datasets drawn to place the bucket borders
    # Standardise each training dataset's y by its context's mean and std (as `predict` does for
    # user data), so one set of buckets serves datasets of any scale; the loss is then the NLL in
    # standardised units and predictions are mapped back to the caller's units.
    standardize_y: bool = False
    prefetch: bool = False  # CUDA: draw the next batch on a side stream while the current step runs
    # Which stream of training batches: batch `step` of process `rank` is drawn from the seeds
    # (seed, rank, step) in stream 0 and (seed, rank, step, stream) in stream s > 0. With
    # train.init_from a run moves on to the source model's stream + 1 (same seed), so a continued
    # model trains on datasets it has not seen.
    stream: int = 0

    @property
    def longest_context(self) -> int:
        """The most context points a training batch has: `max_context`, or all points but one."""
        return self.max_context if self.max_context is not None else self.num_points - 1


@dataclass
class TrainConfig:
    max_steps: int = 10_000
    # A wall-clock budget: when set, max_steps is re-estimated from the measured step rate so the
    # cosine schedule ends when the budget does (the exported config records the steps taken).
    max_minutes: float | None = None
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto": bf16-mixed on GPU, 32-true on CPU
    # Float32 matrix products on a CUDA GPU (`torch.set_float32_matmul_precision`; CPU training is
    # unaffected). "high" runs them in TF32 on the tensor cores: several times faster than "highest"
    # (full float32), and the inputs keep 11 significant bits (bfloat16: 8), which cost the shipped
    # models at most 0.005 nats/point, against bfloat16's 0.1 for gp_hyper
    # (benchmarks/results/tf32-precision-2026-11-27.md). Matters for `precision: 32-true`, and for
    # the float32 encoders under bf16-mixed.
    matmul_precision: str = "high"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # GPU speed: with varying context sizes a step is bound by the host launching ~4,000 small
    # kernels (benchmarks/README.md). `static_shapes` runs every batch at one shape (the context
    # marked by an attention mask; same predictions, attention over all points instead of the
    # context), so that `compile` builds one graph and "reduce-overhead" replays its passes as CUDA
    # graphs: 2.8x the datasets/s of the usual path end to end, 3.5x for the model step ("small"
    # throughput config on an H100, benchmarks/results/throughput-h100-2026-11-27b). "auto", the
    # default, is exactly that on a CUDA GPU and all three off elsewhere (a CPU step is bound by
    # its arithmetic); configs keep "auto", and `resolve_speed` decides on the machine that trains
    # (an exported model's metadata records what it decided). `compile` without `static_shapes`
    # compiles with dynamic shapes (which failed in the backward on torch 2.11 on an H100:
    # results/throughput-h100-2026-11-26-compile-error.json).
    static_shapes: bool | str = "auto"
    compile: bool | str = "auto"
    compile_mode: str = "auto"  # torch.compile's mode: "auto" or one of COMPILE_MODES
    checkpoint_every: int = 500
    log_every: int = 50
    output_dir: str = "runs/default"
    progress_bar: bool = True
    export_dtype: str = "float32"  # weights in the exported .pfn file: "float32" or "float16" (half the size)
    # Average each query's loss over the exact posterior predictive instead of taking it at the
    # drawn target: the same objective without the draw's noise, for the priors whose predictive
    # is closed form (gmm; gp, under hyperpriors given each dataset's drawn hyperparameters).
    # See pfn/exact_targets.py.
    exact_targets: bool = False
    # A .pfn file or shipped model name to start from (continued training, or fine-tuning on
    # another prior); its architecture must match this config's (see `training.initialize_from`).
    init_from: str | None = None
    # Train only the parameters whose names start with one of these prefixes (e.g.
    # "backbone.linear_readout"); the others stay as they are, and no gradient is computed for
    # them. Empty: train everything. Names as `PFNModule.named_parameters()` gives them (an
    # unknown prefix is an error that lists the model's parts).
    trainable: list[str] = field(default_factory=list)


@dataclass
class Config:
    seed: int = 0
    logger: str = "csv"  # "csv", "wandb" or "none"
    imports: list[str] = field(default_factory=list)  # modules that register extra priors
    prior: dict[str, Any] = field(default_factory=lambda: {"name": "gp"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return _build(cls, values, prefix="")

    def validate(self) -> Config:
        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ValueError(f"imports: cannot import module {module!r}: {error}") from error
        if self.logger not in ("csv", "wandb", "none"):
            raise ValueError(f"logger must be 'csv', 'wandb' or 'none', got {self.logger!r}")
        for name in ("emsize", "nlayers", "nhead", "nhid", "max_features"):
            if getattr(self.model, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self.model, name)}")
        if self.model.head not in ("riemann", "categorical"):
            raise ValueError(f"model.head must be 'riemann' or 'categorical', got {self.model.head!r}")
        if self.model.num_buckets < 2 or self.model.num_classes < 2:
            raise ValueError("model.num_buckets and model.num_classes must be >= 2")
        if self.data.num_points < 2:
            raise ValueError(f"data.num_points must be >= 2, got {self.data.num_points}")
        if not 1 <= self.data.min_features <= self.model.max_features:
            raise ValueError(f"data.min_features must be in [1, model.max_features={self.model.max_features}]")
        max_context = self.data.longest_context
        if not 0 <= self.data.min_context <= max_context <= self.data.num_points - 1:
            raise ValueError(
                "need 0 <= data.min_context <= data.max_context <= data.num_points - 1 "
                f"(got {self.data.min_context}, {max_context}, {self.data.num_points})"
            )
        if self.data.stream < 0:
            raise ValueError(f"data.stream must be >= 0, got {self.data.stream}")
        if self.train.max_steps < 1 or self.train.checkpoint_every < 1:
            raise ValueError("train.max_steps and train.checkpoint_every must be >= 1")
        if self.model.x_encoder not in X_ENCODERS:
            raise ValueError(f"model.x_encoder must be one of {', '.join(X_ENCODERS)}, got {self.model.x_encoder!r}")
        if self.model.learned_temperature and self.model.head != "riemann":
            raise ValueError("model.learned_temperature sharpens a bar distribution; it needs model.head 'riemann'")
        if self.model.linear_readout < 0:
            raise ValueError(f"model.linear_readout must be >= 0 (0: off), got {self.model.linear_readout}")
        if self.model.linear_readout and self.model.head != "riemann":
            raise ValueError("model.linear_readout places a regression predictive; it needs model.head 'riemann'")
        if self.model.readout_evidence and not self.model.linear_readout:
            raise ValueError(
                "model.readout_evidence fits the linear readout's precisions; it needs model.linear_readout > 0"
            )
        if self.model.readout_tail_dof is not None and not (
            self.model.linear_readout and self.model.readout_tail_dof > 0
        ):
            raise ValueError(
                "model.readout_tail_dof places the linear readout's z buckets: it needs model.linear_readout > 0 "
                f"and degrees of freedom > 0, got {self.model.readout_tail_dof!r}"
            )
        if self.model.readout_input_scale and not self.model.linear_readout:
            raise ValueError(
                "model.readout_input_scale scales the linear readout's inputs; it needs model.linear_readout > 0"
            )
        if self.model.linear_readout and self.train.compile_mode == "reduce-overhead":
            raise ValueError(
                "model.linear_readout cannot run in a CUDA graph (its batched Cholesky solves are not capturable, "
                "and readout_evidence's eigendecomposition synchronises with the host): use train.compile_mode "
                "auto or default"
            )
        if self.data.standardize_y and self.model.head != "riemann":
            raise ValueError("data.standardize_y standardises real-valued targets; it needs model.head 'riemann'")
        if self.train.export_dtype not in WEIGHT_DTYPES:
            raise ValueError(
                f"train.export_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {self.train.export_dtype!r}"
            )
        if self.train.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"train.matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                f"got {self.train.matmul_precision!r}"
            )
        for name in ("static_shapes", "compile"):
            if getattr(self.train, name) not in (True, False, "auto"):
                raise ValueError(f"train.{name} must be true, false or auto, got {getattr(self.train, name)!r}")
        if self.train.compile_mode not in ("auto", *COMPILE_MODES):
            raise ValueError(
                f"train.compile_mode must be auto or one of {', '.join(COMPILE_MODES)}, got {self.train.compile_mode!r}"
            )
        if self.train.compile is False and self.train.compile_mode not in ("auto", "default"):
            raise ValueError(f"train.compile_mode {self.train.compile_mode!r} needs train.compile: true (or auto)")
        if self.train.max_minutes is not None and not self.train.max_minutes > 0:
            raise ValueError(f"train.max_minutes must be a positive number of minutes, got {self.train.max_minutes}")
        return self


def training_device_type(accelerator: str) -> str:
    """The device type Lightning trains on for `accelerator`: "cuda" for a CUDA GPU, else "cpu" (or what it names)."""
    if accelerator in ("auto", "gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


@dataclass(frozen=True)
class Speed:
    """How a training step runs: the `train` options of the same names made concrete for a device
    (a config keeps "auto", so that it means the same on the next machine)."""

    static_shapes: bool
    compile: bool
    compile_mode: str


def resolve_speed(train: TrainConfig, device_type: str, cuda_graphs: bool = True) -> Speed:
    """The speed options for training on `device_type`: "auto" compiles at static shapes with CUDA
    graphs on a CUDA GPU (without them for a model whose step synchronises with the host,
    `cuda_graphs=False`) and runs the eager path elsewhere; a compile mode asked for compiles."""
    if train.compile == "auto":
        compile_ = device_type == "cuda" or train.compile_mode not in ("auto", "default")
    else:
        compile_ = train.compile
    static_shapes = compile_ if train.static_shapes == "auto" else train.static_shapes
    compile_mode = train.compile_mode
    if compile_mode == "auto":
        cuda_graphs = cuda_graphs and device_type == "cuda" and compile_ and static_shapes  # needs one shape
        compile_mode = "reduce-overhead" if cuda_graphs else "default"
    return Speed(static_shapes=static_shapes, compile=compile_, compile_mode=compile_mode)


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ValueError(f"unknown config key '{prefix}{key}'{hint}; valid keys: {', '.join(fields)}")
        field_type = str(fields[key].type)
        nested = {"ModelConfig": ModelConfig, "DataConfig": DataConfig, "TrainConfig": TrainConfig}.get(field_type)
        if nested:
            kwargs[key] = _build(nested, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _checked(prefix + key, field_type, value)
    return cls(**kwargs)


def _checked(key: str, field_type: str, value: Any) -> Any:
    """`value` if it has the field's type (int, float, bool, str, list[str], optionally `| None`), else a
    clear error.

    YAML 1.1 reads `1e-3` (no dot) as a string; a float field takes such a string as the number it
    spells, since that is what every reader of the config means by it.
    """
    base, optional = field_type.removesuffix(" | None"), field_type.endswith(" | None")
    if value is None and optional:
        return value
    if base == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    valid = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        # A bare string would otherwise be read one character at a time.
        "list[str]": isinstance(value, list) and all(isinstance(item, str) for item in value),
    }.get(base, True)  # other fields (devices, prior) are checked where they are used
    if not valid:
        expected = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "list[str]": "a list of strings, e.g. [a, b]",
        }[base]
        raise ValueError(f"config key '{key}' must be {expected}{' or null' if optional else ''}, got {value!r}")
    return float(value) if base == "float" else value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--a.b value`` / ``--a.b=value`` overrides to a nested config dict (returns a copy)."""
    values = copy.deepcopy(values)
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(overrides):
        token = overrides[index]
        if not token.startswith("--"):
            raise ValueError(f"expected an override like --model.emsize 128, got {token!r}")
        if "=" in token:
            key, raw = token[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(overrides):
                raise ValueError(f"override {token} needs a value")
            key, raw = token[2:], overrides[index + 1]
            index += 2
        pairs.append((key, raw))
    for key, raw in pairs:
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot override '{key}': '{parent}' is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply overrides, check every key and value."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
    values = apply_overrides(values, overrides or [])
    return Config.from_dict(values).validate()
