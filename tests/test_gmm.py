"""GMM prior, its exact posterior predictive, and the classification path through the PFN."""

import json
import math

import numpy as np
import pytest
import torch

import pfn
from pfn.baselines.gmm_exact import gmm_posterior_predictive
from pfn.benchmarks.gmm import expected_calibration_error, kl_divergence
from pfn.cli import main
from pfn.config import load_config
from pfn.ensemble import random_rotations, symmetry_ensemble
from pfn.training import train
from priors import GMMPrior, build_prior
from tests.conftest import ROOT


def test_gmm_prior_is_deterministic_and_well_formed():
    prior = build_prior({"name": "gmm", "max_classes": 6})
    a = prior.sample(32, 50, 3, torch.Generator().manual_seed(0))
    b = prior.sample(32, 50, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (32, 50, 3) and a.y.shape == (32, 50)
    assert torch.equal(a.y, a.y.round()) and a.y.min() >= 0 and a.y.max() <= 5
    assert all(len(row.unique()) <= 6 for row in a.y)
    # Permuted ids: every id is used somewhere, not only the first few.
    assert len(a.y.unique()) == 6


def test_without_permutation_ids_are_the_first_k():
    prior = GMMPrior(min_classes=2, max_classes=3, permute_classes=False, concentration=100.0)
    batch = prior.sample(200, 60, 1, torch.Generator().manual_seed(0))
    used = [set(row.unique().long().tolist()) for row in batch.y]
    assert all(ids <= {0, 1, 2} and 0 in ids and 1 in ids for ids in used)


def _monte_carlo_predictive(prior, x_context, labels, x_query, draws=400_000):
    """p(y = c | x_query, D) by importance sampling mixture parameters from the prior."""
    params = prior.sample_parameters(draws, 1, torch.Generator().manual_seed(1))
    mean, std = params.means[..., 0], params.scale_tril[..., 0, 0]  # [draws, C]

    def log_normal(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)

    log_weights = params.weights.clamp_min(1e-300).log()
    log_likelihood = sum(
        log_weights[:, int(c)] + log_normal(x, mean[:, int(c)], std[:, int(c)])
        for x, c in zip(x_context, labels, strict=True)
    )
    joint = log_likelihood[:, None] + log_weights + log_normal(x_query, mean, std)  # [draws, C]
    joint = torch.where(params.weights > 0, joint, -math.inf)
    probs = torch.logsumexp(joint, 0)
    return torch.softmax(probs, 0)


@pytest.mark.parametrize("permute", [True, False])
def test_exact_posterior_matches_monte_carlo(permute):
    prior = GMMPrior(min_classes=2, max_classes=3, concentration=1.0, kappa0=0.5, psi0=1.0, permute_classes=permute)
    x_context = torch.tensor([-1.0, -0.6, 1.2], dtype=torch.float64)
    labels = torch.tensor([0.0, 0.0, 1.0])
    for x_query in (-0.8, 0.3, 2.5):
        exact = gmm_posterior_predictive(x_context[None, :, None], labels[None], torch.tensor([[[x_query]]]), prior)[
            0, 0
        ]
        mc = _monte_carlo_predictive(prior, x_context, labels, torch.tensor(x_query, dtype=torch.float64))
        assert torch.allclose(exact, mc, atol=0.02), (x_query, exact, mc)


def test_exact_posterior_refuses_label_noise():
    prior = GMMPrior(label_noise=0.1)
    with pytest.raises(ValueError, match="label noise"):
        gmm_posterior_predictive(torch.rand(1, 3, 2), torch.zeros(1, 3), torch.rand(1, 2, 2), prior)


def test_exact_posterior_is_invariant_to_rotations_and_relabelling():
    """The symmetry `pfn.ensemble.symmetry_ensemble` relies on: rotating the inputs about the origin
    and relabelling the classes leaves the exact posterior predictive unchanged (up to the labels)."""
    prior = GMMPrior(min_classes=2, max_classes=4, kappa0=0.3)
    generator = torch.Generator().manual_seed(3)
    batch = prior.sample(6, 25, 3, generator)
    x, labels = batch.x.double(), batch.y.long()
    x_context, labels, x_query = x[:, :20], labels[:, :20], x[:, 20:]
    exact = gmm_posterior_predictive(x_context, labels, x_query, prior)
    rotation = random_rotations(6, 3, generator)
    new_id = torch.rand(6, 4, generator=generator).argsort(-1)
    moved = gmm_posterior_predictive(x_context @ rotation, new_id.gather(1, labels), x_query @ rotation, prior)
    assert torch.allclose(moved.gather(-1, new_id[:, None, :].expand(-1, 5, -1)), exact, atol=1e-10)
    # and it is no identity: the same relabelling without the label map moves the probabilities
    assert not torch.allclose(moved, exact, atol=1e-3)


def test_random_rotations_are_orthogonal_and_include_reflections():
    rotations = random_rotations(200, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), torch.eye(3, dtype=torch.float64), atol=1e-12)
    determinants = torch.linalg.det(rotations)
    assert (determinants > 0).any() and (determinants < 0).any()
    assert rotations[:, 0, 0].mean().abs() < 0.15  # centred, as Haar measure is


