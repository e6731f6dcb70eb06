"""NUTS baselines (NumPyro): the models equal the priors' likelihoods, and NUTS finds known posteriors."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
from numpyro.infer.util import log_density, log_likelihood  # noqa: E402

from pfn.baselines import exact_gp_predictive  # noqa: E402
from pfn.baselines.nuts import NUTSBaseline, bnn_model, gp_model  # noqa: E402
from pfn.cli import main  # noqa: E402
from pfn.training import train  # noqa: E402
from priors import BNNPrior, GPPrior  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

# A BNN of fixed architecture: no discrete sites, so NUTS alone samples it and compiles fast.
FIXED_BNN = {"name": "bnn", "min_depth": 1, "max_depth": 1, "min_width": 6, "max_width": 6, "activations": ["tanh"]}


def _as_sites(params, prior: BNNPrior) -> dict:
    sites = {
        "depth": params.depth - prior.min_depth,
        "width": params.width - prior.min_width,
        "activation": params.activation,
        "weight_scale": params.weight_scale,
        "noise_std": params.noise_std,
        "readout": params.readout,
    }
    for layer in range(prior.max_depth):
        sites[f"w{layer}"], sites[f"b{layer}"] = params.weights[layer], params.biases[layer]
    return {k: jnp.asarray(v.numpy()) for k, v in sites.items()}


def test_bnn_model_log_likelihood_equals_the_priors_network():
    prior = BNNPrior()
    generator = torch.Generator().manual_seed(0)
    params = prior.sample_parameters(3, 2, generator)
    x = torch.rand(3, 40, 2, generator=generator)
    f = prior.forward(x, params)
    y = f + params.noise_std[:, None] * torch.randn(3, 40, generator=generator)
    direct = torch.distributions.Normal(f, params.noise_std[:, None]).log_prob(y).sum(-1)
    sites = _as_sites(params, prior)
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in sites.items()}
        model = lambda x, y: bnn_model(prior, x, y)  # noqa: E731
        value = log_likelihood(model, one, jnp.asarray(x[i].numpy()), jnp.asarray(y[i].numpy()))["y"]
        assert float(value[0]) == pytest.approx(direct[i].item(), rel=1e-5, abs=1e-3)


@pytest.mark.parametrize("which", ["bnn", "gp"])
def test_padded_points_do_not_change_the_posterior(which):
    rng = np.random.default_rng(0)
    x, y = rng.random((7, 2)), rng.normal(size=7)
    x_pad, y_pad = np.concatenate([x, np.full((3, 2), 0.5)]), np.concatenate([y, np.zeros(3)])
    mask = np.concatenate([np.ones(7), np.zeros(3)])
    if which == "bnn":
        prior, model = BNNPrior(max_depth=2, max_width=8), bnn_model
        params = {"depth": 1, "width": 2, "activation": 1, "weight_scale": 1.3, "noise_std": 0.2}
        params |= {"w0": rng.normal(size=(2, 8)), "w1": rng.normal(size=(8, 8)), "b0": rng.normal(size=8)}
        params |= {"b1": rng.normal(size=8), "readout": rng.normal(size=8)}
    else:
        prior, model = GPPrior(lengthscale={"distribution": "gamma", "concentration": 3.0, "rate": 6.0}), gp_model
        params = {"lengthscale": 0.4}
    plain = log_density(model, (prior, x, y), {}, params)[0]
    padded = log_density(model, (prior, x_pad, y_pad, mask), {}, params)[0]
    constant = 3 * -0.5 * math.log(2 * math.pi) if which == "gp" else 0.0
    assert float(padded) == pytest.approx(float(plain) + constant, abs=1e-8)


def test_nuts_recovers_a_known_posterior_mean():
    """Only the outputscale is unknown: its posterior mean by quadrature on a grid vs NUTS."""
    prior = GPPrior(
        lengthscale=0.3, outputscale={"distribution": "gamma", "concentration": 2.0, "rate": 1.0}, noise=0.01
    )
    batch = prior.sample(1, 12, 1, torch.Generator().manual_seed(1))
    x, y = batch.x[0].double(), batch.y[0].double()
    grid = torch.linspace(1e-3, 30, 30_000, dtype=torch.float64)
    # The covariance s K + c I (c: noise plus the prior's jitter 1e-6 s) in K's eigenbasis.
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.exp(-0.5 * (x - x.T) ** 2 / 0.3**2))
    variances = grid[:, None] * eigenvalues + 0.01 + 1e-6 * grid[:, None]  # [grid, 12]
    z = eigenvectors.T @ y
    log_likelihood = -0.5 * (z**2 / variances + variances.log()).sum(-1)
    log_post = torch.distributions.Gamma(2.0, 1.0).log_prob(grid) + log_likelihood
    weights = torch.softmax(log_post, 0)
    exact_mean = (weights * grid).sum().item()
    samples = NUTSBaseline(prior, budget=600, num_chains=2).sample(x.numpy(), y.numpy(), seed=0)
    assert float(samples["outputscale"].mean()) == pytest.approx(exact_mean, rel=0.12)


def test_nuts_predictive_matches_the_exact_gp_when_hyperparameters_are_almost_known():
    def tight(value):
        return {"distribution": "gamma", "concentration": 1e5, "rate": 1e5 / value}

    prior = GPPrior(lengthscale=tight(0.3), outputscale=tight(2.0), noise=tight(0.01))
    fixed = GPPrior(lengthscale=0.3, outputscale=2.0, noise=0.01)
    batch = fixed.sample(1, 30, 2, torch.Generator().manual_seed(0))
    xc, yc, xq, yq = batch.x[:, :20], batch.y[:, :20], batch.x[:, 20:], batch.y[:, 20:]
    exact = exact_gp_predictive(xc, yc, xq, fixed).log_prob(yq.double())[0].numpy()
    baseline = NUTSBaseline(prior, budget=100, num_chains=1, pad_to=25)
    log_prob, _ = baseline.fit_predict(xc[0].numpy(), yc[0].numpy(), xq[0].numpy(), yq[0].numpy(), seed=0)
    np.testing.assert_allclose(log_prob, exact, atol=0.02)


def test_bench_bnn_end_to_end(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "model", "--train.max_steps", "10")
    config.prior = dict(FIXED_BNN)
    model_path = train(config)
    args = ["bench", "bnn", "--model", str(model_path), "--context", "4,8", "--features", "1", "--datasets", "2"]
    args += ["--queries", "3", "--budgets", "6", "--chains", "1", "--max_tree_depth", "3", "--out_dir", str(tmp_path)]
    main([*args, "--plot"])
    assert len(list(tmp_path.glob("bnn-*.png"))) == 1
    [result_file] = tmp_path.glob("bnn-*.json")
    result = json.loads(result_file.read_text())
    assert result["prior"]["name"] == "bnn" and result["nuts"]["budgets"] == [6]
    assert [row["context"] for row in result["summary"]] == [4, 8]
    for row in result["rows"]:
        for method in ("pfn", "nuts-6"):
            assert math.isfinite(row[f"{method}_nll"]) and math.isfinite(row[f"{method}_nll_se"])
        assert row["pfn_seconds_single"] > 0 and row["nuts-6_seconds"] > 0
        assert row["difference"] == pytest.approx(row["pfn_nll"] - row["nuts-6_nll"])
        assert row["pfn_nll"] == pytest.approx(np.mean(row["per_dataset"]["pfn_nll"]))
        assert row["nuts-6_nll"] == pytest.approx(np.mean(row["per_dataset"]["nuts-6_nll"]))
    markdown = next(tmp_path.glob("bnn-*.md")).read_text()
    assert "| context | PFN | nuts-6 |" in markdown and "speedup" in markdown

    # With --mcmc_cache the NUTS results are kept, and a second run (e.g. of a new checkpoint)
    # reuses them without sampling.
    cache = tmp_path / "nuts-cache.json"
    main([*args, "--mcmc_cache", str(cache), "--out_dir", str(tmp_path / "first")])

    def no_sampling(*args, **kwargs):
        raise AssertionError("NUTS ran although its results were cached")

    monkeypatch.setattr(NUTSBaseline, "fit_predict", no_sampling)
    # (With --ensemble 2 the second run also scores the PFN averaged over each dataset and its
    # reflection, a symmetry of the BNN prior: columns of its own, not a baseline's.)
    main([*args, "--mcmc_cache", str(cache), "--out_dir", str(tmp_path / "second"), "--ensemble", "2"])
    first, second = (json.loads(next((tmp_path / run).glob("bnn-*.json")).read_text()) for run in ("first", "second"))
    assert [row["nuts-6_nll"] for row in first["rows"]] == [row["nuts-6_nll"] for row in second["rows"]]
    assert second["ensemble_members"] == 2 and "ensemble_nll" not in first["rows"][0]
    for row in second["rows"]:
        assert row["ensemble_nll"] == pytest.approx(np.mean(row["per_dataset"]["ensemble_nll"]))
        assert row["ensemble_difference"] == pytest.approx(row["ensemble_nll"] - row["nuts-6_nll"])
        assert row["ensemble_nll"] != row["pfn_nll"] and row["ensemble_seconds_batched"] > 0
    assert second["nuts"]["compile_seconds"] == first["nuts"]["compile_seconds"]
    monkeypatch.undo()

    # A model trained on another prior: a clear error, unless --force.
    gp_config = tiny_config(tmp_path / "gp", "--train.max_steps", "2")
    gp_path = train(gp_config)
    with pytest.raises(SystemExit, match="--force"):
        main(["bench", "bnn", "--model", str(gp_path), "--out_dir", str(tmp_path / "refused")])

    # gp-hyper (forced onto configs/gp_hyper.yaml's prior): type-II ML too, and per dataset how
    # sharp its predictive is and how much wider the PFN's.
    # With --ensemble 2 also the PFN averaged over two views of each dataset (its own columns,
    # not a baseline's).
    gph_args = ["bench", "gp-hyper", "--model", str(gp_path), "--force", *args[4:], "--ensemble", "2"]
    main([*gph_args, "--out_dir", str(tmp_path / "gph")])
    result = json.loads(next((tmp_path / "gph").glob("gp-hyper-*.json")).read_text())
    assert result["ensemble_members"] == 2
    for row in result["rows"]:
        per_dataset = row["per_dataset"]
        assert len(per_dataset["type2ml_std_over_context_std"]) == 2
        assert all(ratio > 0 for ratio in per_dataset["pfn_std_over_type2ml_std"])
        assert math.isfinite(row["type2ml_nll"]) and math.isfinite(row["type2ml_on_buckets"])
        assert row["ensemble_nll"] == pytest.approx(np.mean(per_dataset["ensemble_nll"]))
        assert row["ensemble_difference"] == pytest.approx(row["ensemble_nll"] - row["nuts-6_nll"])
        assert row["ensemble_nll"] != row["pfn_nll"] and row["ensemble_seconds_batched"] > 0
    markdown = next((tmp_path / "gph").glob("gp-hyper-*.md")).read_text()
    assert "| type2ml on PFN buckets | PFN ensemble | ensemble - nuts-6 |" in markdown
    with pytest.raises(SystemExit, match="ensemble must be >= 1"):
        main([*args, "--ensemble", "0", "--out_dir", str(tmp_path / "refused")])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_bnn_with_the_pfn_on_a_gpu_scores_what_the_cpu_does(tmp_path):
    # --device cuda: the PFN on the GPU, NUTS on the CPU, the same datasets and (nearly) the same NLL.
    config = tiny_config(tmp_path / "model", "--train.max_steps", "10")
    config.prior = dict(FIXED_BNN)
    model_path = train(config)
    args = ["bench", "bnn", "--model", str(model_path), "--context", "4", "--features", "1", "--datasets", "2"]
    args += ["--queries", "3", "--budgets", "6", "--max_tree_depth", "3", "--mcmc_cache", str(tmp_path / "cache.json")]
    results = {}
    for device in ("cpu", "cuda"):
        main([*args, "--device", device, "--out_dir", str(tmp_path / device), "--tag", device])
        [result_file] = (tmp_path / device).glob("bnn-*.json")
        results[device] = json.loads(result_file.read_text())
    assert results["cuda"]["machine"]["device"].startswith("cuda")
    cpu_row, gpu_row = results["cpu"]["rows"][0], results["cuda"]["rows"][0]
    assert gpu_row["nuts-6_nll"] == cpu_row["nuts-6_nll"]  # from the cache: the very same datasets
    assert gpu_row["pfn_nll"] == pytest.approx(cpu_row["pfn_nll"], abs=1e-3)


def test_bench_compiles_nuts_per_context_size_without_padding():
    # Padding a 10-point context to 100 points made NUTS 40x slower (gp-hyper), which inflated speedups.
    from pfn.benchmarks.mcmc import make_baselines

    prior = GPPrior(lengthscale=0.3, outputscale=1.0, noise={"distribution": "gamma", "concentration": 2, "rate": 20})
    [baseline] = make_baselines(prior, [6], num_chains=1, max_tree_depth=3)
    batch = prior.sample(1, 12, 1, torch.Generator().manual_seed(0))
    for size in (4, 8):
        x, y = batch.x[0, :size].numpy(), batch.y[0, :size].numpy()
        baseline.fit_predict(x, y, batch.x[0, 8:].numpy(), batch.y[0, 8:].numpy(), seed=0)
    assert set(baseline._samplers) == {(4, 1), (8, 1)}
