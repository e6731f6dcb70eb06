"""Priors: determinism per seed, shapes, the GP's covariance, registry and mixtures."""

import gpytorch
import pytest
import torch

from priors import GPPrior, MixturePrior, Prior, PriorBatch, available_priors, build_prior, register_prior
from priors.gp import cholesky_cannot_fail, make_kernel, stable_cholesky


def draw(prior: Prior, seed: int, batch=4, points=20, features=3) -> PriorBatch:
    return prior.sample(batch, points, features, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", ["rbf", "matern12", "matern32", "matern52"])
def test_same_seed_same_batch_and_shapes(kernel):
    prior = GPPrior(kernel=kernel)
    a, b, c = draw(prior, 0), draw(prior, 0), draw(prior, 1)
    assert a.x.shape == (4, 20, 3) and a.y.shape == (4, 20) and a.y_noiseless.shape == (4, 20)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert a.x.min() >= 0 and a.x.max() <= 1


def test_gp_samples_have_the_kernel_covariance():
    prior = GPPrior(kernel="matern32", lengthscale=0.3, outputscale=2.0, noise=0.1)
    batch = prior.sample(20_000, 3, 1, torch.Generator().manual_seed(0))
    xs, y = batch.x, batch.y
    # E[y_i y_j | x] is the kernel plus noise; average (y_i y_j - k(x_i, x_j)) over many datasets.
    kernel = make_kernel("matern32").double()
    with torch.no_grad():
        k = 2.0 * kernel.forward(xs.double() / 0.3, xs.double() / 0.3) + 0.1 * torch.eye(3, dtype=torch.float64)
    products = y.double()[:, :, None] * y.double()[:, None, :]
    error = (products - k).mean(0)
    assert error.abs().max() < 0.1, error
    assert prior.spec["kernel"] == "matern32"


def test_hyperpriors_vary_per_dataset_and_are_deterministic():
    spec = {
        "name": "gp",
        "lengthscale": {"distribution": "gamma", "concentration": 3.0, "rate": 6.0},
        "outputscale": {"distribution": "uniform", "low": 0.5, "high": 2.0},
        "noise": {"distribution": "lognormal", "loc": -4.0, "scale": 1.0},
    }
    prior = build_prior(spec)
    a, b = draw(prior, 3, batch=64), draw(prior, 3, batch=64)
    assert torch.equal(a.y, b.y)
    scales = a.y.std(1)
    assert scales.max() / scales.min() > 2  # outputscale and lengthscale differ between datasets
    assert not prior.has_fixed_hyperparameters and prior.spec == spec | {
        "kernel": "rbf",
        "x_range": [0.0, 1.0],
        "jitter": 1e-6,
    }


@pytest.mark.parametrize(
    ("name", "stock"),
    [
        ("rbf", gpytorch.kernels.RBFKernel()),
        ("matern12", gpytorch.kernels.MaternKernel(nu=0.5)),
        ("matern52", gpytorch.kernels.MaternKernel(nu=2.5)),
    ],
)
def test_prior_kernels_are_gpytorchs(name, stock):
    # The prior's kernels skip GPyTorch's torch.equal(x1, x2) (a host-device sync); same values.
    x = torch.rand(3, 50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stock.lengthscale = 1.0
    with torch.no_grad():
        ours = make_kernel(name, same_inputs=True).double().forward(x, x)
        theirs = stock.double().forward(x, x)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_cholesky_needs_checking_only_where_it_can_fail():
    assert cholesky_cannot_fail(2000, 1e-6, torch.float64)
    assert not cholesky_cannot_fail(100_000, 1e-6, torch.float64)
    assert not cholesky_cannot_fail(200, 1e-6, torch.float32)  # float32 does fail there (issue 7 bench)
    assert not cholesky_cannot_fail(10, 0.0, torch.float64)
    # A rank-one matrix needs more than no jitter: checked, it gets it; unchecked, a failure is NaN.
    ones = torch.ones(2, 30, 30, dtype=torch.float64)
    assert torch.isnan(stable_cholesky(ones, jitter=1e-16, check=False)).all()  # 1 + 1e-16 == 1
    factor = stable_cholesky(ones, jitter=1e-16, check=True)
    assert torch.allclose(factor @ factor.mT, ones, atol=1e-4)
    good = stable_cholesky(ones + torch.eye(30), jitter=1e-6, check=False)
    assert torch.allclose(good @ good.mT, ones + torch.eye(30), atol=1e-4)


def test_stable_for_two_thousand_points():
    batch = draw(GPPrior(), 0, batch=2, points=2000, features=1)
    assert torch.isfinite(batch.y).all()
    assert 0.05 < batch.y_noiseless.std() < 5


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown prior 'gq'.*did you mean 'gp'"):
        build_prior({"name": "gq"})
    with pytest.raises(ValueError, match="no hyperparameter 'lengthscal'.*did you mean 'lengthscale'"):
        build_prior({"name": "gp", "lengthscal": 0.5})
    with pytest.raises(ValueError, match="unknown kernel"):
        build_prior({"name": "gp", "kernel": "linear"})
    with pytest.raises(ValueError, match="lengthscale must be a finite positive number"):
        GPPrior(lengthscale=-1.0)
    with pytest.raises(ValueError, match="gamma hyperprior takes exactly"):
        GPPrior(noise={"distribution": "gamma", "shape": 1.0})


def test_mixture_is_a_prior_and_respects_weights():
    mixture = build_prior(
        {
            "name": "mixture",
            "priors": [{"name": "gp", "outputscale": 1e-2}, {"name": "gp", "outputscale": 100.0}],
            "weights": [3, 1],
        }
    )
    assert isinstance(mixture, MixturePrior)
    a, b = draw(mixture, 5, batch=400), draw(mixture, 5, batch=400)
    assert torch.equal(a.y, b.y)
    large = (a.y.std(1) > 1.0).float().mean()
    assert 0.18 < large < 0.32  # a quarter of the datasets come from the large-scale component
    assert build_prior(mixture.spec).spec == mixture.spec
    with pytest.raises(ValueError, match="2 priors but 1 weights"):
        MixturePrior([{"name": "gp"}, {"name": "gp"}], weights=[1.0])


def test_a_new_prior_is_one_small_class():
    @register_prior("test_linear")
    class LinearPrior(Prior):
        def __init__(self, slope_scale: float = 1.0) -> None:
            super().__init__(slope_scale=slope_scale)
            self.slope_scale = slope_scale

        def sample(self, batch_size, num_points, num_features, generator, device="cpu"):
            x = torch.rand(batch_size, num_points, num_features, generator=generator, device=device)
            slope = self.slope_scale * torch.randn(batch_size, num_features, 1, generator=generator, device=device)
            return PriorBatch(x=x, y=(x @ slope).squeeze(-1))

    assert "test_linear" in available_priors()
    prior = build_prior({"name": "test_linear", "slope_scale": 2.0})
    assert draw(prior, 0).y.shape == (4, 20)


def test_fixed_gp_output_scaling_recovers_the_outputscale_and_follows_the_units():
    prior = GPPrior()  # outputscale 1
    batch = draw(prior, 3, batch=200, points=30, features=2)
    x, y = batch.x.double(), 3.0 * batch.y.double() - 7.0  # the same data in other units
    loc, scale = prior.output_scaling(x, y)
    # Maximum likelihood under the prior's kernel sees through the change of units; the
    # context's standard deviation reads a smooth function seen over the unit square as a
    # smaller one (about 0.6 of its outputscale here).
    assert scale.median().item() == pytest.approx(3.0, rel=0.1)
    assert y.std(1).median().item() < 0.8 * 3.0
    loc_again, scale_again = prior.output_scaling(x, -2.0 * y + 1.0)
    assert torch.allclose(loc_again, -2.0 * loc + 1.0) and torch.allclose(scale_again, 2.0 * scale)
    # Under hyperpriors the outputscale is not fixed: the predictor standardises instead.
    hyper = GPPrior(outputscale={"distribution": "gamma", "concentration": 2.0, "rate": 2.0})
    assert hyper.output_scaling(x, y) is None