@pytest.fixture(scope="module")
def tiny_gmm_path(tmp_path_factory):
    config = load_config(
        ROOT / "configs" / "tiny_gmm.yaml",
        [
            "--train.output_dir",
            str(tmp_path_factory.mktemp("gmm")),
            "--train.progress_bar",
            "false",
            "--logger",
            "none",
        ],
    )
    return train(config)


def test_classification_pfn_trains_and_round_trips(tiny_gmm_path):
    model = pfn.load(tiny_gmm_path)
    num_classes = model.config.model.num_classes
    assert model.is_classifier
    prior = build_prior(model.prior_spec)
    batch = prior.sample(64, 40, 2, torch.Generator().manual_seed(7))
    dist = model.predict(batch.x[:, :30], batch.y[:, :30], batch.x[:, 30:], normalize=False)
    assert dist.probs.shape == (64, 10, num_classes)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(64, 10))
    cross_entropy = -dist.log_prob(batch.y[:, 30:]).mean()
    assert cross_entropy < math.log(num_classes) - 0.3  # learnt something beyond uniform
    assert dist.sample((5,)).shape == (5, 64, 10) and dist.entropy().shape == (64, 10)

    x, y = np.random.default_rng(0).normal(size=(8, 2)), np.array([0, 1, 0, 1, 2, 2, 0, 1])
    with pytest.raises(ValueError, match="integer class labels"):
        model.predict(x, y + 0.5, x)
    with pytest.raises(ValueError, match="at most 4 classes"):
        model.predict(x, y + 2, x)
    with pytest.raises(ValueError, match="integer class labels"):
        model.predict(x, -y - 0.5, x)
    with pytest.raises(ValueError, match="supports labels 0..3"):
        model.predict(x, -y, x)
    # A query far from any context class is still a valid distribution (the prior handles it).
    far = model.predict(x, y, np.full((1, 2), 50.0))
    assert torch.isfinite(far.probs).all()


