"""Learning-curve extrapolation with an LC-PFN: a thin layer over `PFN.predict`.

A learning-curve model (prior "lc", see priors/lc.py) was trained on curves of T epochs
(its config's `data.num_points`) that increase and lie in [0, 1], seen by the model as
x = epoch / T. `extrapolate` maps a user's curve into that space with declared bounds (and a
flip for curves to minimise, such as a loss), calls `PFN.predict(..., normalize=False)` and
maps the predictive distribution back, so everything it returns is in the user's units:

    lc = pfn.load("lc")
    forecast = lc.extrapolate(validation_accuracy, horizon=100)
    forecast.quantiles([0.05, 0.5, 0.95])          # [3, future epochs]
    forecast.probability_final_beats(0.9)          # P(accuracy at epoch 100 > 0.9)
    forecast.plot()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pfn.distributions import RiemannDistribution
from pfn.predictor import _as_tensor

if TYPE_CHECKING:
    from pfn.predictor import PFN


@dataclass(frozen=True)
class CurveScale:
    """Maps a curve between the user's units and the prior's (increasing, in [0, 1]).

    `lower` and `upper` bound every value the curve can take (0 and 1 for an accuracy); with
    `minimize` the curve improves downwards (a loss) and is flipped, z = (upper - y) / (upper - lower).
    """

    lower: float = 0.0
    upper: float = 1.0
    minimize: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise ValueError(f"need finite bounds lower < upper, got lower={self.lower}, upper={self.upper}")

    def to_prior(self, y: torch.Tensor, name: str) -> torch.Tensor:
        outside = (y < self.lower) | (y > self.upper)
        if outside.any():
            value = y[outside][0].item()
            raise ValueError(
                f"{name} has a value {value:g} outside the declared bounds "
                f"[lower={self.lower:g}, upper={self.upper:g}]; pass bounds that contain every value the curve can take"
            )
        z = (y - self.lower) / (self.upper - self.lower)
        return 1 - z if self.minimize else z

    def from_prior(self, distribution: RiemannDistribution) -> RiemannDistribution:
        width = self.upper - self.lower
        if not self.minimize:
            return distribution.affine(self.lower, width)
        # y = upper - width * z reflects the distribution: buckets (and their tails) swap ends.
        return RiemannDistribution(distribution.logits.flip(-1), self.upper - width * distribution.borders.flip(-1))


@dataclass
class CurveForecast:
    """The predictive distribution of one curve's future (noisy) values, in the user's units."""

    observed: np.ndarray  # [n] the observed curve, epochs 1..n
    epochs: np.ndarray  # [q] the predicted epochs
    distribution: RiemannDistribution  # batch shape [q], one per predicted epoch
    minimize: bool = False

    def quantiles(self, levels: Sequence[float] = (0.05, 0.5, 0.95)) -> np.ndarray:
        """[len(levels), q] quantiles at each predicted epoch, e.g. the edges of a 90% band."""
        levels = torch.as_tensor(list(levels), dtype=torch.float64, device=self.distribution.logits.device)
        if levels.ndim != 1 or ((levels < 0) | (levels > 1)).any():
            raise ValueError(f"levels must be a list of probabilities in [0, 1], got {levels.tolist()}")
        values = self.distribution.icdf(levels[:, None].expand(-1, len(self.epochs)))
        return values.double().cpu().numpy()

    @property
    def median(self) -> np.ndarray:
        return self.distribution.median.double().cpu().numpy()

    def probability_final_beats(self, threshold: float) -> float:
        """P(the value at the last predicted epoch is better than `threshold`): above it, or
        below it for a curve to minimise. For early stopping: drop a run unlikely to beat the best."""
        below = self.distribution[-1].cdf(float(threshold)).item()
        return below if self.minimize else 1.0 - below

    def plot(self, ax: Any = None, levels: Sequence[float] = (0.05, 0.25), label: str | None = None) -> Any:
        """Observed curve, predictive median and central bands (5-95% and 25-75% by default) on
        matplotlib axes (the current ones by default); returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.gca()
        observed = ax.plot(np.arange(1, len(self.observed) + 1), self.observed, ".", label=label or "observed")
        color = observed[0].get_color()
        for level in sorted(levels):
            low, high = self.quantiles([level, 1 - level])
            ax.fill_between(self.epochs, low, high, color=color, alpha=0.15, lw=0, label=f"{1 - 2 * level:.0%} band")
        ax.plot(self.epochs, self.median, "-", color=color, label="predictive median")
        ax.set_xlabel("epoch")
        return ax


def trained_length(model: PFN) -> int:
    """T: the number of epochs of the curves the model was trained on."""
    return model.config.data.num_points


def _check_model(model: PFN) -> None:
    if model.prior_spec.get("name") != "lc" or model.is_classifier:
        raise ValueError(
            f"extrapolate needs a learning-curve model (prior 'lc'); this model's prior is "
            f"{model.prior_spec.get('name')!r}"
        )


