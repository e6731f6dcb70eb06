"""The Riemann distribution against numeric integration and Monte Carlo."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from pfn.distributions import CategoricalDistribution, RiemannDistribution, RiemannMixture


@pytest.fixture
def distribution() -> RiemannDistribution:
    generator = torch.Generator().manual_seed(0)
    borders = torch.sort(torch.randn(21, generator=generator, dtype=torch.float64))[0]
    logits = 2 * torch.randn(4, 20, generator=generator, dtype=torch.float64)
    return RiemannDistribution(logits, borders)


def integrate_over(dist: RiemannDistribution, function) -> float:
    """Integrate function(y) * pdf(y) over the real line, piece by piece (one batch element)."""
    borders = dist.borders.numpy()

    def integrand(y: float) -> float:
        return function(y) * float(dist.pdf(torch.tensor(y, dtype=torch.float64)))

    pieces = [(-np.inf, borders[1])] + [(borders[k], borders[k + 1]) for k in range(1, len(borders) - 2)]
    pieces.append((borders[-2], np.inf))
    return sum(integrate.quad(integrand, low, high, epsabs=1e-12, epsrel=1e-10)[0] for low, high in pieces)


def test_density_integrates_to_one(distribution):
    for i in range(4):
        assert integrate_over(distribution[i], lambda y: 1.0) == pytest.approx(1.0, abs=1e-8)


def test_mean_and_variance_match_numeric_integration(distribution):
    for i in range(4):
        d = distribution[i]
        mean = integrate_over(d, lambda y: y)
        second_moment = integrate_over(d, lambda y: y * y)
        assert float(d.mean) == pytest.approx(mean, abs=1e-8)
        assert float(d.variance) == pytest.approx(second_moment - mean**2, abs=1e-8)


def test_cdf_matches_integrated_density(distribution):
    d = distribution[1]
    for y in [-3.0, -1.2, 0.0, 0.4, 2.5]:
        below = integrate_over(d, lambda t, y=y: float(t <= y))
        assert float(d.cdf(y)) == pytest.approx(below, abs=1e-6)


def test_cdf_and_icdf_are_inverses(distribution):
    q = torch.linspace(1e-4, 1 - 1e-4, 101, dtype=torch.float64)[:, None]
    assert torch.allclose(distribution.cdf(distribution.icdf(q)), q.expand(-1, 4), atol=1e-10)
    y = torch.linspace(-4, 4, 101, dtype=torch.float64)[:, None].expand(-1, 4)
    cdf = distribution.cdf(y)
    resolvable = (cdf > 1e-12) & (cdf < 1 - 1e-9)  # beyond this, float64 cannot tell cdf values apart
    assert resolvable.float().mean() > 0.8
    assert torch.allclose(distribution.icdf(cdf)[resolvable], y[resolvable], atol=1e-6)


def test_tails_reach_the_whole_real_line(distribution):
    assert torch.isinf(distribution.icdf(0.0)).all() and (distribution.icdf(0.0) < 0).all()
    assert torch.isinf(distribution.icdf(1.0)).all() and (distribution.icdf(1.0) > 0).all()
    far = torch.tensor([-50.0, 50.0], dtype=torch.float64)[:, None]
    assert torch.isfinite(distribution.log_prob(far)).all()


def test_log_prob_of_a_known_density():
    # Equal mass in 4 buckets on borders [0, 1, 2, 4, 5]: the inner buckets are uniform.
    borders = torch.tensor([0.0, 1.0, 2.0, 4.0, 5.0], dtype=torch.float64)
    d = RiemannDistribution(torch.zeros(4, dtype=torch.float64), borders)
    assert float(d.log_prob(1.5)) == pytest.approx(math.log(0.25 / 1.0))
    assert float(d.log_prob(3.0)) == pytest.approx(math.log(0.25 / 2.0))
    # Right tail: half-normal with its median at the outer border 5.
    scale = 1.0 / 0.6744897501960817
    expected = math.log(0.25) + math.log(2 / (scale * math.sqrt(2 * math.pi))) - 0.5 * (2.0 / scale) ** 2
    assert float(d.log_prob(6.0)) == pytest.approx(expected)
    assert float(d.cdf(5.0)) == pytest.approx(0.75 + 0.25 * 0.5)  # tail median at the outer border
    assert float(d.median) == pytest.approx(2.0)


def test_expected_improvement_and_probability_against_monte_carlo(distribution):
    samples = distribution.sample((400_000,), generator=torch.Generator().manual_seed(1))
    for best in [-1.0, 0.0, 0.7]:
        for maximize in (True, False):
            gain = (samples - best if maximize else best - samples).clamp_min(0)
            mc, se = gain.mean(0), gain.std(0) / math.sqrt(len(samples))
            ei = distribution.expected_improvement(best, maximize=maximize)
            assert ((ei - mc).abs() < 5 * se + 1e-4).all(), (best, maximize, ei, mc)
            pi = distribution.probability_of_improvement(best, maximize=maximize)
            mc_pi = ((samples > best) if maximize else (samples < best)).double().mean(0)
            assert torch.allclose(pi, mc_pi, atol=5e-3)


def test_samples_follow_the_distribution(distribution):
    samples = distribution.sample((200_000,), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(samples.mean(0), distribution.mean, atol=0.02)
    assert torch.allclose(samples.var(0), distribution.variance, rtol=0.03)


def test_affine_transform_changes_units(distribution):
    moved = distribution.affine(loc=3.0, scale=2.0)
    y = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)[:, None]
    assert torch.allclose(moved.log_prob(3 + 2 * y), distribution.log_prob(y) - math.log(2.0))
    assert torch.allclose(moved.mean, 3 + 2 * distribution.mean)
    assert torch.allclose(moved.variance, 4 * distribution.variance)
    assert torch.allclose(moved.icdf(0.3), 3 + 2 * distribution.icdf(0.3))
    with pytest.raises(ValueError, match="positive"):
        distribution.affine(0.0, -1.0)


def test_mode_is_the_densest_point():
    borders = torch.tensor([0.0, 1.0, 1.1, 3.0, 4.0], dtype=torch.float64)
    d = RiemannDistribution(torch.log(torch.tensor([0.1, 0.2, 0.5, 0.2], dtype=torch.float64)), borders)
    assert float(d.mode) == pytest.approx(1.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="borders"):
        RiemannDistribution(torch.zeros(3), torch.arange(3.0))
    d = RiemannDistribution(torch.zeros(3), torch.arange(4.0))
    with pytest.raises(ValueError, match="quantiles"):
        d.icdf(1.5)


def test_shared_and_per_point_borders_agree():
    # Training passes one border vector for all points; predictions in user units carry one per
    # dataset. Both paths of the bucket lookup must give the same densities.
    generator = torch.Generator().manual_seed(0)
    borders = torch.sort(torch.randn(101, generator=generator)).values
    logits = torch.randn(8, 5, 100, generator=generator)
    value = 1.5 * torch.randn(8, 5, generator=generator)
    shared = RiemannDistribution(logits, borders)
    per_point = RiemannDistribution(logits, borders.expand(8, 5, 101))
    assert torch.allclose(shared.log_prob(value), per_point.log_prob(value))
    assert torch.allclose(shared.cdf(value), per_point.cdf(value))


def test_nearest_to_a_normal_gives_each_bucket_the_normals_mass():
    borders = torch.linspace(-3.0, 3.0, 61)
    normal = torch.distributions.Normal(torch.tensor([0.2, 2.9, -1.0]), torch.tensor([0.5, 0.05, 2.0]))
    bar = RiemannDistribution.nearest_to(normal, borders)
    inner = borders[1:-1].double()
    assert torch.allclose(bar.cdf(inner[:, None]), normal.cdf(inner[:, None]).double(), atol=1e-9)


def test_nearest_to_a_normal_is_the_lowest_expected_nll_on_those_borders():
    borders = torch.linspace(-3.0, 3.0, 41)
    normal = torch.distributions.Normal(torch.tensor(0.3), torch.tensor(0.4))
    y = 0.3 + 0.4 * torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    bar = RiemannDistribution.nearest_to(normal, borders)
    expected_nll = -bar.log_prob(y).mean()
    for seed in range(3):
        noise = torch.randn(40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.1
        perturbed = RiemannDistribution(bar.logits + noise, borders)
        assert -perturbed.log_prob(y).mean() > expected_nll
    # The cost of the buckets' resolution is about width^2 / (24 sigma^2) nats (a uniform bucket's
    # KL from a locally linear density) and vanishes as the buckets get finer.
    gaps = [
        (-RiemannDistribution.nearest_to(normal, b).log_prob(y).mean() + normal.log_prob(y).mean()).item()
        for b in (borders, torch.linspace(-3.0, 3.0, 2001))
    ]
    assert gaps[0] == pytest.approx(0.15**2 / (24 * 0.4**2), rel=0.2)
    assert abs(gaps[1]) < 1e-4


def test_shared_and_per_point_borders_give_the_same_log_prob():
    # Shared borders (an expanded view) take a one-row search; per-point borders a batched one.
    g = torch.Generator().manual_seed(0)
    borders = torch.linspace(-2, 2, 9)
    logits = torch.randn(3, 4, 8, generator=g)
    y = torch.randn(3, 4, generator=g) * 2
    shared = RiemannDistribution(logits, borders)
    per_point = RiemannDistribution(logits, borders.expand(3, 4, 9).contiguous())
    assert torch.allclose(shared.log_prob(y), per_point.log_prob(y))


def test_mixture_averages_bucket_probabilities():
    borders = torch.linspace(-2, 2, 11)
    first, second = RiemannDistribution(torch.randn(3, 10), borders), RiemannDistribution(torch.randn(3, 10), borders)
    mixture = RiemannDistribution.mixture([first, second])
    torch.testing.assert_close(mixture.probs, (first.probs + second.probs) / 2)
    value = torch.tensor([-2.5, 0.1, 1.7])  # a tail, and two inner buckets
    torch.testing.assert_close(mixture.pdf(value), (first.pdf(value) + second.pdf(value)) / 2)


def test_mixture_of_members_on_borders_of_their_own_against_numeric_integration():
    """Members on their own borders (a linear-readout model's views) make a `RiemannMixture`:
    its density, cdf, quantiles, moments and expected improvement against integrals of the
    members' average density."""
    generator = torch.Generator().manual_seed(3)
    z = torch.linspace(-3, 3, 41, dtype=torch.float64)
    logits = -0.5 * ((z[1:] + z[:-1]) / 2) ** 2 + 0.3 * torch.randn(2, 40, generator=generator, dtype=torch.float64)
    first, second = RiemannDistribution(logits[0], z), RiemannDistribution(logits[1], 0.7 + 1.5 * z)
    mixture = RiemannDistribution.mixture([first, second])
    assert isinstance(mixture, RiemannMixture)
    y = torch.linspace(-6, 8, 57, dtype=torch.float64)
    torch.testing.assert_close(mixture.pdf(y), (first.pdf(y) + second.pdf(y)) / 2)

    def density(v: float) -> float:
        return float(mixture.pdf(torch.tensor(v, dtype=torch.float64)))

    cuts = sorted(set(first.borders.tolist()) | set(second.borders.tolist()))
    pieces = list(zip([-np.inf, *cuts], [*cuts, np.inf], strict=True))

    def integral(function) -> float:
        return sum(integrate.quad(lambda v: function(v) * density(v), a, b, epsabs=1e-12)[0] for a, b in pieces)

    assert integral(lambda v: 1.0) == pytest.approx(1.0, abs=1e-8)
    mean = integral(lambda v: v)
    assert mixture.mean.item() == pytest.approx(mean, abs=1e-7)
    assert mixture.variance.item() == pytest.approx(integral(lambda v: (v - mean) ** 2), abs=1e-6)
    for best in (-1.0, 0.5, 3.0):
        gain = integral(lambda v, best=best: max(v - best, 0.0))
        assert mixture.expected_improvement(best).item() == pytest.approx(gain, abs=1e-7)
        assert mixture.cdf(best).item() == pytest.approx(1 - integral(lambda v, best=best: float(v > best)), abs=1e-7)
    levels = torch.tensor([1e-4, 0.05, 0.5, 0.9, 0.9999], dtype=torch.float64)
    torch.testing.assert_close(mixture.cdf(mixture.icdf(levels)), levels, atol=1e-9, rtol=0)
    assert mixture.icdf(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == [-math.inf, math.inf]
    draws = mixture.sample((20000,), torch.Generator().manual_seed(0))
    assert draws.mean().item() == pytest.approx(mean, abs=4 * mixture.stddev.item() / math.sqrt(20000))


def test_mixture_members_must_share_a_batch_shape():
    borders = torch.linspace(-1, 1, 5)
    with pytest.raises(ValueError, match="at least one member"):
        RiemannMixture([])
    with pytest.raises(ValueError, match="one batch shape"):
        RiemannMixture([RiemannDistribution(torch.zeros(n, 4), borders) for n in (3, 2)])


def test_categorical_mixture_averages_class_probabilities():
    first, second = CategoricalDistribution(torch.randn(4, 3)), CategoricalDistribution(torch.randn(4, 3))
    mixture = CategoricalDistribution.mixture([first, second])
    torch.testing.assert_close(mixture.probs, (first.probs + second.probs) / 2)
