"""MCMC baselines in NumPyro: the BNN prior and the GP-with-hyperpriors prior, sampled with NUTS.

Each model below is the generative model of a prior in `priors/`, restated in NumPyro so that
NUTS targets exactly the posterior a PFN trained on that prior approximates:

- `bnn_model`: `priors.bnn.BNNPrior`, with the same padded, non-centred parametrisation (raw
  standard-normal weights at the largest size; depth, width and activation pick the part in
  use). Depth, width and activation are discrete, so NUTS moves the weights and scales while a
  Gibbs step (`DiscreteHMCGibbs`) redraws each discrete site from its exact conditional.
- `gp_model`: `priors.gp.GPPrior` with hyperpriors: lengthscale, outputscale and noise drawn
  from their hyperpriors, y from the GP marginal likelihood (the same Cholesky jitter as the
  prior's sampler).

`NUTSBaseline` compiles one sampler per (model, budget, dataset shape) and reuses it for every
dataset of that shape; its `predictive_log_prob` turns the samples into the predictive
log-density of query points, log-mean-exp over samples.

NumPyro and JAX are an optional extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

if "jax" not in sys.modules:
    # One thread per XLA computation: the matrices are small, and threads only add overhead.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    # The baseline is NUTS on one CPU thread, also where JAX could take a GPU (the PFN's, under
    # `pfn bench --device cuda`); JAX_PLATFORMS set by the caller wins.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.infer import NUTS, DiscreteHMCGibbs

from priors.bnn import GAINS, BNNPrior
from priors.gp import GPPrior
from priors.hyperpriors import Hyperparameter

jax.config.update("jax_enable_x64", True)  # GP Cholesky factors need float64, as in priors/gp.py


def hyperprior_site(name: str, value: Hyperparameter) -> jnp.ndarray | float:
    """A NumPyro sample site for a hyperprior mapping (see priors.hyperpriors), or the fixed number."""
    if isinstance(value, (int, float)):
        return float(value)
    kind = value["distribution"]
    if kind == "gamma":
        distribution = dist.Gamma(value["concentration"], value["rate"])
    elif kind == "uniform":
        distribution = dist.Uniform(value["low"], value["high"])
    elif kind == "lognormal":
        distribution = dist.LogNormal(value["loc"], value["scale"])
    else:
        raise ValueError(f"{name}: unknown hyperprior distribution {kind!r}")
    return numpyro.sample(name, distribution)


def discrete_uniform_site(name: str, low: int, high: int) -> jnp.ndarray | int:
    """An integer uniform on low..high (a Categorical site for the Gibbs step), or low if fixed."""
    if low == high:
        return low
    return low + numpyro.sample(name, dist.Categorical(probs=jnp.full(high - low + 1, 1.0 / (high - low + 1))))


# ----------------------------------------------------------------------------- BNN


def bnn_function(prior: BNNPrior, sites: dict[str, Any], x: jnp.ndarray) -> jnp.ndarray:
    """f(x) of the network whose raw weights and architecture are in `sites`: x [n, F] -> [n].

    The same computation as `BNNPrior.forward`, for one dataset.
    """
    depth, width, activation = sites["depth"], sites["width"], sites["activation"]
    in_use = (jnp.arange(prior.max_width) < width).astype(x.dtype)
    gain = jnp.array([GAINS[a] for a in prior.activations])[activation]
    is_relu = jnp.array([a == "relu" for a in prior.activations])[activation]
    h = math.sqrt(12.0) * (x - 0.5)
    for layer in range(prior.max_depth):
        fan_in = x.shape[-1] if layer == 0 else width
        pre = gain * sites["weight_scale"] / jnp.sqrt(fan_in) * (h @ sites[f"w{layer}"])
        pre = pre + sites["bias_scale"] * sites[f"b{layer}"]
        out = jnp.where(is_relu, jax.nn.relu(pre), jnp.tanh(pre)) * in_use
        h = out if layer == 0 else jnp.where(layer < depth, out, h)
    return h @ (sites["readout"] * in_use) / jnp.sqrt(width)


def bnn_model(prior: BNNPrior, x: jnp.ndarray, y: jnp.ndarray | None = None, mask: jnp.ndarray | None = None) -> None:
    """The BNN prior's generative model for one dataset: x [n, F], y [n]; points with mask 0 are padding."""
    width_max, num_features = prior.max_width, x.shape[-1]
    sites: dict[str, Any] = {
        "depth": discrete_uniform_site("depth", prior.min_depth, prior.max_depth),
        "width": discrete_uniform_site("width", prior.min_width, prior.max_width),
        "activation": discrete_uniform_site("activation", 0, len(prior.activations) - 1),
        "weight_scale": hyperprior_site("weight_scale", prior.weight_scale),
        "bias_scale": hyperprior_site("bias_scale", prior.bias_scale),
    }
    noise_std = hyperprior_site("noise_std", prior.noise_std)
    standard = dist.Normal(0.0, 1.0)
    for layer in range(prior.max_depth):
        fan_in = num_features if layer == 0 else width_max
        sites[f"w{layer}"] = numpyro.sample(f"w{layer}", standard.expand([fan_in, width_max]).to_event(2))
        sites[f"b{layer}"] = numpyro.sample(f"b{layer}", standard.expand([width_max]).to_event(1))
    sites["readout"] = numpyro.sample("readout", standard.expand([width_max]).to_event(1))
    f = bnn_function(prior, sites, x)
    likelihood = dist.Normal(f, noise_std)
    likelihood = likelihood if mask is None else likelihood.mask(mask.astype(bool))
    numpyro.sample("y", likelihood.to_event(1), obs=y)


