"""A prior whose inputs are min-max scaled per dataset, as `PFN.predict` scales a real context.

At prediction time every feature of a user's data is mapped so the context spans [0, 1]. A prior
whose inputs live on another scale or location (the GMM prior's are centred at 0 with a spread
of several units) would then show the network data unlike anything it was trained on. Wrapping
the prior in `minmax` removes that mismatch: only the shape of each dataset is left, on the
scale the network will see.
"""

from __future__ import annotations

from typing import Any

import torch

from priors.base import Prior, PriorBatch, build_prior, register_prior


@register_prior("minmax")
class MinMaxPrior(Prior):
    """Draws from `prior` and maps each feature of each dataset so its points span [0, 1].

    The scale comes from all points of a dataset (the prior does not know which will be the
    context), so queries stay inside [0, 1]; a constant feature is only shifted to 0. Targets
    are left unchanged.

    Args:
        prior: the spec (a mapping with a "name") or instance of the prior to rescale.
    """

    def __init__(self, prior: dict[str, Any] | Prior) -> None:
        inner = build_prior(prior)
        super().__init__(prior=inner.spec)
        self.prior = inner

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        batch = self.prior.sample(batch_size, num_points, num_features, generator, device)
        low = batch.x.amin(1, keepdim=True)
        span = batch.x.amax(1, keepdim=True) - low
        x = (batch.x - low) / torch.where(span > 0, span, torch.ones_like(span))
        return PriorBatch(x=x, y=batch.y, y_noiseless=batch.y_noiseless)
