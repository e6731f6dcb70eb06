"""A loaded PFN: validate user arrays, normalise, one forward pass, distribution in user units.

This is the one prediction path; the CLI, the benchmarks and the examples all go through
`PFN.predict`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfn.checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
from pfn.config import Config
from pfn.distributions import CategoricalDistribution, RiemannDistribution, RiemannMixture
from pfn.heads import CategoricalHead, RiemannHead
from pfn.model import PFNTransformer
from pfn.network import build_backbone, build_head
from pfn.scaling import context_standardization
from priors import Prior, build_prior


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if hasattr(value, "to_numpy"):  # pandas DataFrame / Series
        value = value.to_numpy()
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.from_numpy(np.array(value, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be numeric, got {type(value).__name__}: {error}") from error
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int16, torch.int8)):
        raise ValueError(f"{name} must be numeric, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return tensor


@dataclass
class Normalizer:
    """Per-dataset affine maps into the units of the model's prior, computed from the context
    alone (so queries stay independent).

    x, feature by feature, as the prior asks (`priors.InputScaling`): for most priors onto the
    box its inputs fill, for one whose inputs lie about the origin (GMM) centred and scaled to
    its typical spread. The box is estimated as a uniform distribution's support would be from
    n draws, [min - r / (n - 1), max + r / (n - 1)] with r = max - min: n points do not reach
    the edges, so mapping their own range onto the box would move them apart (two points would
    land on opposite corners); a single point goes to the box's centre.
    y as the prior asks (`Prior.output_scaling`: a GP with fixed hyperparameters fits its
    outputscale), else standardised by the context's mean and standard deviation.
    Where the context cannot define a scale (a constant column, fewer than two points) the
    scale is 1 and only the shift applies.
    """

    x_loc: torch.Tensor  # [b, 1, f]
    x_scale: torch.Tensor  # [b, 1, f]
    y_loc: torch.Tensor  # [b, 1]
    y_scale: torch.Tensor  # [b, 1]

    @classmethod
    def fit(
        cls, x_context: torch.Tensor, y_context: torch.Tensor, prior: Prior, standardize_y: bool = True
    ) -> Normalizer:
        """Maps fitted to the context into `prior`'s units; `standardize_y=False` leaves y alone (class labels)."""
        scaling = prior.input_scaling()
        normalizer = cls.identity(x_context)
        num_context = x_context.shape[1]
        if num_context == 0:
            return normalizer
        if scaling.kind == "range":
            box = scaling.high - scaling.low
            low = x_context.amin(1, keepdim=True)
            span = x_context.amax(1, keepdim=True) - low
            if num_context > 1:
                low, span = low - span / (num_context - 1), span * (num_context + 1) / (num_context - 1)
            varies = span > 0
            normalizer.x_scale = torch.where(varies, span / box, torch.ones_like(span))
            # A constant feature (any feature of a single point) goes to the box's centre.
            centre = 0.5 * (scaling.low + scaling.high)
            normalizer.x_loc = torch.where(varies, low - scaling.low * normalizer.x_scale, low - centre)
        else:
            normalizer.x_loc = x_context.mean(1, keepdim=True)
            if num_context > 1:
                spread = x_context.std(1, keepdim=True) / scaling.spread
                normalizer.x_scale = torch.where(spread > 0, spread, torch.ones_like(spread))
        if standardize_y:
            fitted = prior.output_scaling(normalizer.x(x_context), y_context)
            normalizer.y_loc, normalizer.y_scale = fitted if fitted is not None else context_standardization(y_context)
        return normalizer

    @classmethod
    def identity(cls, x_context: torch.Tensor) -> Normalizer:
        batch, _, num_features = x_context.shape
        zeros = x_context.new_zeros(batch, 1, num_features)
        return cls(zeros, zeros + 1, x_context.new_zeros(batch, 1), x_context.new_ones(batch, 1))

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_loc) / self.x_scale

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_loc) / self.y_scale


PRECISIONS = ("float32", "bfloat16")
CPU_CHUNK_TOKENS = 4096


