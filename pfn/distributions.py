"""The Riemann ("bar") distribution: a piecewise-constant density with half-normal tails.

K buckets are separated by borders b_0 < b_1 < ... < b_K. Bucket k (0 < k < K-1) has the
uniform density p_k / (b_{k+1} - b_k) on [b_k, b_{k+1}). The two outer buckets are replaced
by half-normal tails so the support is the whole real line: bucket 0 holds mass p_0 spread as
a half-normal over (-inf, b_1], bucket K-1 holds p_{K-1} over [b_{K-1}, inf). Each tail's
scale puts its median at the outer border (b_0 or b_K), so half the tail mass lies where the
bucket would have been.

All quantities are closed form and batched over any leading dimensions (the `batch_shape`);
`logits` are [..., K] and `borders` [..., K+1] (broadcastable to the logits' leading shape).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Phi^{-1}(0.75): the median of a half-normal with unit scale.
HALF_NORMAL_MEDIAN = 0.6744897501960817
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)


def _normal_sf(z: torch.Tensor) -> torch.Tensor:
    """1 - Phi(z), accurate in the upper tail."""
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


class _RealPredictive:
    """What follows from `log_prob`, `cdf`, `icdf` and `variance`, the same for every predictive
    distribution over a real-valued target."""

    def pdf(self, value: torch.Tensor | float) -> torch.Tensor:
        return self.log_prob(value).exp()

    @property
    def stddev(self) -> torch.Tensor:
        return self.variance.sqrt()

    @property
    def median(self) -> torch.Tensor:
        return self.icdf(0.5)

    def probability_of_improvement(self, best: torch.Tensor | float, maximize: bool = True) -> torch.Tensor:
        cdf = self.cdf(best)
        return 1.0 - cdf if maximize else cdf


class RiemannDistribution(_RealPredictive):
    """Predictive distribution over a real-valued target; one per query point.

    Args:
        logits: [..., K] unnormalised log-probabilities of the K buckets.
        borders: [..., K+1] strictly increasing bucket borders, broadcastable to the logits.
    """

    def __init__(self, logits: torch.Tensor, borders: torch.Tensor) -> None:
        num_buckets = logits.shape[-1]
        if num_buckets < 2:
            raise ValueError(f"a Riemann distribution needs at least 2 buckets, got {num_buckets}")
        if borders.shape[-1] != num_buckets + 1:
            raise ValueError(f"need {num_buckets + 1} borders for {num_buckets} buckets, got {borders.shape[-1]}")
        dtype = torch.promote_types(logits.dtype, torch.float32)
        self.logits = logits.to(dtype)
        self.batch_shape = logits.shape[:-1]
        borders = borders.to(dtype)
        self.borders = borders.expand(*self.batch_shape, num_buckets + 1)
        # From the borders as given (in training one row shared by every point), expanded as a
        # view: taken from the expanded borders, each use cost a [batch, queries, K] subtraction
        # (three per training step, a fifth of a CPU step with 5,000 buckets).
        self.widths = torch.diff(borders).expand(*self.batch_shape, num_buckets)
        self.num_buckets = num_buckets

    @classmethod
    def nearest_to(cls, normal: torch.distributions.Normal, borders: torch.Tensor) -> RiemannDistribution:
        """The bar distribution on `borders` closest to `normal` in KL(normal || bar).

        Every bucket gets the normal's mass over the region it owns (the tail buckets own
        everything beyond b_1 and b_{K-1}). If `normal` is the true predictive, no choice of
        bucket probabilities has a lower expected NLL, so its NLL is the floor that a bar head
        with these borders can reach: benchmarks use it to tell the head's resolution apart
        from the network's error. Masses are taken in log space, so far buckets stay finite.
        """
        dtype = torch.float64
        inner = borders.to(dtype)[..., 1:-1]  # [..., K-1]
        z = (inner - normal.loc.to(dtype)[..., None]) / normal.scale.to(dtype)[..., None]
        infinity = torch.full_like(z[..., :1], torch.inf)
        lower, upper = torch.cat([-infinity, z], -1), torch.cat([z, infinity], -1)  # [..., K]
        # log(Phi(upper) - Phi(lower)), from the side of the mean where it does not cancel.
        right_of_mean = lower > 0
        big = torch.where(right_of_mean, torch.special.log_ndtr(-lower), torch.special.log_ndtr(upper))
        small = torch.where(right_of_mean, torch.special.log_ndtr(-upper), torch.special.log_ndtr(lower))
        log_mass = big + torch.log(-torch.expm1(small - big))
        return cls(log_mass.clamp_min(-1e4), borders.to(dtype))

    # -- building blocks --------------------------------------------------------------------
    @property
    def log_probs(self) -> torch.Tensor:
        """[..., K] log-probability of each bucket."""
        return F.log_softmax(self.logits, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """[..., K] probability of each bucket."""
        return F.softmax(self.logits, dim=-1)

    @property
    def left_scale(self) -> torch.Tensor:
        return self.widths[..., 0] / HALF_NORMAL_MEDIAN

    @property
    def right_scale(self) -> torch.Tensor:
        return self.widths[..., -1] / HALF_NORMAL_MEDIAN

    def _broadcast(self, value: torch.Tensor | float) -> tuple[torch.Tensor, torch.Size]:
        """Value as a tensor of the broadcast shape of `value` and `batch_shape`."""
        value = torch.as_tensor(value, dtype=self.logits.dtype, device=self.logits.device)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        return value.expand(shape), shape

    @staticmethod
    def _expand(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return tensor.expand(*shape, tensor.shape[-1])

    def _bucket_of(self, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Index of the bucket holding each value; tails own everything beyond b_1 / b_{K-1}."""
        if all(stride == 0 for stride in self.borders.stride()[:-1]):
            # Borders shared by every point (as in training), expanded as a view: search the one
            # row rather than a per-point copy (a [batch, queries, K] copy per training step).
            shared = self.borders[(0,) * (self.borders.ndim - 1)]
            return torch.searchsorted(shared[1:-1].contiguous(), value.contiguous(), right=True)
        inner = self._expand(self.borders[..., 1:-1], shape).contiguous()
        return torch.searchsorted(inner, value.unsqueeze(-1).contiguous(), right=True).squeeze(-1)

    @staticmethod
    def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return tensor.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    # -- densities --------------------------------------------------------------------------
    def log_prob(self, value: torch.Tensor | float) -> torch.Tensor:
        value, shape = self._broadcast(value)
        bucket = self._bucket_of(value, shape)
        log_mass = self._take(self._expand(self.log_probs, shape), bucket)
        borders = self._expand(self.borders, shape)
        inner_density = -torch.log(self._take(self._expand(self.widths, shape), bucket))

        def log_half_normal(distance: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return math.log(2.0) - torch.log(scale) - 0.5 * math.log(2 * math.pi) - 0.5 * (distance / scale) ** 2

        left = log_half_normal(borders[..., 1] - value, self.left_scale.expand(shape))
        right = log_half_normal(value - borders[..., -2], self.right_scale.expand(shape))
        density = torch.where(bucket == 0, left, torch.where(bucket == self.num_buckets - 1, right, inner_density))
        return log_mass + density

    def cdf(self, value: torch.Tensor | float) -> torch.Tensor:
        value, shape = self._broadcast(value)
        bucket = self._bucket_of(value, shape)
        probs = self._expand(self.probs, shape)
        borders = self._expand(self.borders, shape)
        mass_below = torch.cumsum(probs, -1) - probs  # [..., K] mass of all buckets before k
        fraction = (value - self._take(borders, bucket)) / self._take(self._expand(self.widths, shape), bucket)
        inner = self._take(mass_below, bucket) + self._take(probs, bucket) * fraction
        root2 = math.sqrt(2.0)
        left = probs[..., 0] * torch.erfc((borders[..., 1] - value) / (self.left_scale.expand(shape) * root2))
        right = mass_below[..., -1] + probs[..., -1] * torch.erf(
            (value - borders[..., -2]) / (self.right_scale.expand(shape) * root2)
        )
        cdf = torch.where(bucket == 0, left, torch.where(bucket == self.num_buckets - 1, right, inner))
        return cdf.clamp(0.0, 1.0)

    def icdf(self, quantile: torch.Tensor | float) -> torch.Tensor:
        """The inverse of `cdf`; `quantile` in [0, 1] broadcasts with the batch shape."""
        quantile, shape = self._broadcast(quantile)
        if ((quantile < 0) | (quantile > 1)).any():
            raise ValueError("quantiles must lie in [0, 1]")
        probs = self._expand(self.probs, shape)
        borders = self._expand(self.borders, shape)
        mass_upto = torch.cumsum(probs, -1)
        mass_below = mass_upto - probs
        bucket = torch.searchsorted(mass_upto.contiguous(), quantile.unsqueeze(-1).contiguous(), right=True)
        bucket = bucket.squeeze(-1).clamp(max=self.num_buckets - 1)
        p = self._take(probs, bucket).clamp_min(torch.finfo(probs.dtype).tiny)
        fraction = ((quantile - self._take(mass_below, bucket)) / p).clamp(0.0, 1.0)
        inner = self._take(borders, bucket) + fraction * self._take(self._expand(self.widths, shape), bucket)
        # Tails invert the half-normal cdf; q -> 0 and q -> 1 give -inf and +inf.
        left_fraction = (quantile / probs[..., 0].clamp_min(torch.finfo(probs.dtype).tiny)).clamp(0.0, 1.0)
        left = borders[..., 1] - self.left_scale.expand(shape) * torch.special.ndtri(1.0 - left_fraction / 2)
        right_fraction = (quantile - mass_below[..., -1]) / probs[..., -1].clamp_min(torch.finfo(probs.dtype).tiny)
        right = borders[..., -2] + self.right_scale.expand(shape) * torch.special.ndtri(
            (1.0 + right_fraction.clamp(0.0, 1.0)) / 2
        )
        result = torch.where(bucket == 0, left, torch.where(bucket == self.num_buckets - 1, right, inner))
        # The support is the whole real line, even where rounding left a tail with no visible mass.
        result = torch.where(quantile >= 1, torch.inf, result)
        return torch.where(quantile <= 0, -torch.inf, result)

    quantile = icdf

    # -- summaries --------------------------------------------------------------------------
    def _bucket_means(self) -> torch.Tensor:
        """[..., K] mean of the density within each bucket (tails: half-normal means)."""
        means = (self.borders[..., 1:] + self.borders[..., :-1]) / 2
        left = self.borders[..., 1] - self.left_scale * SQRT_2_OVER_PI
        right = self.borders[..., -2] + self.right_scale * SQRT_2_OVER_PI
        return torch.cat([left[..., None], means[..., 1:-1], right[..., None]], dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        return (self.probs * self._bucket_means()).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        # Law of total variance over buckets: within-bucket variance + spread of bucket means.
        within = self.widths**2 / 12
        tail_factor = 1.0 - 2.0 / math.pi
        within = torch.cat(
            [
                (self.left_scale**2 * tail_factor)[..., None],
                within[..., 1:-1],
                (self.right_scale**2 * tail_factor)[..., None],
            ],
            dim=-1,
        )
        spread = (self._bucket_means() - self.mean[..., None]) ** 2
        return (self.probs * (within + spread)).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        """Location of the highest density (a bucket's midpoint, or a tail's inner border)."""
        peak_density = self.probs / self.widths
        half_normal_peak = 2.0 / math.sqrt(2.0 * math.pi)
        peak_density[..., 0] = self.probs[..., 0] * half_normal_peak / self.left_scale
        peak_density[..., -1] = self.probs[..., -1] * half_normal_peak / self.right_scale
        location = (self.borders[..., 1:] + self.borders[..., :-1]) / 2
        location[..., 0] = self.borders[..., 1]
        location[..., -1] = self.borders[..., -2]
        return self._take(location, peak_density.argmax(-1))

    def sample(self, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws of shape sample_shape + batch_shape, by inverting the cdf."""
        uniform = torch.rand(
            *sample_shape, *self.batch_shape, generator=generator, device=self.logits.device, dtype=self.logits.dtype
        )
        return self.icdf(uniform)

    # -- Bayesian optimisation ----------------------------------------------------------------
    def expected_improvement(self, best: torch.Tensor | float, maximize: bool = True) -> torch.Tensor:
        """E[max(y - best, 0)] (or E[max(best - y, 0)] when minimising), in closed form."""
        best, shape = self._broadcast(best)
        if not maximize:
            # (best - y)+ = (y - best)+ - (y - best)
            return self.expected_improvement(best, maximize=True) - (self.mean.expand(shape) - best)
        f = best.unsqueeze(-1)
        borders = self._expand(self.borders, shape)
        lower, upper = borders[..., :-1], borders[..., 1:]
        probs = self._expand(self.probs, shape)
        # Uniform bucket [a, b): mean gain above f.
        inner = torch.where(
            f <= lower,
            (lower + upper) / 2 - f,
            torch.where(f >= upper, torch.zeros_like(f + lower), (upper - f).clamp_min(0) ** 2 / (2 * (upper - lower))),
        )
        # Right tail: y = c + z with z half-normal(s).
        c, s = borders[..., -2], self.right_scale.expand(shape)
        d = best - c
        above = 2 * (s * _normal_pdf(d / s) - d * _normal_sf(d / s))
        right = torch.where(d <= 0, -d + s * SQRT_2_OVER_PI, above)
        # Left tail: y = c - z; only the part of the tail above `best` counts.
        c, s = borders[..., 1], self.left_scale.expand(shape)
        e = c - best
        left_gain = e - s * SQRT_2_OVER_PI + 2 * (s * _normal_pdf(e / s) - e * _normal_sf(e / s))
        left = torch.where(e > 0, left_gain, torch.zeros_like(e))
        gains = torch.cat([left[..., None], inner[..., 1:-1], right[..., None]], dim=-1)
        return (probs * gains).sum(-1).clamp_min(0.0)

    # -- units ------------------------------------------------------------------------------
    def affine(self, loc: torch.Tensor | float, scale: torch.Tensor | float) -> RiemannDistribution:
        """The distribution of loc + scale * y; `scale` must be positive. Batched like the logits."""
        loc = torch.as_tensor(loc, dtype=self.borders.dtype, device=self.borders.device)
        scale = torch.as_tensor(scale, dtype=self.borders.dtype, device=self.borders.device)
        if (scale <= 0).any():
            raise ValueError("affine scale must be positive")
        return RiemannDistribution(self.logits, self.borders * scale[..., None] + loc[..., None])

    @classmethod
    def mixture(cls, members: list[RiemannDistribution]) -> RiemannDistribution | RiemannMixture:
        """The equal-weight mixture of the members. On shared borders it is again a bar
        distribution, with the average of their bucket probabilities; members on borders of
        their own (a model with a linear readout places its buckets per query) make a
        `RiemannMixture`."""
        first = members[0]
        if any(not torch.equal(member.borders, first.borders) for member in members[1:]):
            return RiemannMixture(members)
        return cls(_mixture_log_probs(members), first.borders)

    def __getitem__(self, index) -> RiemannDistribution:
        return RiemannDistribution(self.logits[index], self.borders[index])

    def __repr__(self) -> str:
        return f"RiemannDistribution(batch_shape={tuple(self.batch_shape)}, num_buckets={self.num_buckets})"


class RiemannMixture(_RealPredictive):
    """The equal-weight mixture of bar distributions on borders of their own, one per query
    point; it answers what a `RiemannDistribution` answers, exactly, except `mode` (the densest
    of the members' modes) and the quantiles (by bisection on the cdf, to float64 precision).

    Args:
        members: M >= 1 bar distributions of one batch shape.
    """

    BISECTION_STEPS = 60

    def __init__(self, members: list[RiemannDistribution]) -> None:
        if not members:
            raise ValueError("a mixture needs at least one member")
        if any(member.batch_shape != members[0].batch_shape for member in members):
            shapes = sorted({tuple(member.batch_shape) for member in members})
            raise ValueError(f"mixture members must share one batch shape, got {shapes}")
        self.members = members
        self.batch_shape = members[0].batch_shape

    def _stack(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(torch.broadcast_tensors(*values))  # [M, ...]

    def log_prob(self, value: torch.Tensor | float) -> torch.Tensor:
        log_probs = self._stack([member.log_prob(value) for member in self.members])
        return log_probs.logsumexp(0) - math.log(len(self.members))

    def cdf(self, value: torch.Tensor | float) -> torch.Tensor:
        return self._stack([member.cdf(value) for member in self.members]).mean(0)

    def icdf(self, quantile: torch.Tensor | float) -> torch.Tensor:
        """The inverse of `cdf`. The mixture's q-quantile lies between its members' q-quantiles
        (at the smallest, no member's cdf exceeds q; at the largest, none falls short of it), and
        bisection between them halves that interval each step."""
        first = self.members[0].logits
        quantile = torch.as_tensor(quantile, dtype=first.dtype, device=first.device)  # as a member's icdf takes it
        quantiles = self._stack([member.icdf(quantile) for member in self.members])
        low, high = quantiles.min(0).values.double(), quantiles.max(0).values.double()
        target = quantile.double().expand(low.shape)
        finite = low.isfinite() & high.isfinite()
        low, high = torch.where(finite, low, 0.0), torch.where(finite, high, 0.0)
        members = [RiemannDistribution(m.logits.double(), m.borders.double()) for m in self.members]
        for _ in range(self.BISECTION_STEPS):
            middle = (low + high) / 2
            below = self._stack([member.cdf(middle) for member in members]).mean(0) < target
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        result = torch.where(finite, (low + high) / 2, quantiles[0].double())  # q = 0 or 1: -inf or inf
        return result.to(self.members[0].logits.dtype)

    quantile = icdf

    @property
    def mean(self) -> torch.Tensor:
        return self._stack([member.mean for member in self.members]).mean(0)

    @property
    def variance(self) -> torch.Tensor:
        # Law of total variance over members.
        means = self._stack([member.mean for member in self.members])
        variances = self._stack([member.variance for member in self.members])
        return variances.mean(0) + means.var(0, unbiased=False)

    @property
    def mode(self) -> torch.Tensor:
        """The densest of the members' modes (a mixture's own mode can lie between them)."""
        candidates = self._stack([member.mode for member in self.members])  # [M, ...]
        densest = self.log_prob(candidates).argmax(0)
        return candidates.gather(0, densest.unsqueeze(0)).squeeze(0)

    def sample(self, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws of shape sample_shape + batch_shape: a member chosen at random, then its icdf."""
        first = self.members[0].logits
        shape = (*sample_shape, *self.batch_shape)
        uniform = torch.rand(*shape, generator=generator, device=first.device, dtype=first.dtype)
        which = torch.randint(len(self.members), shape, generator=generator, device=first.device)
        draws = self._stack([member.icdf(uniform) for member in self.members])
        return draws.gather(0, which.unsqueeze(0)).squeeze(0)

    def expected_improvement(self, best: torch.Tensor | float, maximize: bool = True) -> torch.Tensor:
        return self._stack([member.expected_improvement(best, maximize) for member in self.members]).mean(0)

    def affine(self, loc: torch.Tensor | float, scale: torch.Tensor | float) -> RiemannMixture:
        """The distribution of loc + scale * y; `scale` must be positive."""
        return RiemannMixture([member.affine(loc, scale) for member in self.members])

    def __getitem__(self, index) -> RiemannMixture:
        return RiemannMixture([member[index] for member in self.members])

    def __repr__(self) -> str:
        return f"RiemannMixture(batch_shape={tuple(self.batch_shape)}, members={len(self.members)})"


class CategoricalDistribution:
    """Predictive distribution over class labels 0..C-1; one per query point.

    Args:
        logits: [..., C] unnormalised log-probabilities.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        self.batch_shape = logits.shape[:-1]
        self.num_classes = logits.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        """[..., C] class probabilities."""
        return F.softmax(self.logits, dim=-1)

    @property
    def log_probs(self) -> torch.Tensor:
        return F.log_softmax(self.logits, dim=-1)

    def log_prob(self, label: torch.Tensor | int) -> torch.Tensor:
        label = torch.as_tensor(label, device=self.logits.device)
        if label.is_floating_point() and not torch.equal(label, label.round()):
            raise ValueError("labels must be integers")
        label = label.long()
        if ((label < 0) | (label >= self.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        shape = torch.broadcast_shapes(label.shape, self.batch_shape)
        log_probs = self.log_probs.expand(*shape, self.num_classes)
        return log_probs.gather(-1, label.expand(shape).unsqueeze(-1)).squeeze(-1)

    @property
    def mode(self) -> torch.Tensor:
        """The most probable label."""
        return self.logits.argmax(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.log_probs).sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels of shape sample_shape + batch_shape."""
        count = math.prod(sample_shape)
        flat = self.probs.reshape(-1, self.num_classes)
        draws = torch.multinomial(flat, count, replacement=True, generator=generator)  # [batch, count]
        return draws.T.reshape(*sample_shape, *self.batch_shape)

    @classmethod
    def mixture(cls, members: list[CategoricalDistribution]) -> CategoricalDistribution:
        """The equal-weight mixture: the average of the members' class probabilities."""
        return cls(_mixture_log_probs(members))

    def __getitem__(self, index) -> CategoricalDistribution:
        return CategoricalDistribution(self.logits[index])

    def __repr__(self) -> str:
        return f"CategoricalDistribution(batch_shape={tuple(self.batch_shape)}, num_classes={self.num_classes})"


def _mixture_log_probs(members: list[RiemannDistribution] | list[CategoricalDistribution]) -> torch.Tensor:
    """[..., K] log of the average of the members' probabilities over the same K outcomes."""
    return torch.stack([member.log_probs for member in members]).logsumexp(0) - math.log(len(members))
