"""The exact GP posterior predictive (GPyTorch): the Bayes-optimal answer for a GP prior with
fixed hyperparameters, and so the ground truth for a PFN trained on that prior."""

from __future__ import annotations

import gpytorch
import torch

from priors.gp import GPPrior, make_kernel


class _FixedHyperparameterGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, prior: GPPrior) -> None:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-12))
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        base = make_kernel(prior.kernel_name)
        base.lengthscale = prior.lengthscale
        self.covar_module = gpytorch.kernels.ScaleKernel(base)
        self.covar_module.outputscale = prior.outputscale
        # What the prior adds to the latent function: its noise and its sampling jitter.
        likelihood.noise = prior.observation_noise(prior.noise, prior.outputscale)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def exact_gp_predictive(
    x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor, prior: GPPrior
) -> torch.distributions.Normal:
    """Predictive distribution of the noisy targets at each query point.

    Shapes: x_context [b, c, f], y_context [b, c], x_query [b, q, f] -> Normal with batch [b, q].
    Computed in float64 with an exact Cholesky factorisation (no conjugate gradients).
    """
    if not isinstance(prior, GPPrior) or not prior.has_fixed_hyperparameters:
        raise ValueError("the exact GP baseline needs a GP prior with fixed hyperparameters")
    x_context, y_context, x_query = (t.double() for t in (x_context, y_context, x_query))
    if x_context.shape[1] == 0:  # no data: the prior predictive
        mean = torch.zeros(x_query.shape[:2], dtype=torch.float64, device=x_query.device)
        variance = prior.outputscale + prior.observation_noise(prior.noise, prior.outputscale)
        return torch.distributions.Normal(mean, torch.full_like(mean, variance).sqrt())
    model = _FixedHyperparameterGP(x_context, y_context, prior).double().to(x_context.device)
    model.eval()
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10**9), gpytorch.settings.fast_pred_var(False):
        predictive = model.likelihood(model(x_query))
        return torch.distributions.Normal(predictive.mean, predictive.variance.clamp_min(1e-300).sqrt())