def _as_curves(y_observed: Any) -> tuple[list[torch.Tensor], bool]:
    """The observed curves as 1-D float64 tensors, and whether a batch was given."""
    if hasattr(y_observed, "to_numpy"):  # pandas
        y_observed = y_observed.to_numpy()
    if isinstance(y_observed, (list, tuple)) and y_observed and np.ndim(y_observed[0]) >= 1:
        curves = [_as_tensor(f"y_observed[{i}]", curve) for i, curve in enumerate(y_observed)]
        batched = True
    else:
        tensor = _as_tensor("y_observed", y_observed)
        if tensor.ndim not in (1, 2):
            raise ValueError(f"y_observed must be one curve [n] or a batch [b, n], got shape {tuple(tensor.shape)}")
        batched = tensor.ndim == 2
        curves = list(tensor) if batched else [tensor]
    for i, curve in enumerate(curves):
        name = f"y_observed[{i}]" if batched else "y_observed"
        if curve.ndim != 1:
            raise ValueError(f"{name} must be a 1-D curve, got shape {tuple(curve.shape)}")
        if len(curve) == 0:
            raise ValueError(f"{name} is empty: need at least one observed epoch")
    if not curves:
        raise ValueError("y_observed is an empty batch: need at least one curve")
    return curves, batched


def _query_epochs(horizon: int | None, epochs: Any, num_observed: int, length: int, name: str) -> torch.Tensor:
    """The epochs to predict for a curve observed at epochs 1..num_observed."""
    if epochs is not None:
        if horizon is not None:
            raise ValueError("pass either horizon or epochs, not both")
        query = _as_tensor("epochs", epochs)
        if query.ndim != 1 or len(query) == 0:
            raise ValueError(f"epochs must be a non-empty 1-D list of epoch numbers, got shape {tuple(query.shape)}")
        if query.min() <= num_observed or query.max() > length:
            raise ValueError(
                f"epochs must lie after the observed epochs 1..{num_observed} of {name} and at most at the "
                f"model's trained curve length of {length} epochs, got epochs in [{query.min():g}, {query.max():g}]"
            )
        return query
    horizon = length if horizon is None else horizon
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
        raise ValueError(f"horizon must be an integer epoch, got {horizon!r}")
    if horizon <= num_observed:
        raise ValueError(
            f"horizon ({horizon}) must be later than the last observed epoch of {name} ({num_observed}): "
            "nothing to predict"
        )
    if horizon > length:
        raise ValueError(f"horizon ({horizon}) exceeds the model's trained curve length of {length} epochs")
    return torch.arange(num_observed + 1, horizon + 1, dtype=torch.float64)


def predict_in_prior_units(model: PFN, y_observed: torch.Tensor, epochs: torch.Tensor) -> RiemannDistribution:
    """The forward pass under `extrapolate`, for curves already in the prior's units (increasing,
    around [0, 1]; e.g. samples from the prior, noise and all): y_observed [b, n] at epochs 1..n,
    predictions [b, q] at `epochs` [q]. No bounds are checked; `extrapolate` is the user's entry."""
    length = trained_length(model)
    batch, num_observed = y_observed.shape
    x_context = (torch.arange(1, num_observed + 1, dtype=torch.float64) / length).expand(batch, -1)
    x_query = (epochs.double() / length).expand(batch, -1)
    return model.predict(x_context[..., None], y_observed, x_query[..., None], normalize=False)


def extrapolate(
    model: PFN,
    y_observed: Any,
    horizon: int | None = None,
    epochs: Any = None,
    lower: float = 0.0,
    upper: float = 1.0,
    minimize: bool = False,
) -> CurveForecast | list[CurveForecast]:
    """Predict the future of learning curves observed at epochs 1..n.

    Args:
        model: a learning-curve PFN (`pfn.load("lc")`).
        y_observed: one curve [n], or a batch: a [b, n] array or a list of curves of different
            lengths. n must be below the model's trained curve length T.
        horizon: predict epochs n+1..horizon (default T).
        epochs: explicit epochs to predict instead (each in n+1..T; shared by a batch).
        lower, upper: bounds of every value the curve can take (default [0, 1], an accuracy).
        minimize: the curve improves downwards (e.g. a loss).

    Returns a `CurveForecast` per curve (a list for a batch). Curves of equal length share one
    forward pass.
    """
    _check_model(model)
    scale = CurveScale(float(lower), float(upper), bool(minimize))
    curves, batched = _as_curves(y_observed)
    length = trained_length(model)
    max_observed = model.config.data.longest_context
    names = [f"y_observed[{i}]" if batched else "y_observed" for i in range(len(curves))]
    for name, curve in zip(names, curves, strict=True):
        if len(curve) > max_observed:
            raise ValueError(
                f"{name} has {len(curve)} epochs, but this model was trained on curves of {length} epochs "
                f"and extrapolates from at most {max_observed} observed epochs"
            )
    in_prior_units = [scale.to_prior(curve, name) for curve, name in zip(curves, names, strict=True)]
    by_length: dict[int, list[int]] = {}
    for i, curve in enumerate(curves):
        by_length.setdefault(len(curve), []).append(i)
    queries = {n: _query_epochs(horizon, epochs, n, length, names[members[0]]) for n, members in by_length.items()}

    forecasts: list[CurveForecast | None] = [None] * len(curves)
    for num_observed, members in by_length.items():
        query = queries[num_observed]
        y_context = torch.stack([in_prior_units[i] for i in members])
        distribution = scale.from_prior(predict_in_prior_units(model, y_context, query))
        for row, i in enumerate(members):
            forecasts[i] = CurveForecast(curves[i].numpy(), query.numpy(), distribution[row], scale.minimize)
    return forecasts if batched else forecasts[0]
