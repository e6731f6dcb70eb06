"""The minmax prior wrapper: every feature of every dataset spans exactly [0, 1]; targets untouched."""

import torch

from priors import MinMaxPrior, build_prior


def test_minmax_scales_each_feature_of_each_dataset_to_unit_range_and_keeps_targets():
    spec = {"name": "gmm", "max_classes": 4}
    wrapped = build_prior({"name": "minmax", "prior": spec})
    assert isinstance(wrapped, MinMaxPrior) and wrapped.spec == {"name": "minmax", "prior": build_prior(spec).spec}
    batch = wrapped.sample(6, 50, 3, torch.Generator().manual_seed(0))
    raw = build_prior(spec).sample(6, 50, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(batch.x.amin(1), torch.zeros(6, 3)) and torch.allclose(batch.x.amax(1), torch.ones(6, 3))
    assert torch.equal(batch.y, raw.y)
    # An affine map per feature: the scaled x is a fixed linear function of the raw x.
    rescaled = (raw.x - raw.x.amin(1, keepdim=True)) / (raw.x.amax(1, keepdim=True) - raw.x.amin(1, keepdim=True))
    assert torch.allclose(batch.x, rescaled, atol=1e-6)


def test_minmax_maps_a_constant_feature_to_zero():
    wrapped = MinMaxPrior({"name": "gp"})
    original = wrapped.prior.sample

    def constant_first_feature(*args, **kwargs):
        batch = original(*args, **kwargs)
        batch.x[..., 0] = 3.0
        return batch

    wrapped.prior.sample = constant_first_feature
    batch = wrapped.sample(2, 10, 2, torch.Generator().manual_seed(0))
    assert torch.equal(batch.x[..., 0], torch.zeros(2, 10))
    assert torch.isfinite(batch.x).all()
