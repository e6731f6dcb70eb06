"""Learning-curve prior: constraints, family formulas, determinism, shapes."""

import math
from pathlib import Path

import pytest
import torch

from pfn.config import load_config
from pfn.training import draw_training_batch
from priors import LearningCurvePrior, build_prior
from priors.lc import (
    FAMILIES,
    CurveModel,
    LogNormal,
    Uniform,
    exp4,
    hill3,
    ilog2,
    janoschek,
    log_power,
    loglog_linear,
    mmf,
    pow3,
    pow4,
    vapor_pressure,
    weibull,
)

ROOT = Path(__file__).resolve().parent.parent


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_kept_curve_satisfies_the_constraints():
    draw = LearningCurvePrior().draw(2000, 100, generator(0))
    assert draw.curves.shape == (2000, 100)
    assert draw.curves.min() >= 0 and draw.curves.max() <= 1
    assert (draw.curves[:, -1] > draw.curves[:, 0]).all()
    # The curves are the model's curves for the returned parameters, and y is them plus noise.
    assert torch.allclose(CurveModel().curves(draw.theta, draw.epochs), draw.curves)
    residual_std = (draw.y - draw.curves).std(1)
    assert torch.allclose(residual_std, draw.noise_std, rtol=0.4)


def test_rejection_does_remove_curves():
    # Unconstrained draws often leave [0, 1] or decrease, so the constraint check above is not vacuous.
    model = CurveModel()
    epochs = torch.arange(1, 101, dtype=torch.float64)
    passed = model.satisfies_constraints(model.curves(model.sample_parameters(5000, generator(0)), epochs))
    assert 0.05 < passed.double().mean() < 0.6


def test_family_formulas_against_hand_computed_values():
    t = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    # pow3: c - a t^-alpha with c = 0.9, a = 0.5, alpha = 0.5: 0.9 - 0.5 / sqrt(t).
    assert torch.allclose(
        pow3(t, torch.tensor(0.9), torch.tensor(0.5), torch.tensor(0.5)), t.new_tensor([0.4, 0.65, 0.9 - 0.5 / 3])
    )
    # ilog2: c - a / ln(t + 1) with c = 0.8, a = 0.2.
    expected = [0.8 - 0.2 / math.log(2), 0.8 - 0.2 / math.log(5), 0.8 - 0.2 / math.log(10)]
    assert torch.allclose(ilog2(t, torch.tensor(0.8), torch.tensor(0.2)), t.new_tensor(expected))
    # janoschek: a - (a - beta) exp(-k t^delta) with a = 0.9, beta = 0.1, k = 0.5, delta = 1.
    expected = [0.9 - 0.8 * math.exp(-0.5 * v) for v in (1, 4, 9)]
    args = [torch.tensor(v) for v in (0.9, 0.1, 0.5, 1.0)]
    assert torch.allclose(janoschek(t, *args), t.new_tensor(expected))


def test_domhan_family_formulas_against_hand_computed_values():
    t = torch.tensor([1.0, 4.0], dtype=torch.float64)

    def at(formula, *parameters: float) -> list[float]:
        return formula(t, *(torch.tensor(v, dtype=torch.float64) for v in parameters)).tolist()

    # Domhan et al. (2015), Table 1, evaluated by hand at t = 1 and t = 4.
    assert at(vapor_pressure, -0.5, -1.0, 0.1) == pytest.approx(
        [math.exp(-1.5), math.exp(-0.5 - 0.25 + 0.1 * math.log(4))]
    )
    assert at(loglog_linear, 0.5, 1.5) == pytest.approx([math.log(1.5), math.log(0.5 * math.log(4) + 1.5)])
    assert at(hill3, 0.8, 2.0, 2.0) == pytest.approx([0.8 * 1 / 5, 0.8 * 16 / 20])
    assert at(log_power, 0.9, 1.0, -2.0) == pytest.approx([0.9 / (1 + math.e**2), 0.9 / (1 + (4 / math.e) ** -2)])
    assert at(pow4, 0.9, 0.5, 1.0, 2.0) == pytest.approx([0.9 - 1.5**-2, 0.9 - 3.0**-2])
    assert at(mmf, 0.9, 0.1, 0.5, 2.0) == pytest.approx([0.9 - 0.8 / 1.25, 0.9 - 0.8 / 5])
    assert at(exp4, 0.9, 0.5, 0.5, -1.0) == pytest.approx([0.9 - math.exp(-1.5), 0.9 - math.exp(-2.0)])
    assert at(weibull, 0.9, 0.1, 0.5, 2.0) == pytest.approx([0.9 - 0.8 * math.exp(-0.25), 0.9 - 0.8 * math.exp(-4)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_alone_gives_valid_curves_often_enough(family):
    model = CurveModel([family])
    epochs = torch.arange(1, 101, dtype=torch.float64)
    passed = model.satisfies_constraints(model.curves(model.sample_parameters(4000, generator(2)), epochs))
    assert 0.2 < passed.double().mean() <= 1.0  # rejection stays cheap with any single family
    draw = LearningCurvePrior([family]).draw(64, 100, generator(3))
    assert draw.curves.min() >= 0 and draw.curves.max() <= 1 and (draw.curves[:, -1] > draw.curves[:, 0]).all()
    assert torch.isfinite(model.log_prior(draw.theta)).all()


def test_normalized_weights_average_the_families():
    model = CurveModel(["pow3", "ilog2"], normalize_weights=True)
    theta = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.25, 0.8, 0.2]], dtype=torch.float64)
    t = torch.tensor([4.0], dtype=torch.float64)
    expected = (0.5 * 0.65 + 0.25 * (0.8 - 0.2 / math.log(5))) / 0.75
    assert model.curves(theta, t).item() == pytest.approx(expected)
    # All eleven families: unnormalised sums almost never stay in [0, 1]; normalised ones do.
    every = sorted(FAMILIES)
    with pytest.raises(RuntimeError, match="passed the constraints"):
        LearningCurvePrior(every).draw(256, 100, generator(0))
    prior = LearningCurvePrior(every, normalize_weights=True)
    draw = prior.draw(256, 100, generator(0))
    assert draw.theta.shape == (256, CurveModel(every).num_parameters)
    assert torch.allclose(prior.model.curves(draw.theta, draw.epochs), draw.curves)
    assert prior.spec["normalize_weights"] is True and build_prior(prior.spec).model.normalize_weights
    assert "normalize_weights" not in LearningCurvePrior().spec  # earlier models' specs are unchanged


