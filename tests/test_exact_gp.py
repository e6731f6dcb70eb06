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


def test_matches_closed_form():
    prior = GPPrior(kernel="rbf", lengthscale=0.4, outputscale=1.5, noise=0.01)
    batch = prior.sample(3, 25, 2, torch.Generator().manual_seed(0))
    x, y = batch.x.double(), batch.y.double()
    predictive = exact_gp_predictive(x[:, :15], y[:, :15], x[:, 15:], prior)
    for i in range(3):
        mean, var = numpy_posterior(x[i, :15].numpy(), y[i, :15].numpy(), x[i, 15:].numpy(), 0.4, 1.5, 0.01)
        np.testing.assert_allclose(predictive.mean[i].numpy(), mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(predictive.variance[i].numpy(), var, rtol=1e-6, atol=1e-6)


def test_empty_context_gives_the_prior_predictive():
    prior = GPPrior(outputscale=2.0, noise=0.5)
    predictive = exact_gp_predictive(torch.zeros(1, 0, 1), torch.zeros(1, 0), torch.rand(1, 4, 1), prior)
    assert torch.allclose(predictive.mean, torch.zeros(1, 4, dtype=torch.float64))
    assert torch.allclose(predictive.variance, torch.full((1, 4), 2.5, dtype=torch.float64))


def test_needs_fixed_hyperparameters():
    prior = GPPrior(lengthscale={"distribution": "gamma", "concentration": 3.0, "rate": 6.0})
    with pytest.raises(ValueError, match="fixed hyperparameters"):
        exact_gp_predictive(torch.rand(1, 3, 1), torch.rand(1, 3), torch.rand(1, 2, 1), prior)
