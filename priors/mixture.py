"""A weighted mixture of priors is itself a prior: each dataset comes from one component."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from priors.base import InputScaling, Prior, PriorBatch, build_prior, register_prior


@register_prior("mixture")
class MixturePrior(Prior):
    """Draws each dataset of a batch from component `i` with probability `weights[i]`.

    Args:
        priors: component specs (mappings with a "name") or prior instances.
        weights: non-negative weights, one per component; normalised here. Equal if omitted.
    """

    def __init__(self, priors: Sequence[dict[str, Any] | Prior], weights: Sequence[float] | None = None) -> None:
        if len(priors) == 0:
            raise ValueError("a mixture needs at least one component prior")
        components = [build_prior(p) for p in priors]
        weights = [1.0] * len(components) if weights is None else [float(w) for w in weights]
        if len(weights) != len(components):
            raise ValueError(f"mixture has {len(components)} priors but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be non-negative and not all zero, got {weights}")
        super().__init__(priors=[c.spec for c in components], weights=weights)
        self.components = components
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)

    def input_scaling(self) -> InputScaling:
        """The components' common scaling; components whose inputs live on different scales leave
        no one map that suits every dataset (wrap such a mixture in `minmax`)."""
        scalings = {component.input_scaling() for component in self.components}
        if len(scalings) > 1:
            raise ValueError(
                f"the mixture's components map inputs differently ({sorted(map(str, scalings))}); "
                "wrap it in the 'minmax' prior so every dataset is on one scale"
            )
        return scalings.pop()

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        which = torch.multinomial(self.weights.to(device), batch_size, replacement=True, generator=generator)
        x = torch.empty(batch_size, num_points, num_features, device=device)
        y = torch.empty(batch_size, num_points, device=device)
        y_noiseless = torch.empty(batch_size, num_points, device=device)
        all_noiseless = True
        for index, component in enumerate(self.components):
            rows = (which == index).nonzero().squeeze(-1)
            if len(rows) == 0:
                continue
            part = component.sample(len(rows), num_points, num_features, generator, device)
            x[rows], y[rows] = part.x, part.y
            if part.y_noiseless is None:
                all_noiseless = False
            else:
                y_noiseless[rows] = part.y_noiseless
        return PriorBatch(x=x, y=y, y_noiseless=y_noiseless if all_noiseless else None)