def test_weighted_sum_uses_the_parameter_layout():
    model = CurveModel()
    assert model.parameter_names == [
        "pow3.weight", "pow3.c", "pow3.a", "pow3.alpha",
        "ilog2.weight", "ilog2.c", "ilog2.a",
        "janoschek.weight", "janoschek.a", "janoschek.beta", "janoschek.k", "janoschek.delta",
    ]  # fmt: skip
    theta = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.25, 0.8, 0.2, 1.0, 0.9, 0.1, 0.5, 1.0]], dtype=torch.float64)
    t = torch.tensor([4.0], dtype=torch.float64)
    expected = 0.5 * 0.65 + 0.25 * (0.8 - 0.2 / math.log(5)) + (0.9 - 0.8 * math.exp(-2.0))
    assert model.curves(theta, t).item() == pytest.approx(expected)


def test_parameter_priors_sample_and_score_their_support():
    model = CurveModel(["pow3"])
    theta = model.sample_parameters(20_000, generator(1))
    assert theta[:, 1].min() >= 0 and theta[:, 1].max() <= 1.25  # c ~ U(0, 1.25)
    assert theta[:, 2].abs().max() <= 0.6  # a ~ U(-0.6, 0.6)
    assert theta[:, 3].log().std().item() == pytest.approx(2.0, rel=0.05)  # alpha ~ LogNormal(0, 2)
    assert torch.isfinite(model.log_prior(theta)).all()
    outside = theta[:3].clone()
    outside[0, 1], outside[1, 2], outside[2, 3] = 1.3, -0.7, -1.0
    assert torch.isneginf(model.log_prior(outside)).all()
    # Densities: U(0, 1.25) is 0.8; LogNormal(0, 1) at 1 is 1 / sqrt(2 pi).
    assert Uniform(0.0, 1.25).log_prob(torch.tensor(0.3)).item() == pytest.approx(math.log(0.8))
    assert LogNormal(0.0, 1.0).log_prob(torch.tensor(1.0)).item() == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_same_seed_same_batch_and_shapes():
    prior = build_prior({"name": "lc"})
    a, b, c = (prior.sample(8, 50, 1, generator(seed)) for seed in (0, 0, 1))
    assert a.x.shape == (8, 50, 1) and a.y.shape == (8, 50) and a.y_noiseless.shape == (8, 50)
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x) and not torch.equal(a.y, c.y)
    # x = epoch / T, in epoch order, so a prefix of points is an observed prefix of the curve.
    assert torch.allclose(a.x[0, :, 0], torch.arange(1, 51) / 50)


def test_configurable_families_and_noise():
    prior = LearningCurvePrior(families=["pow3"], noise_std=0.05)
    draw = prior.draw(500, 30, generator(0))
    assert draw.theta.shape == (500, 4) and torch.all(draw.noise_std == 0.05)
    assert prior.spec == {"name": "lc", "families": ["pow3"], "noise_std": 0.05}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown curve family 'pow5'"):
        LearningCurvePrior(families=["pow5"])
    with pytest.raises(ValueError, match="normalize_weights must be true or false"):
        LearningCurvePrior(normalize_weights="yes")
    with pytest.raises(ValueError, match="noise_std"):
        LearningCurvePrior(noise_std=-1.0)
    with pytest.raises(ValueError, match="num_features=2"):
        LearningCurvePrior().sample(2, 10, 2, generator(0))
    assert LearningCurvePrior().model.families == ["pow3", "ilog2", "janoschek"]  # LC-PFN's, by default


def test_training_batches_from_the_lc_config():
    config = load_config(ROOT / "configs" / "lc.yaml", ["--data.batch_size", "4"])
    batch = draw_training_batch(build_prior(config.prior), config, step=0)
    assert batch["x"].shape == (4, 100, 1) and 1 <= batch["num_context"] <= 99
