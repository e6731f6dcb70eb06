"""train.exact_targets: the loss averaged over the exact posterior predictive is the mean of the
usual loss over targets drawn from it, and training with it works end to end."""

import math

import pytest
import torch

import pfn
from pfn.config import load_config
from pfn.distributions import CategoricalDistribution, RiemannDistribution
from pfn.exact_targets import exact_targets
from pfn.heads import CategoricalHead, LocationScaleHead, RiemannHead, normal_bucket_probs, readout_borders
from pfn.scaling import context_standardization
from pfn.training import PFNModule, draw_training_batch, train
from priors import build_prior
from tests.conftest import ROOT


def test_riemann_expected_loss_is_the_mean_loss_over_draws():
    torch.manual_seed(0)
    head = RiemannHead(torch.linspace(-3, 3, 61))
    logits = 2 * torch.randn(4, 60)
    # Well inside the borders, so the tails (where the constant differs) hold no mass.
    normal = torch.distributions.Normal(torch.tensor([-0.5, 0.0, 0.2, 0.5]), torch.tensor([0.1, 0.5, 0.3, 0.05]))
    expected = head.expected_loss(logits, normal)
    draws = normal.sample((200_000,))  # [draws, 4]
    losses = head.loss(logits.expand(len(draws), 4, 60), draws)
    monte_carlo, error = losses.mean(0), losses.std(0) / math.sqrt(len(draws))
    assert (expected - monte_carlo).abs().max() < 4 * error.max() + 1e-4
    assert not torch.allclose(expected[0], expected[1])


def test_location_scale_expected_loss_is_the_mean_loss_over_draws():
    """Both parts of the location-scale loss (the readout's Gaussian NLL and the shape's NLL):
    the closed form over a Normal target equals the average over its draws."""
    torch.manual_seed(0)
    head = LocationScaleHead(readout_borders(200))
    loc, log_scale = torch.tensor([0.3, -1.0, 0.0]), torch.tensor([-2.0, 0.5, 0.0])
    logits = torch.cat([0.5 * torch.randn(3, 200), loc[:, None], log_scale[:, None]], dim=-1)
    # Targets near the readout's location, so that almost no mass reaches the tail buckets.
    normal = torch.distributions.Normal(torch.tensor([0.32, -0.8, 0.1]), torch.tensor([0.05, 0.6, 0.4]))
    expected = head.expected_loss(logits, normal)
    draws = normal.sample((200_000,))
    losses = head.loss(logits.expand(len(draws), 3, 202), draws)
    monte_carlo, error = losses.mean(0), losses.std(0) / math.sqrt(len(draws))
    assert (expected - monte_carlo).abs().max() < 4 * error.max() + 1e-3
    # The predictive is loc + scale * z: its NLL is the shape's part of the loss.
    shape_part = head.loss(logits, draws[:5]) + torch.distributions.Normal(loc, log_scale.exp()).log_prob(draws[:5])
    torch.testing.assert_close(shape_part, -head.distribution(logits).log_prob(draws[:5]), atol=1e-4, rtol=1e-4)