def test_symmetry_ensemble(tiny_gmm_path):
    model = pfn.load(tiny_gmm_path)
    batch = build_prior(model.prior_spec).sample(8, 30, 2, torch.Generator().manual_seed(5))
    data = batch.x[:, :24], batch.y[:, :24], batch.x[:, 24:]
    single = model.predict(*data, normalize=False)
    assert torch.allclose(symmetry_ensemble(model, *data, 1, torch.Generator()).probs, single.probs, atol=1e-6)
    ensemble = symmetry_ensemble(model, *data, 6, torch.Generator().manual_seed(1))
    again = symmetry_ensemble(model, *data, 6, torch.Generator().manual_seed(1))
    assert torch.equal(ensemble.probs, again.probs)
    assert torch.allclose(ensemble.probs.sum(-1), torch.ones(8, 6), atol=1e-5)
    # The members see other data, so the average differs from the single model, but it predicts
    # the same labels about as well.
    assert not torch.allclose(ensemble.probs, single.probs, atol=1e-3)
    labels = batch.y[:, 24:]
    assert (-ensemble.log_prob(labels).mean()) < (-single.log_prob(labels).mean()) + 0.2
    with pytest.raises(ValueError, match="classifier of a GMM prior or a regressor of a GP or BNN prior"):
        symmetry_ensemble(pfn.load("lc"), *data, 2, torch.Generator())  # learning curves have no such symmetry
    with pytest.raises(ValueError, match="num_members"):
        symmetry_ensemble(model, *data, 0, torch.Generator())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_symmetry_ensemble_takes_cuda_inputs(tiny_gmm_path):
    model = pfn.load(tiny_gmm_path, device="cuda")
    batch = build_prior(model.prior_spec).sample(4, 30, 2, torch.Generator().manual_seed(5))
    data = batch.x[:, :24].cuda(), batch.y[:, :24].cuda(), batch.x[:, 24:].cuda()
    probs = symmetry_ensemble(model, *data, 3, torch.Generator().manual_seed(1)).probs
    assert probs.shape == (4, 6, model.config.model.num_classes)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 6, device=probs.device), atol=1e-5)


def test_bench_gmm_writes_results(tmp_path, tiny_gmm_path, tiny_model_path):
    main(
        [
            "bench",
            "gmm",
            "--model",
            str(tiny_gmm_path),
            "--context",
            "5,12",
            "--features",
            "2",
            "--datasets",
            "4",
            "--queries",
            "6",
            "--ensemble",
            "3",
            "--out_dir",
            str(tmp_path),
        ]
    )
    [result_file] = tmp_path.glob("gmm-*.json")
    result = json.loads(result_file.read_text())
    assert [row["context"] for row in result["summary"]] == [5, 12]
    assert result["ensemble"] == 3 and np.isfinite(result["ensemble_mean_difference"])
    for row in result["rows"]:
        assert row["difference"] == pytest.approx(row["pfn_ce"] - row["exact_ce"])
        assert row["ensemble_difference"] == pytest.approx(row["pfn_ensemble_ce"] - row["exact_ce"])
        assert row["expected_difference"] > 0 and row["ensemble_expected_difference"] > 0  # KL divergences
        for method in ("pfn", "pfn_ensemble", "exact", "qda", "gpc"):
            assert 0 <= row[f"{method}_accuracy"] <= 1 and 0 <= row[f"{method}_ece"] <= 1
            assert np.isfinite(row[f"{method}_ce"])
    with pytest.raises(SystemExit, match="classification model of a GMM prior"):
        main(["bench", "gmm", "--model", str(tiny_model_path), "--out_dir", str(tmp_path)])


def test_kl_divergence_is_the_expected_excess_cross_entropy():
    exact = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]], dtype=torch.float64)
    labels = torch.multinomial(exact, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    excess = (exact.gather(1, labels).log() - probs.gather(1, labels).log()).mean(1)
    divergence = kl_divergence(exact, probs)
    torch.testing.assert_close(divergence, excess, atol=3e-3, rtol=0)
    assert divergence[1] == 0 and divergence[0] > 0.05


def test_expected_calibration_error():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    # bin 0.9: accuracy 0.5 vs confidence 0.9; bin 0.6: accuracy 1.0 vs 0.6; each holds half the points.
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_cli_predict_with_a_classifier(tmp_path, tiny_gmm_path):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(10, 2)), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    np.savetxt(tmp_path / "train.csv", np.column_stack([x, labels]), delimiter=",")
    np.savetxt(tmp_path / "test.csv", x[:4], delimiter=",")
    main(
        [
            "predict",
            "--model",
            str(tiny_gmm_path),
            "--context",
            str(tmp_path / "train.csv"),
            "--query",
            str(tmp_path / "test.csv"),
            "--out",
            str(tmp_path / "out.csv"),
        ]
    )
    table = np.genfromtxt(tmp_path / "out.csv", delimiter=",", names=True)
    assert table.dtype.names == ("label", "p0", "p1", "p2", "p3")
    probs = np.column_stack([table[f"p{c}"] for c in range(4)])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(table["label"], probs.argmax(1))


