"""Learning-curve prior of LC-PFN (Adriaensen et al., 2023): noisy parametric curves over epochs 1..T.

Each dataset is one learning curve. Its noiseless value at epoch t is a weighted sum of
parametric families (Domhan et al., 2015),

    f(t) = sum_k w_k f_k(t | theta_k),    w_k ~ U(0, 1) independently (not normalised),

with the "peaked" parameter priors below, and each epoch is observed with Gaussian noise,
y_t = f(t) + sigma * eps_t with log sigma ~ N(-4, 1). A curve is kept only if f increases from
the first to the last epoch and stays in [0, 1] at every epoch; rejection runs in batches on the
device (draw many candidates, keep those that pass, repeat until enough).

Model inputs: one feature, x = t / T, so x lies in (0, 1] and the last epoch is x = 1. The points
come in epoch order, so a training batch's first k points (the context) are the observed prefix
of the curve and the rest (the queries) are its future: exactly the extrapolation task. The
curve length T is the `num_points` asked of `sample`.

The family formulas, their parameter priors and the constraints live here once (`CurveModel`),
so the MCMC-PP baseline (pfn/baselines/mcmc_pp.py) samples the very same generative model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from priors.base import Prior, PriorBatch, register_prior
from priors.hyperpriors import Hyperparameter, check_hyperparameter, sample_hyperparameter

# --- the parametric families, as functions of the epoch t >= 1 -------------------------------


def pow3(t: torch.Tensor, c: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """c - a t^-alpha: a power law approaching c."""
    return c - a * t ** (-alpha)


def ilog2(t: torch.Tensor, c: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """c - a / ln(t + 1): a slow, logarithmic approach to c."""
    return c - a / torch.log(t + 1)


def janoschek(
    t: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, k: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """a - (a - beta) exp(-k t^delta): a sigmoid-like curve from beta towards a."""
    return a - (a - beta) * torch.exp(-k * t**delta)


# Parameter priors. Their fields may also be tuples (one value per column), which lets
# `CurveModel.log_prior` score all columns of one kind in a single vectorised call.


@dataclass(frozen=True)
class Uniform:
    low: float | tuple[float, ...]
    high: float | tuple[float, ...]

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        unit = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return self.low + (self.high - self.low) * unit

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        low, high = (torch.as_tensor(bound, dtype=value.dtype, device=value.device) for bound in (self.low, self.high))
        inside = (value >= low) & (value <= high)
        return torch.where(inside, -torch.log(high - low), -math.inf)


@dataclass(frozen=True)
class LogNormal:
    """log(value) ~ N(loc, scale^2)."""

    loc: float | tuple[float, ...]
    scale: float | tuple[float, ...]

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        normal = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return torch.exp(self.loc + self.scale * normal)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale = (torch.as_tensor(v, dtype=value.dtype, device=value.device) for v in (self.loc, self.scale))
        log_value = torch.log(value.clamp_min(1e-300))
        density = -0.5 * ((log_value - loc) / scale) ** 2 - torch.log(scale * math.sqrt(2 * math.pi)) - log_value
        return torch.where(value > 0, density, -math.inf)


@dataclass(frozen=True)
class CurveFamily:
    formula: Callable[..., torch.Tensor]  # formula(t, **parameters)
    parameters: dict[str, Uniform | LogNormal]  # prior of each parameter, in the formula's argument order


FAMILIES: dict[str, CurveFamily] = {
    "pow3": CurveFamily(pow3, {"c": Uniform(0.0, 1.25), "a": Uniform(-0.6, 0.6), "alpha": LogNormal(0.0, 2.0)}),
    "ilog2": CurveFamily(ilog2, {"c": Uniform(0.0, 1.0), "a": Uniform(-0.5, 0.5)}),
    "janoschek": CurveFamily(
        janoschek,
        {"a": Uniform(0.0, 1.0), "beta": Uniform(0.0, 2.0), "k": LogNormal(-2.0, 1.0), "delta": LogNormal(0.0, 0.5)},
    ),
}
WEIGHT_PRIOR = Uniform(0.0, 1.0)
DEFAULT_NOISE_STD = {"distribution": "lognormal", "loc": -4.0, "scale": 1.0}  # log sigma ~ N(-4, 1)


class CurveModel:
    """A weighted sum of curve families over a flat parameter vector.

    The vector holds, per family in order, its weight then its parameters
    (`parameter_names` spells them out, e.g. "pow3.weight", "pow3.c", ...). Everything is
    batched over leading rows: `theta` is [n, num_parameters].
    """

    def __init__(self, families: Sequence[str] = ("pow3", "ilog2", "janoschek")) -> None:
        families = list(families)
        if not families:
            raise ValueError("families must name at least one curve family")
        for name in families:
            if name not in FAMILIES:
                raise ValueError(f"unknown curve family {name!r}; known: {', '.join(FAMILIES)}")
        if len(set(families)) != len(families):
            raise ValueError(f"families must not repeat a family, got {families}")
        self.families = families
        self.parameter_names = [
            f"{name}.{parameter}" for name in families for parameter in ("weight", *FAMILIES[name].parameters)
        ]
        self.priors = [prior for name in families for prior in (WEIGHT_PRIOR, *FAMILIES[name].parameters.values())]
        # The columns of each kind of prior, stacked for `log_prior` (an MCMC calls it thousands of times).
        self._stacked: list[tuple[list[int], Uniform | LogNormal]] = []
        for kind in (Uniform, LogNormal):
            columns = [i for i, prior in enumerate(self.priors) if isinstance(prior, kind)]
            if columns:
                fields = zip(*(dataclasses.astuple(self.priors[i]) for i in columns), strict=True)
                self._stacked.append((columns, kind(*fields)))

    @property
    def num_parameters(self) -> int:
        return len(self.parameter_names)

    def sample_parameters(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """[n, num_parameters] draws from the parameter priors (no constraints applied)."""
        return torch.stack([prior.sample(n, generator, device) for prior in self.priors], dim=-1)

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """[n] log density of the parameter priors (without the constraints); -inf outside their support."""
        return sum(prior.log_prob(theta[..., columns]).sum(-1) for columns, prior in self._stacked)

    def curves(self, theta: torch.Tensor, epochs: torch.Tensor) -> torch.Tensor:
        """Noiseless curves [n, len(epochs)] at the given epochs (>= 1)."""
        total = 0.0
        column = 0
        for name in self.families:
            family = FAMILIES[name]
            weight = theta[..., column, None]
            parameters = theta[..., column + 1 : column + 1 + len(family.parameters), None].unbind(-2)
            total = total + weight * family.formula(epochs, *parameters)
            column += 1 + len(family.parameters)
        return total

    @staticmethod
    def satisfies_constraints(curves: torch.Tensor) -> torch.Tensor:
        """[n] whether each curve (over all T epochs) increases from first to last epoch and stays in [0, 1]."""
        inside = ((curves >= 0) & (curves <= 1)).all(-1)
        return inside & (curves[..., -1] > curves[..., 0])


@dataclass
class LearningCurves:
    """Curves drawn from the prior, with everything that generated them."""

    epochs: torch.Tensor  # [T] float64, 1..T
    theta: torch.Tensor  # [batch, num_parameters] curve parameters (see CurveModel.parameter_names)
    noise_std: torch.Tensor  # [batch] observation noise standard deviation sigma
    curves: torch.Tensor  # [batch, T] noiseless curves
    y: torch.Tensor  # [batch, T] noisy observations


@register_prior("lc")
class LearningCurvePrior(Prior):
    """Learning curves as LC-PFN defines them; one curve of T = num_points epochs per dataset.

    Args:
        families: curve families to sum, any of "pow3", "ilog2", "janoschek".
        noise_std: standard deviation of the observation noise, a number or a hyperprior;
            by default log sigma ~ N(-4, 1).
    """

    # Candidates drawn per curve still needed, in each round of rejection: about 1 in 5 curves
    # of the default families passes the constraints, so most batches need a single round.
    oversample = 6
    max_rounds = 100

    def __init__(
        self,
        families: Sequence[str] = ("pow3", "ilog2", "janoschek"),
        noise_std: Hyperparameter = DEFAULT_NOISE_STD,
    ) -> None:
        check_hyperparameter("noise_std", noise_std)
        families = list(families)
        noise_std = dict(noise_std) if isinstance(noise_std, dict) else noise_std
        self.model = CurveModel(families)
        super().__init__(families=families, noise_std=noise_std)
        self.noise_std = noise_std

    def draw(
        self, batch_size: int, num_points: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> LearningCurves:
        """`batch_size` curves over epochs 1..num_points that satisfy the constraints, with their parameters."""
        if num_points < 2:
            raise ValueError(f"num_points (the curve length T) must be >= 2, got {num_points}")
        epochs = torch.arange(1, num_points + 1, device=device, dtype=torch.float64)
        kept: list[torch.Tensor] = []
        needed = batch_size
        for _ in range(self.max_rounds):
            if needed == 0:
                break
            candidates = self.model.sample_parameters(self.oversample * needed, generator, device)
            passed = candidates[self.model.satisfies_constraints(self.model.curves(candidates, epochs))][:needed]
            kept.append(passed)
            needed -= len(passed)
        if needed > 0:
            raise RuntimeError(
                f"only {batch_size - needed} of {batch_size} curves passed the constraints after "
                f"{self.max_rounds} rounds of rejection; the families {self.model.families} rarely "
                f"give increasing curves in [0, 1] over {num_points} epochs"
            )
        theta = torch.cat(kept)
        curves = self.model.curves(theta, epochs)
        noise_std = sample_hyperparameter(self.noise_std, batch_size, generator, device)
        noise = torch.randn(batch_size, num_points, generator=generator, device=device, dtype=torch.float64)
        return LearningCurves(epochs, theta, noise_std, curves, curves + noise_std[:, None] * noise)

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        if num_features != 1:
            raise ValueError(f"the learning-curve prior has one feature (the epoch), got num_features={num_features}")
        draw = self.draw(batch_size, num_points, generator, device)
        x = (draw.epochs / num_points).expand(batch_size, num_points)[..., None]
        return PriorBatch(x=x.float(), y=draw.y.float(), y_noiseless=draw.curves.float())
