"""Output heads: turn the backbone's logits into a distribution and know their own loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfn.distributions import CategoricalDistribution, RiemannDistribution


def borders_from_samples(y: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket borders at equally spaced quantiles of targets drawn from the prior: [num_buckets + 1].

    Each bucket then holds the same prior mass, so resolution is spent where the targets are.
    """
    y = y.flatten().double()
    if not torch.isfinite(y).all():
        raise ValueError("prior samples for the bucket borders contain NaN or inf")
    if y.numel() < 10 * num_buckets:
        raise ValueError(f"need at least {10 * num_buckets} prior samples for {num_buckets} buckets, got {y.numel()}")
    levels = torch.linspace(0, 1, num_buckets + 1, dtype=torch.float64)
    # torch.quantile is limited to 16M elements; a sorted subset is as good for this purpose.
    borders = torch.quantile(y[: 2**24], levels)
    if not (borders[1:] > borders[:-1]).all():
        raise ValueError("bucket borders are not strictly increasing: the prior's targets have repeated values")
    return borders.float()


def rebucket_output_layer(
    layer: nn.Linear, old_borders: torch.Tensor, new_borders: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of an output layer over `new_borders` that reproduces the bar distribution
    `layer` gives over `old_borders`.

    New bucket j copies the logits row of the old bucket holding its midpoint and adds the log of
    the share of that bucket's mass that falls in j (its width over the old width, or the tail's
    half-normal mass). Exact where new buckets nest inside old ones; a new bucket straddling an old
    border takes the left/right mass as if both old buckets were equally likely.
    """
    old_borders, new_borders = old_borders.double(), new_borders.double()
    num_old = len(old_borders) - 1
    even = RiemannDistribution(torch.zeros(num_old, dtype=torch.float64), old_borders)  # 1/K per old bucket
    inner_cdf = even.cdf(new_borders[1:-1])
    zero, one = inner_cdf.new_zeros(1), inner_cdf.new_ones(1)
    share = num_old * torch.diff(torch.cat([zero, inner_cdf, one]))  # [K_new]
    midpoints = (new_borders[1:] + new_borders[:-1]) / 2
    source = torch.searchsorted(old_borders[1:-1].contiguous(), midpoints.contiguous(), right=True)
    tiny = torch.finfo(torch.float32).tiny
    weight = layer.weight.detach()[source]
    bias = layer.bias.detach()[source] + torch.log(share.clamp_min(tiny)).to(layer.bias.dtype)
    return weight, bias


class RiemannHead(nn.Module):
    """Regression head: logits over the buckets define a `RiemannDistribution`; loss = NLL."""

    predicts_labels = False

    def __init__(self, borders: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("borders", borders.float())

    @property
    def num_outputs(self) -> int:
        return len(self.borders) - 1

    def distribution(self, logits: torch.Tensor) -> RiemannDistribution:
        return RiemannDistribution(logits.float(), self.borders)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `y` per query point: same shape as `y`."""
        return -self.distribution(logits).log_prob(y.float())

    def expected_loss(self, logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
        """`loss` averaged over targets y whose bucket k has probability `target_probs[..., k]`:
        per query point, the batch shape of `logits` without its last axis.

        A target in bucket k has log density log q_k - log w_k (w_k its width); in the two tail
        buckets the half-normal's shape stands in for 1/w_k. That part does not depend on the
        logits, so using the widths there too changes the value by a constant, not the gradient.
        """
        log_probs = self.distribution(logits).log_probs
        log_widths = torch.diff(self.borders).log()
        return -(target_probs.to(log_probs.dtype) * (log_probs - log_widths)).sum(-1)


class CategoricalHead(nn.Module):
    """Classification head: logits over `num_classes` labels; loss = cross-entropy."""

    predicts_labels = True

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def distribution(self, logits: torch.Tensor) -> CategoricalDistribution:
        return CategoricalDistribution(logits.float())

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the labels `y` per query point: same shape as `y`."""
        return F.cross_entropy(logits.float().flatten(0, -2), y.long().flatten(), reduction="none").view(y.shape)

    def expected_loss(self, logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
        """`loss` averaged over labels with probabilities `target_probs` [..., C]: per query point."""
        log_probs = self.distribution(logits).log_probs
        return -(target_probs.to(log_probs.dtype) * log_probs).sum(-1)
