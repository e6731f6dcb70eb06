"""Gaussian-mixture classification prior: each class is a Gaussian with a Normal-Inverse-Wishart prior.

Per dataset: the number of classes K ~ U{min_classes..max_classes}; class weights
~ Dirichlet(concentration) over those K; per class a covariance Sigma ~ InvWishart(nu0, psi0 * I)
with nu0 = features + dof_offset, and a mean ~ N(0, Sigma / kappa0). Points are drawn from the
mixture and labelled with their component. With `permute_classes` the K classes get random
ids among 0..max_classes-1, so no model can learn anything from label order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from priors.base import InputScaling, Prior, PriorBatch, register_prior


@dataclass
class GMMParameters:
    """Mixture parameters per dataset; classes are indexed by their label id."""

    weights: torch.Tensor  # [batch, max_classes], zero for inactive ids
    means: torch.Tensor  # [batch, max_classes, features]
    scale_tril: torch.Tensor  # [batch, max_classes, features, features], Cholesky factor of the covariance
    num_classes: torch.Tensor  # [batch] number of active classes


@register_prior("gmm")
class GMMPrior(Prior):
    """Labelled Gaussian-mixture datasets; `y` holds labels 0..max_classes-1 as floats.

    Args:
        min_classes, max_classes: range of the number of classes per dataset.
        concentration: symmetric Dirichlet concentration of the class weights.
        kappa0: NIW mean precision; class means have covariance Sigma / kappa0.
        dof_offset: NIW degrees of freedom nu0 = features + dof_offset (> 0).
        psi0: NIW scale matrix psi0 * identity.
        label_noise: probability that a point's label is replaced by a random active class.
        permute_classes: give the classes random ids among 0..max_classes-1.
    """

    def __init__(
        self,
        min_classes: int = 2,
        max_classes: int = 10,
        concentration: float = 1.0,
        kappa0: float = 0.1,
        dof_offset: float = 2.0,
        psi0: float = 1.0,
        label_noise: float = 0.0,
        permute_classes: bool = True,
    ) -> None:
        if not 1 <= min_classes <= max_classes:
            raise ValueError(f"need 1 <= min_classes <= max_classes, got {min_classes}, {max_classes}")
        for name, value in (
            ("concentration", concentration),
            ("kappa0", kappa0),
            ("dof_offset", dof_offset),
            ("psi0", psi0),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= label_noise <= 1:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
        super().__init__(
            min_classes=min_classes,
            max_classes=max_classes,
            concentration=concentration,
            kappa0=kappa0,
            dof_offset=dof_offset,
            psi0=psi0,
            label_noise=label_noise,
            permute_classes=permute_classes,
        )
        self.min_classes, self.max_classes = min_classes, max_classes
        self.concentration, self.kappa0, self.dof_offset, self.psi0 = concentration, kappa0, dof_offset, psi0
        self.label_noise, self.permute_classes = label_noise, permute_classes

    @functools.cached_property
    def typical_spread(self) -> float:
        """The median over 4,000 drawn datasets (100 points, 1 feature, a fixed seed) of a feature's
        standard deviation. A diagonal entry of an inverse-Wishart matrix with nu0 = features +
        dof_offset degrees of freedom has the same distribution whatever the number of features,
        and so has one feature of the data: one feature tells the spread of every one. The median
        ignores the inverse Wishart's heavy tail."""
        batch = self.sample(4000, 100, 1, torch.Generator().manual_seed(0))
        return batch.x.std(1).median().item()

    def input_scaling(self) -> InputScaling:
        """Standardise each feature to the typical spread of this prior's datasets."""
        return InputScaling(kind="standardize", spread=self.typical_spread)

    def sample_parameters(
        self, batch_size: int, num_features: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> GMMParameters:
        dtype = torch.float64
        classes, d = self.max_classes, num_features
        num_classes = torch.randint(self.min_classes, classes + 1, (batch_size,), generator=generator, device=device)
        active = torch.arange(classes, device=device) < num_classes[:, None]  # [b, C]
        gammas = torch._standard_gamma(
            torch.full((batch_size, classes), self.concentration, device=device, dtype=dtype), generator=generator
        )
        weights = torch.where(active, gammas, torch.zeros_like(gammas))
        weights = weights / weights.sum(-1, keepdim=True)

        # Bartlett: precision W = A A^T / psi0 ~ Wishart(nu0, I / psi0), so Sigma = psi0 (A A^T)^-1
        # and Sigma's Cholesky-like factor is sqrt(psi0) A^-T.
        nu0 = d + self.dof_offset
        chi2_dof = (nu0 - torch.arange(d, device=device, dtype=dtype)).expand(batch_size, classes, d)
        diagonal = (2 * torch._standard_gamma(chi2_dof / 2, generator=generator)).sqrt()
        lower = torch.randn(batch_size, classes, d, d, generator=generator, device=device, dtype=dtype).tril(-1)
        bartlett = lower + torch.diag_embed(diagonal)
        eye = torch.eye(d, device=device, dtype=dtype).expand(batch_size, classes, d, d)
        factor = self.psi0**0.5 * torch.linalg.solve_triangular(bartlett.transpose(-1, -2), eye, upper=True)
        # factor is upper triangular with factor @ factor^T = Sigma; keep a lower Cholesky factor.
        scale_tril = torch.linalg.cholesky(factor @ factor.transpose(-1, -2))
        white = torch.randn(batch_size, classes, d, 1, generator=generator, device=device, dtype=dtype)
        means = (scale_tril @ white).squeeze(-1) / self.kappa0**0.5

        if self.permute_classes:
            ids = torch.rand(batch_size, classes, generator=generator, device=device).argsort(-1)  # class k -> id
            order = ids.argsort(-1)  # id -> class
            weights = weights.gather(1, order)
            means = means.gather(1, order[..., None].expand(-1, -1, d))
            scale_tril = scale_tril.gather(1, order[..., None, None].expand(-1, -1, d, d))
        return GMMParameters(weights=weights, means=means, scale_tril=scale_tril, num_classes=num_classes)

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        params = self.sample_parameters(batch_size, num_features, generator, device)
        labels = torch.multinomial(params.weights, num_points, replacement=True, generator=generator)  # [b, n]
        d = num_features
        white = torch.randn(batch_size, num_points, d, 1, generator=generator, device=device, dtype=torch.float64)
        tril = params.scale_tril.gather(1, labels[..., None, None].expand(-1, -1, d, d))
        x = params.means.gather(1, labels[..., None].expand(-1, -1, d)) + (tril @ white).squeeze(-1)
        if self.label_noise > 0:
            flip = torch.rand(batch_size, num_points, generator=generator, device=device) < self.label_noise
            # A uniformly random active id: draw among ids with positive weight.
            active = (params.weights > 0).double()
            random_ids = torch.multinomial(active, num_points, replacement=True, generator=generator)
            labels = torch.where(flip, random_ids, labels)
        return PriorBatch(x=x.float(), y=labels.float())
