"""BNN prior: shapes, determinism, per-dataset hyperparameters, and a tiny training run on it."""

import dataclasses
import math

import einops
import pytest
import torch

import pfn
from pfn.ensemble import cube_symmetries, cube_view, symmetry_ensemble
from pfn.training import train
from priors import BNNPrior, build_prior
from tests.conftest import tiny_config

SMALL_BNN = {"name": "bnn", "max_depth": 2, "max_width": 16}


def test_bnn_prior_shapes_determinism_and_finiteness():
    prior = build_prior({"name": "bnn"})
    a = prior.sample(64, 30, 3, torch.Generator().manual_seed(0))
    b = prior.sample(64, 30, 3, torch.Generator().manual_seed(0))
    c = prior.sample(64, 30, 3, torch.Generator().manual_seed(1))
    assert a.x.shape == (64, 30, 3) and a.y.shape == (64, 30) and a.y_noiseless.shape == (64, 30)
    assert a.x.dtype == a.y.dtype == torch.float32
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert torch.isfinite(a.y).all() and a.x.min() >= 0 and a.x.max() <= 1
    assert isinstance(prior, BNNPrior) and prior.spec["max_width"] == 64


def test_bnn_hyperparameters_vary_per_dataset():
    prior = BNNPrior()
    params = prior.sample_parameters(500, 2, torch.Generator().manual_seed(0))
    assert set(params.depth.tolist()) == {1, 2, 3}
    assert params.width.min() == 5 and params.width.max() == 64
    assert set(params.activation.tolist()) == {0, 1}
    assert params.weight_scale.std() > 0.1 and params.noise_std.max() / params.noise_std.min() > 10
    # The noise really is the drawn noise_std: y - f has that standard deviation per dataset.
    batch = prior.sample(500, 400, 2, torch.Generator().manual_seed(0))
    residual_std = (batch.y - batch.y_noiseless).std(1)
    assert residual_std.max() / residual_std.min() > 10
    # Roughly unit scale, so the bucket borders cover it.
    assert 0.1 < batch.y.std(1).median() < 2


def test_padding_is_the_same_as_a_network_of_its_own_size():
    """A dataset drawn at width 7 inside a padded width-16 network equals the plain 7-unit MLP."""
    prior = BNNPrior(min_depth=2, max_depth=2, max_width=16, activations=["tanh"], weight_scale=1.3)
    params = prior.sample_parameters(1, 2, torch.Generator().manual_seed(3))
    params.width[:] = w = 7
    x = torch.rand(1, 10, 2, generator=torch.Generator().manual_seed(4))
    s_b = params.bias_scale.item()
    h = math.sqrt(12) * (x[0] - 0.5)
    h = torch.tanh(1.3 / math.sqrt(2) * h @ params.weights[0][0, :, :w] + s_b * params.biases[0][0, :w])
    h = torch.tanh(1.3 / math.sqrt(w) * h @ params.weights[1][0, :w, :w] + s_b * params.biases[1][0, :w])
    f = h @ params.readout[0, :w] / math.sqrt(w)
    assert torch.allclose(prior.forward(x, params)[0], f, atol=1e-5)


def test_the_bnn_prior_is_invariant_to_the_symmetries_of_the_cube():
    """What `pfn.ensemble.symmetry_ensemble` relies on for a BNN regressor: a view of the inputs
    (features reordered, some reflected about 1/2) is the same network with the first layer's rows
    reordered and negated; those raw weights are i.i.d. standard normal, so the two networks are
    equally probable, and every dataset as probable as its view."""
    prior = BNNPrior(min_depth=1, max_depth=3, max_width=16)
    params = prior.sample_parameters(6, 3, torch.Generator().manual_seed(3))
    x = torch.rand(6, 25, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    order, reflect = cube_symmetries(6, 3, torch.Generator().manual_seed(0), exclude_identity=True)
    view = cube_view(x, order, reflect, (0.0, 1.0))
    # Row j of the view's first layer is row order[j] of the original's, negated where reflected.
    first = params.weights[0].double()
    moved = first.gather(1, einops.repeat(order, "b f -> b f w", w=first.shape[-1]))
    moved = torch.where(reflect[:, :, None], -moved, moved)
    params_view = dataclasses.replace(params, weights=[moved, *params.weights[1:]])
    torch.testing.assert_close(prior.forward(view, params_view), prior.forward(x, params), rtol=1e-10, atol=1e-10)
    # The view with the original network is another function (the test can fail).
    assert not torch.allclose(prior.forward(view, params), prior.forward(x, params), atol=1e-3)


def test_bnn_symmetry_ensemble_averages_the_model_over_cube_views(tmp_path):
    config = tiny_config(tmp_path, "--train.max_steps", "3")
    config.prior = dict(SMALL_BNN)
    model = pfn.load(train(config))
    batch = build_prior(model.prior_spec).sample(4, 16, 2, torch.Generator().manual_seed(5))
    data = batch.x[:, :12], batch.y[:, :12], batch.x[:, 12:]
    ensemble = symmetry_ensemble(model, *data, 2, torch.Generator().manual_seed(9))
    order, reflect = cube_symmetries(4, 2, torch.Generator().manual_seed(9), exclude_identity=True)
    x_context, x_query = (cube_view(x, order, reflect, (0.0, 1.0)) for x in (data[0], data[2]))
    members = [model.predict(*data, normalize=False), model.predict(x_context, data[1], x_query, normalize=False)]
    torch.testing.assert_close(ensemble.probs, (members[0].probs + members[1].probs) / 2)
    assert not torch.allclose(ensemble.probs, members[0].probs, atol=1e-5)


def test_bnn_prior_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_depth"):
        BNNPrior(min_depth=0)
    with pytest.raises(ValueError, match="min_width <= max_width"):
        BNNPrior(min_width=10, max_width=5)
    with pytest.raises(ValueError, match="activations"):
        BNNPrior(activations=["sigmoid"])
    with pytest.raises(ValueError, match="noise_std"):
        BNNPrior(noise_std=-1.0)


def test_a_tiny_pfn_trains_on_the_bnn_prior(tmp_path):
    config = tiny_config(tmp_path, "--train.max_steps", "20")
    config.prior = dict(SMALL_BNN)
    path = train(config)
    model = pfn.load(path)
    assert model.prior_spec["name"] == "bnn"
    batch = build_prior(model.prior_spec).sample(8, 20, 2, torch.Generator().manual_seed(5))
    dist = model.predict(batch.x[:, :15], batch.y[:, :15], batch.x[:, 15:], normalize=False)
    assert torch.isfinite(dist.log_prob(batch.y[:, 15:])).all()
