"""Gaussian-process prior: f ~ GP(0, outputscale * k(x / lengthscale)), y = f + N(0, noise).

Kernels come from GPyTorch. Hyperparameters are fixed numbers or hyperpriors drawn per
dataset (see `priors.hyperpriors`). Sampling is batched on the device in float64 so that a
Cholesky factor of up to a few thousand points is stable with a small jitter.
"""

from __future__ import annotations

from collections.abc import Sequence

import gpytorch
import torch
from einops import rearrange

from priors.base import InputScaling, Prior, PriorBatch, register_prior
from priors.hyperpriors import Hyperparameter, check_hyperparameter, sample_hyperparameter

KERNELS = ("rbf", "matern12", "matern32", "matern52")


class _SelfCovariance:
    """Mixin for a GPyTorch kernel that is only ever evaluated as k(x, x), as the prior does.

    GPyTorch asks `torch.equal(x1, x2)` on every call, which makes the host wait for the GPU to
    finish all the work queued so far: a host-device synchronisation per training batch. Here
    the answer is known, and GPyTorch's own distance functions are told it.
    """

    def covar_dist(self, x1, x2, diag=False, last_dim_is_batch=False, square_dist=False, **params):
        if diag or last_dim_is_batch:
            return super().covar_dist(x1, x2, diag, last_dim_is_batch, square_dist, **params)
        distance = gpytorch.kernels.kernel.sq_dist if square_dist else gpytorch.kernels.kernel.dist
        return distance(x1, x2, x1_eq_x2=True)


class _RBFSelfCovariance(_SelfCovariance, gpytorch.kernels.RBFKernel):
    pass


class _MaternSelfCovariance(_SelfCovariance, gpytorch.kernels.MaternKernel):
    pass


