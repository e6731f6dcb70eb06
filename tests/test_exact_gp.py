"""The exact GP baseline against the closed-form posterior written in NumPy."""

import math

import numpy as np
import pytest
import torch

import pfn
from pfn.baselines import exact_gp_predictive
from pfn.distributions import RiemannMixture
from pfn.ensemble import cube_symmetries, cube_view, cube_view_plan, has_cube_symmetries, symmetry_ensemble
from priors import GPPrior, build_prior


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


def test_the_gp_posterior_is_invariant_to_the_symmetries_of_the_cube():
    """What `pfn.ensemble.symmetry_ensemble` relies on for a GP regressor: reordering the features
    and reflecting some about the centre of the input cube changes no distance, so no predictive;
    and the views keep the inputs in the cube."""
    prior = GPPrior(kernel="matern52", lengthscale=0.3, noise=0.01, x_range=(-1.0, 3.0))
    batch = prior.sample(6, 40, 3, torch.Generator().manual_seed(2))
    order, reflect = cube_symmetries(6, 3, torch.Generator().manual_seed(0))
    assert reflect.any() and not reflect.all() and (order != torch.arange(3)).any()
    x_context, x_query = batch.x[:, :30].double(), batch.x[:, 30:].double()  # float32 would round the reflections
    moved_context, moved_query = (cube_view(x, order, reflect, prior.x_range) for x in (x_context, x_query))
    assert moved_context.min() >= -1 and moved_context.max() <= 3 and not torch.equal(moved_context, x_context)
    given = prior.posterior_predictive(x_context, batch.y[:, :30], x_query)
    moved = prior.posterior_predictive(moved_context, batch.y[:, :30], moved_query)
    torch.testing.assert_close(moved.mean, given.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(moved.stddev, given.stddev, rtol=1e-10, atol=1e-10)
    # A view that moved only some points would not keep it (the test can fail).
    half = torch.cat([moved_context[:, :15], x_context[:, 15:]], 1)
    assert not torch.allclose(prior.posterior_predictive(half, batch.y[:, :30], moved_query).mean, given.mean)


def test_cube_symmetries_can_leave_out_the_identity():
    order, reflect = cube_symmetries(50, 1, torch.Generator().manual_seed(0), exclude_identity=True)
    assert reflect.all()  # with one feature the reflection is the only other symmetry
    order, reflect = cube_symmetries(500, 2, torch.Generator().manual_seed(0), exclude_identity=True)
    identity = (order == torch.arange(2)).all(-1) & ~reflect.any(-1)
    assert not identity.any() and len({(*o.tolist(), *r.tolist()) for o, r in zip(order, reflect, strict=True)}) == 7
    _, reflect = cube_symmetries(50, 1, torch.Generator().manual_seed(0))
    assert not reflect.all()  # by default the identity is one of the draws


def test_cube_view_plans_run_through_every_symmetry_before_repeating_one():
    def keys(views, dataset):
        return [(*order[dataset].tolist(), *reflect[dataset].tolist()) for order, reflect in views]

    one_feature = cube_view_plan(3, 1, 5, torch.Generator().manual_seed(0))
    assert all(keys(one_feature, d) == [(0, False), (0, True)] * 2 + [(0, False)] for d in range(3))
    two_features = cube_view_plan(40, 2, 10, torch.Generator().manual_seed(1))
    identity = (0, 1, False, False)
    for dataset in range(40):
        views = keys(two_features, dataset)
        assert views[0] == views[8] == identity and len(set(views[:8])) == 8 and views[9] != identity
    assert len({keys(two_features, d)[1] for d in range(40)}) == 7  # each dataset its own order
    # Member 1 is `cube_symmetries`' first draw without the identity (as the ensemble tests rebuild it).
    order, reflect = cube_symmetries(40, 2, torch.Generator().manual_seed(1), exclude_identity=True)
    assert torch.equal(two_features[1][0], order) and torch.equal(two_features[1][1], reflect)


def test_which_priors_have_the_cube_symmetries():
    symmetric = {card.name: has_cube_symmetries(pfn.load(card.name).prior) for card in pfn.list_models()}
    assert symmetric == {
        "bnn": True,
        "classifier": True,  # min-max scaled GMMs
        "gmm": True,
        "gp": True,
        "gp_hyper": True,
        "lc": False,  # time runs one way
        "regressor": True,  # a mixture of GPs
    }


def test_gp_symmetry_ensemble_mixes_the_model_over_cube_views(tiny_model_path):
    model = pfn.load(tiny_model_path)
    prior = build_prior(model.prior_spec)
    batch = prior.sample(5, 26, 2, torch.Generator().manual_seed(4))
    data = batch.x[:, :20], batch.y[:, :20], batch.x[:, 20:]
    single = model.predict(*data, normalize=False)
    torch.testing.assert_close(symmetry_ensemble(model, *data, 1, torch.Generator()).probs, single.probs)
    ensemble = symmetry_ensemble(model, *data, 2, torch.Generator().manual_seed(9))
    # Member 1 by hand, from the same draw of the generator.
    order, reflect = cube_symmetries(5, 2, torch.Generator().manual_seed(9), exclude_identity=True)
    x_context, x_query = (cube_view(x, order, reflect, prior.x_range) for x in (data[0], data[2]))
    view = model.predict(x_context, data[1], x_query, normalize=False)
    torch.testing.assert_close(ensemble.probs, (single.probs + view.probs) / 2)
    assert not torch.allclose(ensemble.probs, single.probs, atol=1e-4)
    assert torch.equal(ensemble.borders, single.borders)


def test_symmetry_ensemble_of_a_linear_readout_model_is_an_exact_mixture_of_its_views():
    model = pfn.load("gp")  # shipped with a linear readout: each view has its own z borders
    batch = build_prior(model.prior_spec).sample(2, 12, 2, torch.Generator().manual_seed(4))
    data = batch.x[:, :10], batch.y[:, :10], batch.x[:, 10:]
    ensemble = symmetry_ensemble(model, *data, 2, torch.Generator().manual_seed(9))
    assert isinstance(ensemble, RiemannMixture)
    order, reflect = cube_symmetries(2, 2, torch.Generator().manual_seed(9), exclude_identity=True)
    x_context, x_query = (cube_view(x, order, reflect, (0.0, 1.0)) for x in (data[0], data[2]))
    members = [model.predict(*data, normalize=False), model.predict(x_context, data[1], x_query, normalize=False)]
    assert not torch.equal(members[0].borders, members[1].borders)
    y = batch.y[:, 10:]
    expected = torch.stack([m.log_prob(y) for m in members]).logsumexp(0) - math.log(2)
    torch.testing.assert_close(ensemble.log_prob(y), expected)