class PFN:
    """A trained PFN ready to predict. Build it with `pfn.load(name_or_path)`."""

    def __init__(
        self,
        backbone: PFNTransformer,
        head: RiemannHead | CategoricalHead,
        config: Config,
        metadata: dict[str, Any] | None = None,
        path: Path | None = None,
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.backbone = backbone.eval()
        if precision == "bfloat16":
            # Autocast would cast these weights to bfloat16 on every call (in inference no cast is
            # cached): 8% of a one-dataset bnn prediction at 100 points on a CPU. The encoders, the
            # norms and the linear readout keep float32, as they do under autocast.
            for part in (*backbone.blocks, backbone.decoder):
                for layer in part.modules():
                    if isinstance(layer, torch.nn.Linear):
                        layer.to(torch.bfloat16)
        self.head = head.eval()
        self.config = config
        self.metadata = metadata or {}
        self.path = path
        self.precision = precision

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device = "cpu", precision: str = "float32") -> PFN:
        path = resolve_checkpoint(name_or_path)
        payload = read_checkpoint(path)
        try:
            config = Config.from_dict(payload["config"]).validate()
            backbone = build_backbone(config.model)
            backbone.load_state_dict(payload["state_dict"])
            head = build_head(config.model)
            head.load_state_dict(payload["head_state"])
        except (ValueError, RuntimeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path} does not match this version of the PFN model: {error}") from error
        return cls(backbone.to(device), head.to(device), config, payload.get("metadata"), path, precision)

    @property
    def prior_spec(self) -> dict[str, Any]:
        """The spec of the prior this model was trained on (see `priors.build_prior`)."""
        return dict(self.config.prior)

    @functools.cached_property
    def prior(self) -> Prior:
        """The prior this model was trained on; `predict` maps real data into its units."""
        return build_prior(self.prior_spec)

    @property
    def max_features(self) -> int:
        return self.config.model.max_features

    @property
    def device(self) -> torch.device:
        return self.backbone.empty_context.device

    def _check_inputs(self, x_context, y_context, x_query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Validated float64 tensors, batched: [b, c, f], [b, c], [b, q, f]; and whether the input was batched."""
        x_context = _as_tensor("x_context", x_context)
        y_context = _as_tensor("y_context", y_context)
        x_query = _as_tensor("x_query", x_query)
        if x_context.ndim not in (2, 3):
            raise ValueError(
                f"x_context must be [n, features] or [batch, n, features], got shape {tuple(x_context.shape)}"
                + (" (use x.reshape(-1, 1) for a single feature)" if x_context.ndim == 1 else "")
            )
        batched = x_context.ndim == 3
        if x_query.ndim != x_context.ndim:
            raise ValueError(
                f"x_query must have the same number of dimensions as x_context ({x_context.ndim}), "
                f"got shape {tuple(x_query.shape)}"
            )
        if y_context.ndim != x_context.ndim - 1:
            expected = "[batch, n]" if batched else "[n]"
            raise ValueError(f"y_context must be {expected} to match x_context, got shape {tuple(y_context.shape)}")
        if not batched:
            x_context, y_context, x_query = x_context[None], y_context[None], x_query[None]
        if y_context.shape != x_context.shape[:2]:
            raise ValueError(
                f"x_context has {x_context.shape[1]} points (batch {x_context.shape[0]}) but y_context has "
                f"{y_context.shape[1]} (batch {y_context.shape[0]}): mismatched context lengths"
            )
        if x_query.shape[0] != x_context.shape[0]:
            raise ValueError(f"x_query has batch size {x_query.shape[0]} but x_context has {x_context.shape[0]}")
        if x_query.shape[1] == 0:
            raise ValueError("x_query is empty: need at least one query point")
        num_features = x_context.shape[-1]
        if x_query.shape[-1] != num_features:
            raise ValueError(f"x_query has {x_query.shape[-1]} features but x_context has {num_features}")
        if num_features == 0:
            raise ValueError("inputs have 0 features: need at least one")
        if num_features > self.max_features:
            raise ValueError(f"got {num_features} features, but this model supports at most {self.max_features}")
        return x_context, y_context, x_query, batched

    def _check_labels(self, y_context: torch.Tensor) -> None:
        if not torch.equal(y_context, y_context.round()):
            raise ValueError("y_context must hold integer class labels 0, 1, 2, ... for a classification model")
        if y_context.numel() and (y_context.min() < 0 or y_context.max() >= self.config.model.num_classes):
            raise ValueError(
                f"y_context has labels in [{int(y_context.min())}, {int(y_context.max())}], but this model "
                f"supports labels 0..{self.config.model.num_classes - 1} (at most "
                f"{self.config.model.num_classes} classes)"
            )

    @property
    def is_classifier(self) -> bool:
        return self.head.predicts_labels

    @torch.inference_mode()
    def predict(
        self, x_context, y_context, x_query, normalize: bool = True
    ) -> RiemannDistribution | CategoricalDistribution:
        """Posterior predictive distribution of y at each query point, in the caller's units.

        Args:
            x_context: [n, f] or [batch, n, f] inputs with known targets (n may be 0).
            y_context: [n] or [batch, n] targets (for a classifier: labels 0..num_classes-1).
            x_query: [q, f] or [batch, q, f] inputs to predict.
            normalize: map the data to the model's scale first (see `Normalizer`). Pass False
                only for data already in the units of the model's prior, e.g. samples from it
                (a model trained with `data.standardize_y` still standardises y by the context).

        Returns a `RiemannDistribution` (regression) or `CategoricalDistribution`
        (classification) with batch shape [q] (or [batch, q]).
        """
        x_context, y_context, x_query, batched = self._check_inputs(x_context, y_context, x_query)
        if self.is_classifier:
            self._check_labels(y_context)
        normalizer = (
            Normalizer.fit(x_context, y_context, self.prior, standardize_y=not self.is_classifier)
            if normalize
            else Normalizer.identity(x_context)
        )
        if self.config.data.standardize_y and not normalize:
            # Part of the model itself (it was trained on targets standardised by each context),
            # so it applies even to data that are already in the prior's units.
            normalizer.y_loc, normalizer.y_scale = context_standardization(y_context)
        device = self.device
        x_context, x_query = normalizer.x(x_context).float().to(device), normalizer.x(x_query).float().to(device)
        y_context = normalizer.y(y_context).float().to(device)
        # On a CPU, a pass over many datasets at once spills its activations out of the cache:
        # chunks of about CPU_CHUNK_TOKENS tokens ran 1.4x faster (lc model, 200 curves, one thread).
        tokens = 1 + x_context.shape[1] + x_query.shape[1]
        chunk = len(x_context) if device.type != "cpu" else max(1, CPU_CHUNK_TOKENS // tokens)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            logits = torch.cat(
                [
                    self.backbone(x_context[i : i + chunk], y_context[i : i + chunk], x_query[i : i + chunk])
                    for i in range(0, max(len(x_context), 1), chunk)  # an empty batch still gets its (empty) logits
                ]
            )
        distribution = self.head.distribution(logits)
        if not self.is_classifier:
            distribution = distribution.affine(normalizer.y_loc.to(device), normalizer.y_scale.to(device))
        return distribution if batched else distribution[0]

    def extrapolate(self, y_observed, horizon=None, epochs=None, lower=0.0, upper=1.0, minimize=False):
        """Learning-curve models only: forecast curves observed at epochs 1..n (see `pfn.curves.extrapolate`)."""
        from pfn.curves import extrapolate

        return extrapolate(self, y_observed, horizon, epochs, lower=lower, upper=upper, minimize=minimize)

    def predict_table(self, x_context, y_context, x_query, quantiles=(0.05, 0.5, 0.95)) -> dict[str, np.ndarray]:
        """Named numpy columns per query point: mean, standard deviation and quantiles for a
        regression model; the most probable label and each label's probability for a classifier."""
        return predictive_table(self.predict(x_context, y_context, x_query), quantiles)

    def __repr__(self) -> str:
        model = self.config.model
        outputs = f"classes={model.num_classes}" if self.is_classifier else f"buckets={model.num_buckets}"
        return (
            f"PFN(prior={self.config.prior.get('name')!r}, max_features={model.max_features}, "
            f"emsize={model.emsize}, nlayers={model.nlayers}, {outputs})"
        )


def predictive_table(
    distribution: RiemannDistribution | RiemannMixture | CategoricalDistribution,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    labels: Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Named numpy columns of a predictive distribution over query points [q]: mean, standard
    deviation and quantiles over a real target; the most probable label and each label's
    probability over labels (`labels`: the label of each class, default 0..C-1)."""
    if isinstance(distribution, CategoricalDistribution):
        labels = list(range(distribution.num_classes)) if labels is None else list(labels)
        columns = {"label": np.asarray(labels)[distribution.mode.cpu().numpy()]}
        probs = distribution.probs.cpu().numpy()
        names = [f"p{label:g}" if isinstance(label, (int, float, np.number)) else f"p{label}" for label in labels]
        columns.update({name: probs[..., index] for index, name in enumerate(names)})
        return columns
    table = {"mean": distribution.mean, "std": distribution.stddev}
    for level in quantiles:
        table[f"q{level:g}"] = distribution.icdf(torch.full(distribution.batch_shape, float(level)))
    return {name: column.cpu().numpy() for name, column in table.items()}


def load(name_or_path: str | Path, device: str | torch.device = "cpu", precision: str = "float32") -> PFN:
    """Load a shipped model by name (e.g. "gp") or a `.pfn` file by path.

    `precision="bfloat16"` runs the network's matrix products in bfloat16 (autocast; the output
    distribution stays float32): on a GPU, or a CPU with bfloat16 instructions (AVX512-BF16,
    AMX), predictions take about half the time. On the shipped `lc` model and 200 held-out
    curves it changed the mean log-likelihood by less than 0.002; on a CPU without such
    instructions it is slower.
    """
    return PFN.load(name_or_path, device, precision)
