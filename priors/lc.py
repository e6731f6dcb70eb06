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


# The other families of Domhan et al. (2015), Table 1 (LC-PFN uses only the three above).


def vapor_pressure(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """exp(a + b / t + c ln t)."""
    return torch.exp(a + b / t + c * torch.log(t))


def loglog_linear(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ln(a ln t + b)."""
    return torch.log(a * torch.log(t) + b)


def hill3(t: torch.Tensor, y_max: torch.Tensor, eta: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """y_max t^eta / (kappa^eta + t^eta): a Hill curve, half of y_max at t = kappa."""
    return y_max * t**eta / (kappa**eta + t**eta)


def log_power(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a / (1 + (t / e^b)^c): increasing towards a for c < 0."""
    return a / (1 + (t / torch.exp(b)) ** c)


def pow4(t: torch.Tensor, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """c - (a t + b)^-alpha."""
    return c - (a * t + b) ** (-alpha)


def mmf(
    t: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, kappa: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """alpha - (alpha - beta) / (1 + (kappa t)^delta): Morgan-Mercer-Flodin, from beta towards alpha."""
    return alpha - (alpha - beta) / (1 + (kappa * t) ** delta)


def exp4(t: torch.Tensor, c: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c - exp(-a t^alpha + b)."""
    return c - torch.exp(-a * t**alpha + b)


def weibull(
    t: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, kappa: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """alpha - (alpha - beta) exp(-(kappa t)^delta): from beta towards alpha."""
    return alpha - (alpha - beta) * torch.exp(-((kappa * t) ** delta))


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
    # LC-PFN's families and its "peaked" parameter priors.
    "pow3": CurveFamily(pow3, {"c": Uniform(0.0, 1.25), "a": Uniform(-0.6, 0.6), "alpha": LogNormal(0.0, 2.0)}),
    "ilog2": CurveFamily(ilog2, {"c": Uniform(0.0, 1.0), "a": Uniform(-0.5, 0.5)}),
    "janoschek": CurveFamily(
        janoschek,
        {"a": Uniform(0.0, 1.0), "beta": Uniform(0.0, 2.0), "k": LogNormal(-2.0, 1.0), "delta": LogNormal(0.0, 0.5)},
    ),
    # Domhan et al.'s other families. Neither paper gives priors for them; ours are chosen in the
    # same spirit (asymptotes and start values in [0, 1], rates log-normal) so that alone, over
    # 100 epochs, 30-100% of draws pass the constraints, with a median rise of 0.2-0.35 that is
    # half done within 2-9 epochs (the median of the LC-PFN families: 2-5 epochs).
    "vap": CurveFamily(vapor_pressure, {"a": Uniform(-1.5, 0.0), "b": Uniform(-1.5, 0.0), "c": Uniform(-0.1, 0.1)}),
    "loglog_linear": CurveFamily(loglog_linear, {"a": LogNormal(-2.0, 1.0), "b": Uniform(1.0, math.e)}),
    "hill3": CurveFamily(hill3, {"y_max": Uniform(0.0, 1.0), "eta": LogNormal(0.0, 0.5), "kappa": LogNormal(1.5, 1.0)}),
    "log_power": CurveFamily(log_power, {"a": Uniform(0.0, 1.0), "b": Uniform(0.0, 4.0), "c": Uniform(-2.0, 0.0)}),
    "pow4": CurveFamily(
        pow4,
        {"c": Uniform(0.0, 1.25), "a": LogNormal(-1.0, 1.0), "b": LogNormal(0.0, 1.0), "alpha": LogNormal(-0.5, 1.0)},
    ),
    "mmf": CurveFamily(
        mmf,
        {
            "alpha": Uniform(0.0, 1.0),
            "beta": Uniform(0.0, 1.0),
            "kappa": LogNormal(-2.0, 1.0),
            "delta": LogNormal(0.0, 0.5),
        },
    ),
    "exp4": CurveFamily(
        exp4, {"c": Uniform(0.0, 1.0), "a": LogNormal(-2.0, 1.0), "alpha": LogNormal(0.0, 0.5), "b": Uniform(-2.0, 0.0)}
    ),
    "weibull": CurveFamily(
        weibull,
        {
            "alpha": Uniform(0.0, 1.0),
            "beta": Uniform(0.0, 1.0),
            "kappa": LogNormal(-2.5, 1.0),
            "delta": LogNormal(0.0, 0.5),
        },
    ),
}
LC_PFN_FAMILIES = ("pow3", "ilog2", "janoschek")
WEIGHT_PRIOR = Uniform(0.0, 1.0)
DEFAULT_NOISE_STD = {"distribution": "lognormal", "loc": -4.0, "scale": 1.0}  # log sigma ~ N(-4, 1)


class CurveModel:
    """A weighted sum of curve families over a flat parameter vector.

    The vector holds, per family in order, its weight then its parameters
    (`parameter_names` spells them out, e.g. "pow3.weight", "pow3.c", ...). Everything is
    batched over leading rows: `theta` is [n, num_parameters]. With `normalize_weights` the
    curve divides by the sum of the weights (a weighted mean of the families, which stays in
    [0, 1] however many families are summed); LC-PFN does not normalise.
    """

    def __init__(self, families: Sequence[str] = LC_PFN_FAMILIES, normalize_weights: bool = False) -> None:
        families = list(families)
        if not families:
            raise ValueError("families must name at least one curve family")
        for name in families:
            if name not in FAMILIES:
                raise ValueError(f"unknown curve family {name!r}; known: {', '.join(FAMILIES)}")
        if len(set(families)) != len(families):
            raise ValueError(f"families must not repeat a family, got {families}")
        self.families = families
        self.normalize_weights = normalize_weights
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
        total, total_weight = 0.0, 0.0
        column = 0
        for name in self.families:
            family = FAMILIES[name]
            weight = theta[..., column, None]
            parameters = theta[..., column + 1 : column + 1 + len(family.parameters), None].unbind(-2)
            total = total + weight * family.formula(epochs, *parameters)
            total_weight = total_weight + weight
            column += 1 + len(family.parameters)
        return total / total_weight if self.normalize_weights else total

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
        families: curve families to sum: LC-PFN's "pow3", "ilog2", "janoschek" (the default)
            and any of Domhan et al.'s others, "vap", "loglog_linear", "hill3", "log_power",
            "pow4", "mmf", "exp4", "weibull" (see FAMILIES for their parameter priors).
        noise_std: standard deviation of the observation noise, a number or a hyperprior;
            by default log sigma ~ N(-4, 1).
        normalize_weights: divide each curve by the sum of its family weights. Unnormalised
            sums of many families mostly leave [0, 1] and are rejected (all eleven: about 1 draw
            in 750 passes, against 9 in 10 normalised).
    """

    # Candidates drawn per curve still needed, in each round of rejection: about 1 in 5 curves
    # of the default families passes the constraints, so most batches need a single round.
    oversample = 6
    max_rounds = 100

    def __init__(
        self,
        families: Sequence[str] = LC_PFN_FAMILIES,
        noise_std: Hyperparameter = DEFAULT_NOISE_STD,
        normalize_weights: bool = False,
    ) -> None:
        check_hyperparameter("noise_std", noise_std)
        if not isinstance(normalize_weights, bool):
            raise ValueError(f"normalize_weights must be true or false, got {normalize_weights!r}")
        families = list(families)
        noise_std = dict(noise_std) if isinstance(noise_std, dict) else noise_std
        self.model = CurveModel(families, normalize_weights)
        # normalize_weights joins the spec only when on, so the specs of earlier models (and the
        # benchmark caches keyed by them) stay as they were.
        super().__init__(
            families=families, noise_std=noise_std, **({"normalize_weights": True} if normalize_weights else {})
        )
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