def test_normal_bucket_probs_match_the_log_space_masses():
    borders = torch.sort(torch.randn(1001)).values
    normal = torch.distributions.Normal(torch.tensor([-0.3, 0.0, 2.0]), torch.tensor([1e-3, 0.7, 0.05]))
    fast = normal_bucket_probs(normal, borders)
    assert fast.shape == (3, 1000) and torch.allclose(fast.sum(-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(fast.double(), RiemannDistribution.nearest_to(normal, borders).probs, atol=2e-7)


def test_categorical_expected_loss_is_the_mean_loss_over_draws():
    torch.manual_seed(0)
    head = CategoricalHead(5)
    logits = torch.randn(3, 5)
    target = CategoricalDistribution(torch.randn(3, 5))
    labels = target.sample((100_000,))  # [draws, 3]
    losses = head.loss(logits.expand(len(labels), 3, 5), labels)
    monte_carlo, error = losses.mean(0), losses.std(0) / math.sqrt(len(labels))
    assert (head.expected_loss(logits, target.probs) - monte_carlo).abs().max() < 4 * error.max()


# The GP with hyperpriors of configs/gp_hyper.yaml, on targets standardised by each context: exact
# given each dataset's drawn hyperparameters, then moved onto the standardised buckets.
GP_HYPER = [
    *("--prior.lengthscale", "{distribution: gamma, concentration: 3.0, rate: 6.0}"),
    *("--prior.outputscale", "{distribution: gamma, concentration: 2.0, rate: 0.15}"),
    *("--prior.noise", "{distribution: gamma, concentration: 1.0e-4, rate: 1.0}"),
    *("--data.standardize_y", "true"),
]


@pytest.mark.parametrize(
    "config_name, overrides",
    [("tiny.yaml", []), ("tiny_gmm.yaml", []), ("tiny.yaml", GP_HYPER)],
    ids=["gp", "gmm", "gp_hyper"],
)
def test_exact_loss_matches_the_drawn_loss_on_average(config_name, overrides):
    def module(seed: int, *more: str) -> PFNModule:
        torch.manual_seed(seed)
        built = PFNModule(load_config(ROOT / "configs" / config_name, [*overrides, *more]).to_dict())
        built.setup("fit")
        return built

    first, second = module(0), module(1)
    first_exact, second_exact = module(0, "--train.exact_targets", "true"), module(1, "--train.exact_targets", "true")
    config = first_exact.config  # whose batches carry what the exact targets need

    # What the loss says about the network: how much better one network is than another, per
    # batch. (The exact loss's value is off by a constant in the tail buckets; the difference of
    # two networks' losses is not.) Over 30 batches the drawn targets' figure averages to the exact one.
    drawn, exact = [], []
    with torch.no_grad():
        for step in range(30):
            batch = draw_training_batch(first.prior, config, step)
            drawn.append(first.loss(batch) - second.loss(batch))
            exact.append(first_exact.loss(batch) - second_exact.loss(batch))
    drawn, exact = torch.stack(drawn), torch.stack(exact)
    assert abs((drawn - exact).mean()) < 3 * (drawn - exact).std() / math.sqrt(30) + 1e-4
    assert (drawn - exact).abs().max() > 1e-4  # one batch's draws do differ from their average


def test_training_with_exact_targets_learns(tmp_path):
    overrides = ["--train.output_dir", str(tmp_path), "--train.progress_bar", "false", "--logger", "none"]
    config = load_config(ROOT / "configs" / "tiny_gmm.yaml", [*overrides, "--train.exact_targets", "true"])
    model = pfn.load(train(config))
    batch = build_prior(model.prior_spec).sample(64, 40, 2, torch.Generator().manual_seed(7))
    dist = model.predict(batch.x[:, :30], batch.y[:, :30], batch.x[:, 30:], normalize=False)
    assert -dist.log_prob(batch.y[:, 30:]).mean() < math.log(model.config.model.num_classes) - 0.3
    assert model.config.train.exact_targets  # recorded in the exported config


def test_exact_targets_need_a_prior_with_a_closed_form_predictive(tmp_path):
    bnn = load_config(ROOT / "configs" / "bnn.yaml", ["--train.exact_targets", "true"])
    with pytest.raises(ValueError, match="train.exact_targets needs a prior with a closed-form posterior"):
        PFNModule(bnn.to_dict())
    hyper = build_prior({"name": "gp", "lengthscale": {"distribution": "gamma", "concentration": 3.0, "rate": 6.0}})
    with pytest.raises(ValueError, match="needs the hyperparameters each dataset was drawn with"):
        exact_targets(hyper, torch.zeros(1, 2, 1), torch.zeros(1, 2), torch.zeros(1, 3, 1))


def test_exact_targets_on_standardised_buckets_under_hyperpriors():
    """With data.standardize_y the head's buckets are for (y - loc) / scale: the exact targets
    are the drawn hyperparameters' predictive moved there, and drawn standardised targets land
    where those targets put the mass."""
    config = load_config(ROOT / "configs" / "tiny.yaml", [*GP_HYPER, "--train.exact_targets", "true"])
    module = PFNModule(config.to_dict())
    module.setup("fit")
    batch = draw_training_batch(module.prior, config, step=0)
    x, y, n = batch["x"], batch["y"], 12
    loc, scale = context_standardization(y[:, :n])
    target = exact_targets(module.prior, x[:, :n], y[:, :n], x[:, n:], batch["hyperparameters"], (loc, scale))
    given = module.prior.posterior_predictive(x[:, :n], y[:, :n], x[:, n:], batch["hyperparameters"])
    torch.testing.assert_close(target.loc, (given.loc - loc.double()) / scale)
    torch.testing.assert_close(target.scale, given.scale / scale)
    targets = normal_bucket_probs(target, module.head.borders)  # [b, q, buckets]
    # The bucket of each drawn standardised query target: under the exact targets it is far more
    # probable than a bucket picked at random, and more than under the unstandardised predictive.
    bucket = torch.searchsorted(module.head.borders[1:-1], ((y[:, n:] - loc) / scale).contiguous())
    hit = targets.gather(-1, bucket[..., None]).squeeze(-1)
    unmoved = normal_bucket_probs(given, module.head.borders).gather(-1, bucket[..., None]).squeeze(-1)
    assert hit.mean() > 10 / module.head.borders.numel() and hit.mean() > 2 * unmoved.mean()