def bnn_predictive_normal(
    prior: BNNPrior, sample: dict[str, jnp.ndarray], x_query: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and standard deviation of y at each query point given one posterior sample: [q], [q]."""
    sites = _with_fixed_sites(prior, sample)
    f = bnn_function(prior, sites, x_query)
    return f, jnp.broadcast_to(sites["noise_std"], f.shape)


def _with_fixed_sites(prior: BNNPrior, sample: dict[str, jnp.ndarray]) -> dict[str, Any]:
    """A sample's sites, with the fixed (not sampled) hyperparameters filled in as values."""
    sites = dict(sample)
    for name, low, high in (
        ("depth", prior.min_depth, prior.max_depth),
        ("width", prior.min_width, prior.max_width),
        ("activation", 0, len(prior.activations) - 1),
    ):
        sites[name] = low + sample[name] if low != high else low
    for name in ("weight_scale", "bias_scale", "noise_std"):
        value = getattr(prior, name)
        if isinstance(value, (int, float)):
            sites[name] = float(value)
    return sites


# ----------------------------------------------------------------------------- GP


def gp_kernel(kind: str, x1: jnp.ndarray, x2: jnp.ndarray, lengthscale: jnp.ndarray) -> jnp.ndarray:
    """Unit-outputscale kernel matrix [n1, n2], the same formulas as GPyTorch's kernels."""
    diff = (x1[:, None, :] - x2[None, :, :]) / lengthscale
    squared = jnp.sum(diff**2, -1)
    if kind == "rbf":
        return jnp.exp(-0.5 * squared)
    r = jnp.sqrt(jnp.maximum(squared, 1e-30))
    if kind == "matern12":
        return jnp.exp(-r)
    if kind == "matern32":
        return (1 + math.sqrt(3) * r) * jnp.exp(-math.sqrt(3) * r)
    if kind == "matern52":
        return (1 + math.sqrt(5) * r + 5.0 / 3.0 * squared) * jnp.exp(-math.sqrt(5) * r)
    raise ValueError(f"unknown kernel {kind!r}")


def _gp_diagonal(prior: GPPrior, outputscale: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    # The prior's sampler adds jitter * (mean diagonal of the noiseless kernel) = jitter * outputscale.
    return noise + prior.jitter * outputscale


@jax.custom_vjp
def gp_log_marginal_likelihood(covariance: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """log N(y | 0, covariance), with a hand-written gradient.

    JAX differentiates a Cholesky factorisation through many small triangular solves, which on
    a CPU is about 20x slower than the closed form d/dK = (alpha alpha^T - K^-1) / 2 used here.
    """
    return _gp_lml_forward(covariance, y)[0]


def _gp_lml_forward(covariance: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    factor = jnp.linalg.cholesky(covariance)
    alpha = jax.scipy.linalg.cho_solve((factor, True), y)
    value = -0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diagonal(factor))) - 0.5 * y.shape[0] * math.log(2 * math.pi)
    return value, (factor, alpha)


def _gp_lml_backward(residuals: tuple[jnp.ndarray, ...], grad: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    factor, alpha = residuals
    inverse = jax.scipy.linalg.cho_solve((factor, True), jnp.eye(factor.shape[0]))
    return grad * 0.5 * (jnp.outer(alpha, alpha) - inverse), -grad * alpha


gp_log_marginal_likelihood.defvjp(_gp_lml_forward, _gp_lml_backward)


def gp_model(prior: GPPrior, x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray | None = None) -> None:
    """The GP prior's model for one observed dataset, with f integrated out: x [n, F], y [n].

    Padding points (mask 0, y 0) get unit variance and no covariance with the rest, so each adds
    the same constant to the log-likelihood and changes nothing else.
    """
    lengthscale = hyperprior_site("lengthscale", prior.lengthscale)
    outputscale = hyperprior_site("outputscale", prior.outputscale)
    noise = hyperprior_site("noise", prior.noise)
    covariance = outputscale * gp_kernel(prior.kernel_name, x, x, lengthscale)
    covariance = covariance + _gp_diagonal(prior, outputscale, noise) * jnp.eye(x.shape[0])
    if mask is not None:
        covariance = jnp.where(jnp.outer(mask, mask) > 0, covariance, 0.0) + jnp.diag(1.0 - mask)
    numpyro.factor("y", gp_log_marginal_likelihood(covariance, y))


def gp_predictive_normal(
    prior: GPPrior,
    hyperparameters: dict[str, jnp.ndarray],
    x_context: jnp.ndarray,
    y_context: jnp.ndarray,
    x_query: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and standard deviation of y at each query point given one set of hyperparameters."""
    lengthscale, outputscale, noise = (
        hyperparameters.get(name, getattr(prior, name)) for name in ("lengthscale", "outputscale", "noise")
    )
    diagonal = _gp_diagonal(prior, outputscale, noise)
    k_cc = outputscale * gp_kernel(prior.kernel_name, x_context, x_context, lengthscale)
    factor = jnp.linalg.cholesky(k_cc + diagonal * jnp.eye(x_context.shape[0]))
    k_qc = outputscale * gp_kernel(prior.kernel_name, x_query, x_context, lengthscale)
    solved = jax.scipy.linalg.solve_triangular(factor, k_qc.T, lower=True)  # [c, q]
    alpha = jax.scipy.linalg.solve_triangular(factor, y_context, lower=True)
    mean = solved.T @ alpha
    variance = outputscale + diagonal - jnp.sum(solved**2, 0)
    return mean, jnp.sqrt(jnp.maximum(variance, 1e-12))


def _log_mean_exp(log_probs: jnp.ndarray) -> jnp.ndarray:
    """[samples, q] -> [q]: the log of the mean of the densities over samples."""
    return logsumexp(log_probs, axis=0) - math.log(log_probs.shape[0])


# ----------------------------------------------------------------------------- sampler


@dataclass
class NUTSBaseline:
    """NUTS for one prior at one budget, compiled once per dataset shape and reused.

    `budget` is the number of iterations per chain, half warm-up (step size and diagonal mass
    matrix adaptation) and half kept; `num_chains` chains run vectorised in one program.
    `pad_to` pads every context to that many points, so that one compiled sampler serves all
    context sizes up to it.
    """

    prior: BNNPrior | GPPrior
    budget: int
    num_chains: int = 1
    max_tree_depth: int = 8
    pad_to: int | None = None
    compile_seconds: float = 0.0  # total spent compiling samplers and predictive functions
    _samplers: dict[tuple[int, ...], Callable] = field(default_factory=dict, repr=False)
    _predictive: dict[str, Callable] = field(default_factory=dict, repr=False)
    _scored_shapes: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.budget < 2:
            raise ValueError(f"budget must be at least 2 (warm-up + samples), got {self.budget}")
        if isinstance(self.prior, BNNPrior):
            self.model = bnn_model
        elif isinstance(self.prior, GPPrior):
            self.model = gp_model
        else:
            raise ValueError(f"no NumPyro model for prior {type(self.prior).__name__}; supported: bnn, gp")

    @property
    def name(self) -> str:
        return f"nuts-{self.budget}"

    def _sampler(self, shape: tuple[int, ...]) -> Callable:
        """A compiled function (key, x, y, mask) -> samples for datasets of this shape; built once.

        NumPyro's `MCMC.run` recompiles its sampling loop on every call when a Gibbs step is
        involved, so the loop is written here: init, then `budget` kernel steps in one `lax.scan`
        (the first half adapt the step size and mass matrix), chains `vmap`-ed, all in one `jit`.
        """
        if shape not in self._samplers:
            model = partial(self.model, self.prior)
            inner = NUTS(model, max_tree_depth=self.max_tree_depth, target_accept_prob=0.8)
            # Only the BNN has discrete sites; a Gibbs step draws them from their exact conditional.
            kernel = DiscreteHMCGibbs(inner) if _has_discrete_sites(self.prior) else inner
            num_warmup = self.budget // 2

            def one_chain(key: jax.Array, x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
                args = (x, y, mask)
                state = kernel.init(key, num_warmup, None, model_args=args, model_kwargs={})
                constrain = kernel.postprocess_fn(args, {})

                def step(state, _):
                    state = kernel.sample(state, model_args=args, model_kwargs={})
                    return state, state.z

                _, trajectory = jax.lax.scan(step, state, None, length=self.budget)
                kept = jax.tree.map(lambda t: t[num_warmup:], trajectory)
                return jax.vmap(constrain)(kept)

            def run(key: jax.Array, x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
                keys = jax.random.split(key, self.num_chains)
                samples = jax.vmap(one_chain, in_axes=(0, None, None, None))(keys, x, y, mask)
                return jax.tree.map(lambda t: t.reshape(-1, *t.shape[2:]), samples)  # chains stacked

            # Compiled ahead of time, so that compiling is timed apart from sampling.
            start = time.perf_counter()
            key, x, y = jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(shape[0])
            self._samplers[shape] = jax.jit(run).lower(key, x, y, y).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._samplers[shape]

    def sample(self, x_context: np.ndarray, y_context: np.ndarray, seed: int) -> dict[str, jnp.ndarray]:
        """Posterior samples given one dataset (x [c, F], y [c]), chains stacked: {site: [S, ...]}.

        With `pad_to`, contexts are padded to that many points (masked out of the likelihood), so
        one compiled sampler serves every context size up to it.
        """
        n, num_features = x_context.shape
        size = max(n, self.pad_to or 0)
        x = np.full((size, num_features), 0.5)
        y, mask = np.zeros(size), np.zeros(size)
        x[:n], y[:n], mask[:n] = x_context, y_context, 1.0
        run = self._sampler(x.shape)
        return jax.block_until_ready(
            run(jax.random.PRNGKey(seed), *(jnp.asarray(a, jnp.float64) for a in (x, y, mask)))
        )

    def _predictive_normal(self, sample, x_context, y_context, x_query) -> tuple[jnp.ndarray, jnp.ndarray]:
        if isinstance(self.prior, BNNPrior):
            return bnn_predictive_normal(self.prior, sample, x_query)
        return gp_predictive_normal(self.prior, sample, x_context, y_context, x_query)

    def predictive_normals(
        self, samples: dict[str, jnp.ndarray], x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per posterior sample, the Normal predictive of y at each query point: means, stds [S, q].

        The posterior predictive is their equal-weight mixture.
        """
        args = [jnp.asarray(a, jnp.float64) for a in (x_context, y_context, x_query)]
        means, stds = jax.vmap(lambda sample: self._predictive_normal(sample, *args))(samples)
        return np.asarray(means), np.asarray(stds)

    def predictive_log_prob(
        self,
        samples: dict[str, jnp.ndarray],
        x_context: np.ndarray,
        y_context: np.ndarray,
        x_query: np.ndarray,
        y_query: np.ndarray,
    ) -> np.ndarray:
        """log p(y_q | x_q, D) per query point, log-mean-exp over the samples: [q]."""
        if "log_prob" not in self._predictive:

            def log_prob(samples, x_context, y_context, x_query, y_query):
                normal = jax.vmap(lambda s: self._predictive_normal(s, x_context, y_context, x_query))(samples)
                return _log_mean_exp(dist.Normal(*normal).log_prob(y_query))

            self._predictive["log_prob"] = jax.jit(log_prob)
        args = [jnp.asarray(a, jnp.float64) for a in (x_context, y_context, x_query, y_query)]
        return np.asarray(self._predictive["log_prob"](samples, *args))

    def fit_predict(
        self,
        x_context: np.ndarray,
        y_context: np.ndarray,
        x_query: np.ndarray,
        y_query: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, float]:
        """Sample, then score the queries: (log p per query point [q], seconds taken, compiling excluded)."""
        sampler = self._sampler((max(len(x_context), self.pad_to or 0), x_context.shape[1]))
        shapes = (x_context.shape, x_query.shape)
        if shapes not in self._scored_shapes:  # compile the scoring function for these shapes first
            start = time.perf_counter()
            placeholder = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sampler.out_info)
            self.predictive_log_prob(placeholder, x_context, y_context, x_query, y_query)
            self._scored_shapes.add(shapes)
            self.compile_seconds += time.perf_counter() - start
        start = time.perf_counter()
        samples = self.sample(x_context, y_context, seed)
        log_prob = self.predictive_log_prob(samples, x_context, y_context, x_query, y_query)
        return log_prob, time.perf_counter() - start


def _has_discrete_sites(prior: BNNPrior | GPPrior) -> bool:
    return isinstance(prior, BNNPrior) and (
        prior.min_depth < prior.max_depth or prior.min_width < prior.max_width or len(prior.activations) > 1
    )