def test_gmm_inputs_are_standardised_to_the_priors_spread():
    prior = GMMPrior()
    scaling = prior.input_scaling()
    assert scaling == GMMPrior().input_scaling()  # a fixed seed: the same every time
    assert scaling.kind == "standardize"
    # The typical spread of fresh draws, in any number of features (see GMMPrior.typical_spread).
    for num_features in (1, 4):
        fresh = prior.sample(2000, 100, num_features, torch.Generator().manual_seed(5)).x.std(1).median()
        assert fresh.item() == pytest.approx(scaling.spread, rel=0.03)
    x_context = torch.randn(3, 40, 2, dtype=torch.float64) * torch.tensor([5.0, 0.01]) + 7.0
    normalizer = pfn.predictor.Normalizer.fit(x_context, torch.zeros(3, 40), prior, standardize_y=False)
    mapped = normalizer.x(x_context)
    assert torch.allclose(mapped.mean(1), torch.zeros(3, 2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(mapped.std(1), torch.full((3, 2), scaling.spread, dtype=torch.float64))


def test_range_scaling_puts_the_context_where_uniform_draws_would_lie():
    prior = build_prior({"name": "gp", "x_range": [-1.0, 2.0]})
    for n in (1, 2, 30):
        x_context = torch.rand(2, n, 3, dtype=torch.float64) * 10 - 4
        mapped = pfn.predictor.Normalizer.fit(x_context, torch.zeros(2, n), prior).x(x_context)
        # n uniform draws from a box of width 3 have expected extremes 3 / (n + 1) inside its edges;
        # a single point sits at the centre.
        inset = 3.0 / (n + 1)
        expected_low = torch.full((2, 3), -1.0 + inset, dtype=torch.float64)
        assert torch.allclose(mapped.amin(1), expected_low)
        assert torch.allclose(mapped.amax(1), expected_low + (3.0 - 2 * inset))


def test_a_mixture_of_differently_scaled_priors_names_the_fix():
    mixture = build_prior({"name": "mixture", "priors": [{"name": "gmm"}, {"name": "gp"}]})
    with pytest.raises(ValueError, match="minmax"):
        mixture.input_scaling()
    assert build_prior({"name": "minmax", "prior": mixture.spec}).input_scaling().kind == "range"


def test_shipped_gmm_on_data_in_other_units_predicts_nearly_as_in_the_priors_units():
    """Real data come in their own units; `predict` maps them into the prior's. A map that ignored
    the prior (every context squeezed into [0, 1]) put the shipped model 0.57 nats/point behind
    its own predictions in the prior's units here; standardising to the prior's spread, 0.02."""
    model = pfn.load("gmm")
    prior = build_prior(model.prior_spec)
    batch = prior.sample(64, 70, 3, torch.Generator().manual_seed(11))
    x_context, labels, x_query = batch.x[:, :50], batch.y[:, :50], batch.x[:, 50:]
    truth = batch.y[:, 50:].long()

    def cross_entropy(distribution) -> float:
        return -distribution.log_prob(truth).mean().item()

    in_prior_units = cross_entropy(model.predict(x_context, labels, x_query, normalize=False))
    shift, scale = torch.tensor([100.0, -3.0, 0.5]), torch.tensor([40.0, 0.2, 3.0])
    in_user_units = model.predict(x_context * scale + shift, labels, x_query * scale + shift)
    assert cross_entropy(in_user_units) < in_prior_units + 0.08
    # Units do not matter once the data are mapped.
    same_data = model.predict(x_context, labels, x_query)
    assert torch.allclose(in_user_units.probs, same_data.probs, atol=1e-4)