def make_kernel(name: str, same_inputs: bool = False) -> gpytorch.kernels.Kernel:
    """A unit-lengthscale GPyTorch kernel; lengthscales are applied by scaling the inputs.
    `same_inputs`: the kernel is only ever called as k(x, x), which spares GPyTorch checking."""
    if name == "rbf":
        kernel = _RBFSelfCovariance() if same_inputs else gpytorch.kernels.RBFKernel()
    elif name in ("matern12", "matern32", "matern52"):
        matern = _MaternSelfCovariance if same_inputs else gpytorch.kernels.MaternKernel
        kernel = matern(nu={"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}[name])
    else:
        raise ValueError(f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}")
    kernel.lengthscale = 1.0
    kernel.requires_grad_(False)
    return kernel


def cholesky_cannot_fail(num_points: int, jitter: float, dtype: torch.dtype) -> bool:
    """Whether the Cholesky factorisation of K + jitter * I, for an n x n PSD K with unit diagonal,
    is certain to succeed in `dtype` arithmetic.

    Its smallest eigenvalue is at least `jitter`, and the factorisation succeeds once the
    smallest eigenvalue of the matrix scaled to unit diagonal exceeds about n (n + 1) u, u the unit
    roundoff (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Theorem 10.7); the
    factor 10 leaves room for the rounding errors of computing K itself. In float64 with the
    default jitter 1e-6 that holds up to ~30,000 points; in float32 never for useful sizes.
    """
    unit_roundoff = torch.finfo(dtype).eps / 2
    return jitter / (1 + jitter) > 10 * num_points * (num_points + 1) * unit_roundoff


def stable_cholesky(matrix: torch.Tensor, jitter: float, max_tries: int = 6, check: bool = True) -> torch.Tensor:
    """Cholesky factor of a batch of PSD matrices, adding growing jitter to those that fail.

    Checking for failures waits for the device (a host-device synchronisation); `check=False`
    skips it, for matrices where `cholesky_cannot_fail` says there is nothing to check. Should one
    fail anyway, its factor is NaN rather than the half-finished one LAPACK leaves, so that nothing
    downstream takes it for data.
    """
    eye = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # [batch]
    factor, info = torch.linalg.cholesky_ex(matrix + jitter * scale[:, None, None] * eye)
    if not check:
        return torch.where(rearrange(info == 0, "b -> b 1 1"), factor, torch.nan)
    for attempt in range(1, max_tries):
        failed = info > 0
        if not failed.any():
            return factor
        bigger = jitter * 10**attempt * scale[failed, None, None]
        factor[failed], info[failed] = torch.linalg.cholesky_ex(matrix[failed] + bigger * eye)
    if (info > 0).any():
        raise RuntimeError(
            f"Cholesky failed for {int((info > 0).sum())} datasets even with jitter {jitter * 10**max_tries}"
        )
    return factor


@register_prior("gp")
class GPPrior(Prior):
    """Gaussian-process regression datasets.

    Args:
        kernel: one of "rbf", "matern12", "matern32", "matern52".
        lengthscale, outputscale, noise: a number, or a hyperprior mapping drawn per dataset.
            `noise` is the variance of the Gaussian observation noise.
        x_range: inputs are uniform in [low, high]^features.
        jitter: relative diagonal jitter for the Cholesky factor of the noiseless kernel matrix.
    """

    def __init__(
        self,
        kernel: str = "rbf",
        lengthscale: Hyperparameter = 0.6,
        outputscale: Hyperparameter = 1.0,
        noise: Hyperparameter = 1e-4,
        x_range: Sequence[float] = (0.0, 1.0),
        jitter: float = 1e-6,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
        check_hyperparameter("lengthscale", lengthscale)
        check_hyperparameter("outputscale", outputscale)
        check_hyperparameter("noise", noise)
        if len(x_range) != 2 or not x_range[0] < x_range[1]:
            raise ValueError(f"x_range must be [low, high] with low < high, got {x_range!r}")
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            outputscale=outputscale,
            noise=noise,
            x_range=[float(x_range[0]), float(x_range[1])],
            jitter=jitter,
        )
        self.kernel_name = kernel
        self.lengthscale = lengthscale
        self.outputscale = outputscale
        self.noise = noise
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.jitter = jitter
        self._kernel = make_kernel(kernel, same_inputs=True)

    def input_scaling(self) -> InputScaling:
        low, high = self.x_range
        return InputScaling(kind="range", low=low, high=high)

    def output_scaling(
        self, x_context: torch.Tensor, y_context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With fixed hyperparameters: centre on the context's mean and scale so that the prior's
        own outputscale is the one that makes the context most likely under this kernel (lengthscale
        and noise-to-signal ratio fixed): y is divided by s, where s^2 = r' K^-1 r / (n - 1), the
        most likely factor on K, the prior's covariance of y, with r the centred context.
        Standardising by the context's standard deviation instead reads a smooth function seen over
        a small part of its range as a rougher, larger one: on datasets of the shipped `gp`'s own
        prior that cost it 1.3-1.5 nats/point from 10 points on, this 0.09 at 10 points and 0.01 at
        50 (benchmarks/results/units-2026-11-27.md).
        Under hyperpriors the outputscale is the data's to choose: None, the default."""
        if not self.has_fixed_hyperparameters:
            return None
        batch_size, num_context = y_context.shape
        loc = y_context.mean(1, keepdim=True)
        if num_context < 2:
            return loc, y_context.new_ones(batch_size, 1)
        x = x_context.double()
        lengthscale, outputscale, noise = self._fixed_hyperparameters(batch_size, x.device).values()
        factor = self._noisy_factor(
            self.covariance(x, lengthscale, outputscale), self.observation_noise(noise, outputscale)
        )
        residual = rearrange((y_context - loc).double(), "b n -> b n 1")
        whitened = torch.linalg.solve_triangular(factor, residual, upper=False)
        scale = (whitened.square().sum((1, 2)) / (num_context - 1)).sqrt()  # [b]
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return loc, rearrange(scale, "b -> b 1").to(y_context.dtype)

    def _fixed_hyperparameters(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The fixed lengthscale, outputscale and noise, each as [batch] float64 (in that order)."""
        return {
            name: torch.full((batch_size,), float(getattr(self, name)), dtype=torch.float64, device=device)
            for name in ("lengthscale", "outputscale", "noise")
        }

    @staticmethod
    def _noisy_factor(covariance: torch.Tensor, observation_noise: torch.Tensor) -> torch.Tensor:
        """Cholesky factor of the covariance of noisy targets: `covariance` [b, n, n] of the latent
        function plus `observation_noise` [b] on the diagonal. The noise keeps the smallest
        eigenvalue >= jitter * outputscale: no more jitter needed."""
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        return stable_cholesky(covariance + observation_noise[:, None, None] * eye, jitter=0.0, check=False)

    @property
    def has_fixed_hyperparameters(self) -> bool:
        return all(isinstance(v, (int, float)) for v in (self.lengthscale, self.outputscale, self.noise))

    def covariance(self, x: torch.Tensor, lengthscale: torch.Tensor, outputscale: torch.Tensor) -> torch.Tensor:
        """outputscale * k(x / lengthscale, x / lengthscale): [batch, n, n], noise-free."""
        kernel = self._kernel.to(device=x.device, dtype=x.dtype)
        scaled = x / rearrange(lengthscale, "b -> b 1 1")
        with torch.no_grad():
            k = kernel.forward(scaled, scaled)
        return rearrange(outputscale, "b -> b 1 1") * k

    def observation_noise(self, noise: torch.Tensor, outputscale: torch.Tensor) -> torch.Tensor:
        """The variance of what `sample` adds to the latent function at each point: the noise plus
        the jitter that keeps the factor of the noiseless covariance stable (`jitter * outputscale`,
        independent per point, as the kernels are stationary). Under the noise hyperprior most
        datasets draw a noise far below the jitter, so the jitter is what bounds the predictive's
        sharpness there."""
        return noise + self.jitter * outputscale

    def posterior_predictive(
        self,
        x_context: torch.Tensor,
        y_context: torch.Tensor,
        x_query: torch.Tensor,
        hyperparameters: dict[str, torch.Tensor] | None = None,
    ) -> torch.distributions.Normal:
        """The exact predictive of the noisy target at each query given the context and the
        hyperparameters, in float64: a Normal of batch shape [b, q].

        Shapes: x_context [b, n, f] (n may be 0), y_context [b, n], x_query [b, q, f].
        `hyperparameters`: name -> [b], the values each dataset was drawn with (`PriorBatch.
        hyperparameters`); needed under hyperpriors, where this is the predictive given them
        (the Bayes answer averages it over their posterior), and taken from the prior otherwise.
        With fixed hyperparameters, the same answer as the GPyTorch baseline
        `pfn.baselines.exact_gp.exact_gp_predictive`, but with no host-device synchronisation
        (GPyTorch checks its inputs and its Cholesky factor on the host), so that training with
        `train.exact_targets` can call it inside every GPU step.
        """
        batch_size, n = x_context.shape[:2]
        x = torch.cat([x_context, x_query], 1).double()
        if hyperparameters is None:
            if not self.has_fixed_hyperparameters:
                raise ValueError(
                    "the exact posterior predictive under hyperpriors needs the hyperparameters each dataset "
                    "was drawn with (PriorBatch.hyperparameters)"
                )
            hyperparameters = self._fixed_hyperparameters(batch_size, x.device)
        lengthscale, outputscale, noise = (
            hyperparameters[name].to(device=x.device, dtype=torch.float64)
            for name in ("lengthscale", "outputscale", "noise")
        )
        # The joint matrix, because the prior's kernel evaluates only k(x, x) (GPyTorch's k(x1, x2)
        # compares its inputs on the host); its query-query block goes unused.
        covariance = self.covariance(x, lengthscale, outputscale)  # [b, n+q, n+q]
        observation_noise = self.observation_noise(noise, outputscale)  # [b]
        factor = self._noisy_factor(covariance[:, :n, :n], observation_noise)
        whitened_cross = torch.linalg.solve_triangular(factor, covariance[:, :n, n:], upper=False)  # [b, n, q]
        whitened_y = torch.linalg.solve_triangular(factor, y_context.double()[..., None], upper=False)  # [b, n, 1]
        mean = (whitened_cross * whitened_y).sum(1)  # [b, q]
        variance = (outputscale + observation_noise)[:, None] - whitened_cross.square().sum(1)
        return torch.distributions.Normal(mean, variance.clamp_min(1e-300).sqrt())

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        dtype = torch.float64
        low, high = self.x_range
        x = low + (high - low) * torch.rand(
            batch_size, num_points, num_features, generator=generator, device=device, dtype=dtype
        )
        lengthscale = sample_hyperparameter(self.lengthscale, batch_size, generator, device, dtype)
        outputscale = sample_hyperparameter(self.outputscale, batch_size, generator, device, dtype)
        noise = sample_hyperparameter(self.noise, batch_size, generator, device, dtype)

        # The kernels are stationary, so the covariance has a constant diagonal (the outputscale)
        # and `cholesky_cannot_fail` applies to it scaled by that.
        check = not cholesky_cannot_fail(num_points, self.jitter, dtype)
        factor = stable_cholesky(self.covariance(x, lengthscale, outputscale), self.jitter, check=check)
        white = torch.randn(batch_size, num_points, 1, generator=generator, device=device, dtype=dtype)
        f = (factor @ white).squeeze(-1)  # [batch, points]
        eps = torch.randn(batch_size, num_points, generator=generator, device=device, dtype=dtype)
        y = f + noise.sqrt()[:, None] * eps
        hyperparameters = {"lengthscale": lengthscale, "outputscale": outputscale, "noise": noise}
        return PriorBatch(x=x.float(), y=y.float(), y_noiseless=f.float(), hyperparameters=hyperparameters)
