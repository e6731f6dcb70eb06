"""The exact GP baseline against the closed-form posterior written in NumPy."""

import numpy as np
import pytest
import torch

from pfn.baselines import exact_gp_predictive
from priors import GPPrior


def numpy_posterior(x, y, xq, lengthscale, outputscale, noise):
    def rbf(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return outputscale * np.exp(-0.5 * sq / lengthscale**2)

    k = rbf(x, x) + noise * np.eye(len(x))
    kq = rbf(x, xq)
    mean = kq.T @ np.linalg.solve(k, y)
    var = outputscale - np.einsum("ij,ij->j", kq, np.linalg.solve(k, kq)) + noise
    return mean, var


# What the prior adds to f for noise 0.01 and outputscale 1.5: the noise and its sampling jitter 1e-6 x 1.5.
NOISE = 0.01 + 1.5e-6


def test_matches_closed_form():
    prior = GPPrior(kernel="rbf", lengthscale=0.4, outputscale=1.5, noise=0.01)
    batch = prior.sample(3, 25, 2, torch.Generator().manual_seed(0))
    x, y = batch.x.double(), batch.y.double()
    predictive = exact_gp_predictive(x[:, :15], y[:, :15], x[:, 15:], prior)
    for i in range(3):
        mean, var = numpy_posterior(x[i, :15].numpy(), y[i, :15].numpy(), x[i, 15:].numpy(), 0.4, 1.5, NOISE)
        np.testing.assert_allclose(predictive.mean[i].numpy(), mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(predictive.variance[i].numpy(), var, rtol=1e-6, atol=1e-6)


def test_empty_context_gives_the_prior_predictive():
    prior = GPPrior(outputscale=2.0, noise=0.5)
    predictive = exact_gp_predictive(torch.zeros(1, 0, 1), torch.zeros(1, 0), torch.rand(1, 4, 1), prior)
    assert torch.allclose(predictive.mean, torch.zeros(1, 4, dtype=torch.float64))
    assert torch.allclose(predictive.variance, torch.full((1, 4), 2.5 + 2e-6, dtype=torch.float64))


def test_needs_fixed_hyperparameters():
    prior = GPPrior(lengthscale={"distribution": "gamma", "concentration": 3.0, "rate": 6.0})
    with pytest.raises(ValueError, match="fixed hyperparameters"):
        exact_gp_predictive(torch.rand(1, 3, 1), torch.rand(1, 3), torch.rand(1, 2, 1), prior)


def test_the_priors_own_predictive_matches_the_closed_form():
    """`GPPrior.posterior_predictive` (sync-free, for training with exact targets) against NumPy."""
    prior = GPPrior(kernel="rbf", lengthscale=0.4, outputscale=1.5, noise=0.01)
    batch = prior.sample(3, 25, 2, torch.Generator().manual_seed(0))
    x, y = batch.x.double(), batch.y.double()
    predictive = prior.posterior_predictive(x[:, :15], y[:, :15], x[:, 15:])
    for i in range(3):
        mean, var = numpy_posterior(x[i, :15].numpy(), y[i, :15].numpy(), x[i, 15:].numpy(), 0.4, 1.5, NOISE)
        np.testing.assert_allclose(predictive.mean[i].numpy(), mean, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(predictive.variance[i].numpy(), var, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kernel", ["rbf", "matern12", "matern52"])
@pytest.mark.parametrize("num_context", [0, 1, 60])
def test_the_priors_own_predictive_matches_gpytorch(kernel, num_context):
    prior = GPPrior(kernel=kernel)  # the shipped gp's noise 1e-4: a nearly noiseless, ill-conditioned case
    batch = prior.sample(8, num_context + 10, 3, torch.Generator().manual_seed(num_context))
    x_context, y_context, x_query = batch.x[:, :num_context], batch.y[:, :num_context], batch.x[:, num_context:]
    ours = prior.posterior_predictive(x_context, y_context, x_query)
    baseline = exact_gp_predictive(x_context, y_context, x_query, prior)
    # GPyTorch stores the hyperparameters in float32 (0.6 becomes 0.6000000238): relative 1e-7 apart.
    torch.testing.assert_close(ours.mean, baseline.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.stddev, baseline.stddev, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="the hyperparameters each dataset was drawn with"):
        GPPrior(noise={"distribution": "gamma", "concentration": 2.0, "rate": 1.0}).posterior_predictive(
            x_context, y_context, x_query
        )


def test_the_predictive_given_drawn_hyperparameters():
    """Under hyperpriors: each dataset's predictive given the hyperparameters it was drawn with is
    the fixed-hyperparameter predictive with those values (and cannot be had without them)."""
    prior = GPPrior(
        lengthscale={"distribution": "gamma", "concentration": 3.0, "rate": 6.0},
        outputscale={"distribution": "gamma", "concentration": 2.0, "rate": 0.15},
        noise={"distribution": "gamma", "concentration": 1.0e-4, "rate": 1.0},
    )
    batch = prior.sample(4, 40, 2, torch.Generator().manual_seed(3))
    assert set(batch.hyperparameters) == {"lengthscale", "outputscale", "noise"}
    assert batch.hyperparameters["lengthscale"].unique().numel() == 4  # one draw per dataset
    x_context, y_context, x_query = batch.x[:, :30], batch.y[:, :30], batch.x[:, 30:]
    given = prior.posterior_predictive(x_context, y_context, x_query, batch.hyperparameters)
    for i in range(4):
        fixed = GPPrior(**{name: float(values[i]) for name, values in batch.hyperparameters.items()})
        alone = fixed.posterior_predictive(x_context[i : i + 1], y_context[i : i + 1], x_query[i : i + 1])
        torch.testing.assert_close(given.mean[i], alone.mean[0])
        torch.testing.assert_close(given.stddev[i], alone.stddev[0])
    # Nearly noiseless draws: the sampling jitter bounds the predictive's sharpness, and the queries'
    # drawn targets are typical of it (not hundreds of standard deviations away).
    assert (batch.hyperparameters["noise"] < 1e-6).sum() >= 2
    assert torch.isfinite(given.stddev).all() and (given.stddev > 0).all()
    assert (given.log_prob(batch.y[:, 30:].double()) > -10).all()
    with pytest.raises(ValueError, match="needs the hyperparameters each dataset was drawn with"):
        prior.posterior_predictive(x_context, y_context, x_query)
