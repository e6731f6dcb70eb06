"""MCMC-PP (Domhan et al., 2015): the learning-curve prior's posterior sampled with emcee.

The generative model is the LC prior's own (`priors.lc.CurveModel`): curve parameters with
their priors, restricted to curves that increase from the first to the last of T epochs and stay
in [0, 1], and Gaussian observation noise with log sigma ~ N(loc, scale) (or a fixed sigma).
Given a curve observed at epochs 1..n, an affine-invariant ensemble sampler (emcee; 100 walkers,
2,500 steps, 500 burn-in, thinning 10, walkers started from prior draws that satisfy the
constraints) samples the parameters under a Gaussian likelihood of the observed prefix. The
posterior predictive at a future epoch is the equal-weight mixture over samples of
N(f_s(t), sigma_s^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Categorical, MixtureSameFamily, Normal

from priors.lc import LearningCurvePrior


@dataclass(frozen=True)
class MCMCSettings:
    """Domhan et al.'s budget by default."""

    walkers: int = 100
    steps: int = 2500
    burn_in: int = 500
    thin: int = 10


class LearningCurvePosterior:
    """Unnormalised log posterior of the walker vector (curve parameters, then log sigma unless
    sigma is fixed) given a curve observed at epochs 1..n; vectorised over walkers [w, d] -> [w]."""

    def __init__(self, prior: LearningCurvePrior, y_observed: torch.Tensor, length: int) -> None:
        noise = prior.noise_std
        if isinstance(noise, dict) and noise["distribution"] != "lognormal":
            raise ValueError(f"MCMC-PP supports a fixed or lognormal noise_std, got {noise}")
        self.model = prior.model
        self.noise = noise
        self.y = y_observed.double()
        self.epochs = torch.arange(1, length + 1, dtype=torch.float64)
        self.fixed_noise = not isinstance(noise, dict)
        self.dimension = self.model.num_parameters + (0 if self.fixed_noise else 1)

    def split(self, walkers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Curve parameters [w, p] and noise standard deviations [w]."""
        theta = walkers[:, : self.model.num_parameters]
        if self.fixed_noise:
            return theta, torch.full((len(walkers),), float(self.noise), dtype=torch.float64)
        return theta, walkers[:, -1].exp()

    def join(self, theta: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        return theta if self.fixed_noise else torch.cat([theta, noise_std.log()[:, None]], dim=-1)

    def __call__(self, walkers: np.ndarray) -> np.ndarray:
        walkers = torch.from_numpy(walkers)
        theta, noise_std = self.split(walkers)
        log_density = self.model.log_prior(theta)
        if not self.fixed_noise:  # log sigma ~ N(loc, scale), up to a constant
            log_density = log_density - 0.5 * ((walkers[:, -1] - self.noise["loc"]) / self.noise["scale"]) ** 2
        curves = self.model.curves(theta, self.epochs)
        valid = torch.isfinite(log_density) & self.model.satisfies_constraints(curves)
        observed = curves[:, : len(self.y)]
        # The Gaussian log-likelihood, written out: torch.distributions.Normal's checks cost more than the sum.
        residual = (self.y - observed) / noise_std[:, None]
        log_likelihood = -0.5 * (residual**2).sum(-1) - len(self.y) * (noise_std.log() + 0.5 * math.log(2 * math.pi))
        return torch.where(valid, log_density + log_likelihood, -math.inf).numpy()


@dataclass
class MCMCPosterior:
    """Posterior samples of one curve and the predictive mixture they define."""

    theta: torch.Tensor  # [S, p] curve parameters
    noise_std: torch.Tensor  # [S]
    acceptance: float  # mean acceptance fraction of the walkers
    posterior: LearningCurvePosterior

    def predictive(self, epochs: torch.Tensor) -> MixtureSameFamily:
        """The posterior predictive of the noisy value at each epoch: batch shape [len(epochs)]."""
        means = self.posterior.model.curves(self.theta, epochs.double()).T  # [q, S]
        components = Normal(means, self.noise_std.expand_as(means))
        return MixtureSameFamily(Categorical(logits=torch.zeros_like(means)), components)


def mixture_quantile(mixture: MixtureSameFamily, level: float, iterations: int = 30) -> torch.Tensor:
    """Quantiles of an equal-weight Gaussian mixture by bisection on its cdf (batched); 30 halvings
    shrink the bracket (about the curves' range) a billion times, far below any score's resolution."""
    means, stds = mixture.component_distribution.loc, mixture.component_distribution.scale
    low = (means - 10 * stds).amin(-1)
    high = (means + 10 * stds).amax(-1)
    for _ in range(iterations):
        middle = (low + high) / 2
        below = torch.special.ndtr((middle[..., None] - means) / stds).mean(-1) < level
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return (low + high) / 2


def sample_posterior(
    prior: LearningCurvePrior,
    y_observed: torch.Tensor,
    length: int,
    seed: int,
    settings: MCMCSettings = MCMCSettings(),  # noqa: B008
) -> MCMCPosterior:
    """Run emcee on one curve observed at epochs 1..n of a curve of `length` epochs."""
    import emcee  # optional: pip install -e ".[bench]"

    if settings.steps <= settings.burn_in:
        raise ValueError(f"steps ({settings.steps}) must exceed burn_in ({settings.burn_in})")
    posterior = LearningCurvePosterior(prior, y_observed, length)
    start = prior.draw(settings.walkers, length, torch.Generator().manual_seed(seed))
    initial = posterior.join(start.theta, start.noise_std).numpy()
    sampler = emcee.EnsembleSampler(settings.walkers, posterior.dimension, posterior, vectorize=True)
    sampler.random_state = np.random.RandomState(seed).get_state()
    sampler.run_mcmc(initial, settings.steps)
    chain = torch.from_numpy(sampler.get_chain(discard=settings.burn_in, thin=settings.thin, flat=True))
    theta, noise_std = posterior.split(chain)
    return MCMCPosterior(theta, noise_std, float(np.mean(sampler.acceptance_fraction)), posterior)
