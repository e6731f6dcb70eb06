"""Type-II maximum likelihood GP (GPyTorch): the fast classical baseline for a GP prior with
hyperpriors. Lengthscale, outputscale and noise are fitted per dataset by maximising the
marginal likelihood (no hyperpriors), then the GP predictive is used with those values."""

from __future__ import annotations

import gpytorch
import torch

from priors.gp import GPPrior, make_kernel


class _BatchGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, kernel: str) -> None:
        batch = torch.Size([x.shape[0]])
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            batch_shape=batch, noise_constraint=gpytorch.constraints.GreaterThan(1e-8)
        )
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=batch)
        base = make_kernel(kernel)
        base = type(base)(batch_shape=batch, **({"nu": base.nu} if hasattr(base, "nu") else {}))
        self.covar_module = gpytorch.kernels.ScaleKernel(base, batch_shape=batch)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def type2_ml_gp_predictive(
    x_context: torch.Tensor,
    y_context: torch.Tensor,
    x_query: torch.Tensor,
    prior: GPPrior,
    max_iterations: int = 100,
) -> torch.distributions.Normal:
    """Fit the hyperparameters of each dataset by L-BFGS on its marginal likelihood, then predict.

    Shapes: x_context [b, c, f], y_context [b, c], x_query [b, q, f] -> Normal with batch [b, q].
    The kernel family is the prior's; the optimisation starts from a lengthscale of 0.5,
    the outputscale at the context's variance and the noise at 1% of it.
    """
    if not isinstance(prior, GPPrior):
        raise ValueError(f"type-II ML needs a GP prior, got {type(prior).__name__}")
    if x_context.shape[1] < 2:
        raise ValueError(f"type-II ML needs at least 2 context points, got {x_context.shape[1]}")
    x_context, y_context, x_query = (t.double() for t in (x_context, y_context, x_query))
    model = _BatchGP(x_context, y_context, prior.kernel_name).double()
    variance = y_context.var(1).clamp_min(1e-4)
    model.covar_module.base_kernel.lengthscale = torch.full_like(variance, 0.5)[:, None, None]
    model.covar_module.outputscale = variance
    model.likelihood.noise = (0.01 * variance)[:, None]
    model.train()
    objective = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -objective(model(x_context), y_context).sum()
        loss.backward()
        return loss

    with gpytorch.settings.max_cholesky_size(10**9):
        optimizer.step(closure)
        model.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
            predictive = model.likelihood(model(x_query))
    return torch.distributions.Normal(predictive.mean, predictive.variance.clamp_min(1e-12).sqrt())
