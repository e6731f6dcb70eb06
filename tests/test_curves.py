"""Learning-curve extrapolation (`PFN.extrapolate`), the MCMC-PP baseline and `pfn bench lc`."""

import json

import numpy as np
import pytest
import torch

import pfn
from pfn.baselines.mcmc_pp import LearningCurvePosterior, MCMCSettings, mixture_quantile
from pfn.cli import main
from pfn.curves import CurveScale
from pfn.training import train
from priors import LearningCurvePrior

from .conftest import readme_blocks, tiny_config

LENGTH = 30  # the tiny model's curve length T


@pytest.fixture(scope="module")
def lc_model(tmp_path_factory) -> pfn.PFN:
    """A tiny learning-curve PFN (a few seconds of CPU training): its predictions are rough, but
    every check below compares the API with itself or with the model's raw forward pass."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation
    config = tiny_config(
        tmp_path_factory.mktemp("lc"),
        *("--prior", "{name: lc}", "--model.max_features", "1", "--data.num_points", str(LENGTH)),
        *("--data.min_context", "1", "--data.max_context", str(LENGTH - 2), "--train.max_steps", "30"),
    )
    model = pfn.load(train(config))
    torch.set_num_threads(threads)
    return model


def accuracy_curve(n: int) -> np.ndarray:
    return 0.8 - 0.5 * np.arange(1, n + 1) ** -0.7


def test_forecast_covers_the_future_epochs(lc_model):
    forecast = lc_model.extrapolate(accuracy_curve(10))
    assert np.array_equal(forecast.epochs, np.arange(11, LENGTH + 1))
    assert forecast.distribution.batch_shape == (LENGTH - 10,)
    bands = forecast.quantiles([0.05, 0.5, 0.95])
    assert bands.shape == (3, LENGTH - 10) and (np.diff(bands, axis=0) > 0).all()
    assert np.allclose(bands[1], forecast.median, atol=1e-5)
    # P(final > threshold) falls as the threshold rises and is 1 - cdf of the last epoch.
    beats = [forecast.probability_final_beats(t) for t in (0.0, 0.5, 1.0)]
    assert beats[0] >= beats[1] >= beats[2] and 0 <= beats[2] <= beats[0] <= 1
    assert beats[1] == pytest.approx(1 - forecast.distribution[-1].cdf(0.5).item())
    # The same numbers as the raw forward pass with x = epoch / T.
    x = torch.arange(1, LENGTH + 1, dtype=torch.float64)[:, None] / LENGTH
    raw = lc_model.predict(x[:10], torch.from_numpy(accuracy_curve(10)), x[10:], normalize=False)
    assert torch.allclose(raw.median, forecast.distribution.median)


def test_horizon_and_explicit_epochs(lc_model):
    full = lc_model.extrapolate(accuracy_curve(8))
    short = lc_model.extrapolate(accuracy_curve(8), horizon=20)
    chosen = lc_model.extrapolate(accuracy_curve(8), epochs=[12, LENGTH])
    assert np.array_equal(short.epochs, np.arange(9, 21))
    assert np.allclose(short.median, full.median[:12], atol=1e-6)
    assert np.allclose(chosen.median, full.median[[3, -1]], atol=1e-6)


def test_batch_of_curves_of_different_lengths(lc_model):
    curves = [accuracy_curve(5), accuracy_curve(12), 0.9 * accuracy_curve(5)]
    forecasts = lc_model.extrapolate(curves, horizon=25)
    assert [len(f.epochs) for f in forecasts] == [20, 13, 20]
    for curve, forecast in zip(curves, forecasts, strict=True):
        alone = lc_model.extrapolate(curve, horizon=25)
        assert np.allclose(alone.quantiles(), forecast.quantiles(), atol=1e-5)
    # A 2-D array is a batch of equal-length curves.
    assert len(lc_model.extrapolate(np.stack([curves[0], curves[2]]))) == 2


def test_bounds_and_minimisation_map_to_the_prior_and_back(lc_model):
    accuracy = lc_model.extrapolate(accuracy_curve(10))
    # The same curve in percent: every quantile scales by 100.
    percent = lc_model.extrapolate(100 * accuracy_curve(10), lower=0, upper=100)
    assert np.allclose(percent.quantiles(), 100 * accuracy.quantiles(), rtol=1e-4)
    # A loss 2 - 2 * accuracy in [0, 2] to minimise is the accuracy flipped: quantiles swap ends.
    loss = lc_model.extrapolate(2 - 2 * accuracy_curve(10), lower=0, upper=2, minimize=True)
    assert np.allclose(loss.quantiles([0.1, 0.5, 0.9]), 2 - 2 * accuracy.quantiles([0.9, 0.5, 0.1]), atol=1e-4)
    # "Beats" means below the threshold for a loss.
    assert loss.probability_final_beats(0.6) == pytest.approx(accuracy.probability_final_beats(0.7), abs=1e-5)


def test_scale_round_trip():
    scale = CurveScale(lower=1.0, upper=3.0, minimize=True)
    assert torch.allclose(scale.to_prior(torch.tensor([3.0, 2.0, 1.0]), "y"), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"y_observed": [0.1, float("nan"), 0.3]}, "y_observed contains NaN"),
        ({"y_observed": []}, "y_observed is empty"),
        ({"y_observed": [[0.1, 0.2], []]}, r"y_observed\[1\] is empty"),
        ({"y_observed": [0.1] * 10, "horizon": 8}, r"horizon \(8\) must be later than the last observed epoch"),
        (
            {"y_observed": [0.1] * 10, "horizon": 50},
            f"horizon \\(50\\) exceeds the model's trained curve length of {LENGTH}",
        ),
        ({"y_observed": [0.5] * 40}, f"40 epochs, but this model was trained on curves of {LENGTH} epochs"),
        ({"y_observed": [0.2, 1.3]}, r"value 1.3 outside the declared bounds \[lower=0, upper=1\]"),
        ({"y_observed": [0.2, 0.3], "lower": 1.0, "upper": 0.0}, "need finite bounds lower < upper"),
        ({"y_observed": [0.2, 0.3], "epochs": [2, 5]}, "epochs must lie after the observed epochs 1..2"),
        ({"y_observed": [0.2, 0.3], "epochs": [5], "horizon": 9}, "either horizon or epochs"),
    ],
)
def test_bad_input_is_named(lc_model, arguments, message):
    with pytest.raises(ValueError, match=message):
        lc_model.extrapolate(**arguments)


def test_extrapolate_needs_a_learning_curve_model(tiny_model_path):
    with pytest.raises(ValueError, match="needs a learning-curve model.*'gp'"):
        pfn.load(tiny_model_path).extrapolate([0.1, 0.2])


def test_plot_writes_a_figure(lc_model, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forecast = lc_model.extrapolate(accuracy_curve(10))
    figure, ax = plt.subplots()
    assert forecast.plot(ax) is ax
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # observed + median, two bands
    figure.savefig(tmp_path / "forecast.png")
    plt.close(figure)
    assert (tmp_path / "forecast.png").stat().st_size > 1000


def test_mcmc_pp_recovers_a_noiseless_pow3_curve():
    pytest.importorskip("emcee")
    from pfn.baselines.mcmc_pp import sample_posterior

    prior = LearningCurvePrior(families=["pow3"], noise_std=1e-3)
    truth = torch.tensor([[1.0, 0.8, 0.5, 0.7]], dtype=torch.float64)  # weight, c, a, alpha
    epochs = torch.arange(1, 101, dtype=torch.float64)
    curve = prior.model.curves(truth, epochs)[0]
    posterior = sample_posterior(prior, curve[:30], 100, seed=0, settings=MCMCSettings(32, 800, 400, 5))
    weight, c, a, alpha = posterior.theta.T
    # Only weight * c and weight * a are identified; a few walkers stay stuck far away (as
    # emcee's walkers do), so compare medians.
    assert (weight * c).median().item() == pytest.approx(0.8, abs=0.01)
    assert (weight * a).median().item() == pytest.approx(0.5, abs=0.01)
    assert alpha.median().item() == pytest.approx(0.7, abs=0.02)
    final = mixture_quantile(posterior.predictive(epochs[-1:]), 0.5)
    assert final.item() == pytest.approx(curve[-1].item(), abs=0.01)


def test_mcmc_pp_extrapolates_a_noiseless_weibull_curve():
    # Domhan et al.'s other families go through the same sampler (the prior's own CurveModel).
    pytest.importorskip("emcee")
    from pfn.baselines.mcmc_pp import sample_posterior

    prior = LearningCurvePrior(families=["weibull"], noise_std=1e-3)
    truth = torch.tensor([[1.0, 0.8, 0.2, 0.1, 1.0]], dtype=torch.float64)  # weight, alpha, beta, kappa, delta
    epochs = torch.arange(1, 101, dtype=torch.float64)
    curve = prior.model.curves(truth, epochs)[0]
    posterior = sample_posterior(prior, curve[:30], 100, seed=0, settings=MCMCSettings(32, 800, 400, 5))
    final = mixture_quantile(posterior.predictive(epochs[-1:]), 0.5)
    assert final.item() == pytest.approx(curve[-1].item(), abs=0.01)


def test_posterior_rejects_curves_that_break_the_constraints():
    prior = LearningCurvePrior(families=["pow3"])
    posterior = LearningCurvePosterior(prior, torch.tensor([0.3, 0.4]), 100)
    good = [1.0, 0.8, 0.5, 0.7, np.log(0.02)]
    decreasing = [1.0, 0.8, -0.5, 0.7, np.log(0.02)]  # a < 0: the curve falls
    outside_prior = [1.0, 0.8, 0.5, -0.7, np.log(0.02)]  # alpha must be positive
    log_density = posterior(np.array([good, decreasing, outside_prior]))
    assert np.isfinite(log_density[0]) and np.isneginf(log_density[1:]).all()


def test_bench_lc_writes_results_and_reuses_mcmc_runs(lc_model, tmp_path):
    pytest.importorskip("emcee")
    threads = torch.get_num_threads()
    cache = tmp_path / "mcmc.json"

    def bench(curves: int, out_dir):
        main(["bench", "lc", "--model", str(lc_model.path), "--curves", str(curves), "--cutoffs", "5,15"]
             + ["--mcmc", "28,20,10,2", "--mcmc_cache", str(cache), "--out_dir", str(out_dir)])  # fmt: skip
        torch.set_num_threads(threads)  # the bench times on one thread
        return json.loads(next(out_dir.glob("lc-*.json")).read_text())

    result = bench(2, tmp_path / "first")
    assert [row["context"] for row in result["rows"]] == [5, 15] and result["mcmc"]["walkers"] == 28
    row = result["rows"][0]
    for method in ("pfn", "mcmc", "oracle"):
        assert np.isfinite(row[f"{method}_loglik"]) and row[f"{method}_mse"] >= 0
    assert row["difference"] == pytest.approx(row["pfn_loglik"] - row["mcmc_loglik"])
    assert len(result["examples"]) == 4 and len(result["examples"][0]["pfn"][0]) == LENGTH - 5
    assert "speed-up" in next((tmp_path / "first").glob("lc-*.md")).read_text()
    # A larger run reuses the two cached curves per cutoff (same curves: drawn in fixed chunks) and adds one.
    first = json.loads(cache.read_text())["entries"]
    bench(3, tmp_path / "second")
    second = json.loads(cache.read_text())["entries"]
    assert len(first) == 4 and len(second) == 6 and all(second[key] == first[key] for key in first)


def test_readme_learning_curve_example_prints_what_it_says(capsys):
    pytest.importorskip("matplotlib").use("Agg")
    code, output = readme_blocks("## Extrapolate learning curves")[:2]
    exec(compile(code, "README.md", "exec"), {})  # the shipped `lc` model
    assert capsys.readouterr().out == output
