"""scikit-learn estimators (PFNRegressor, PFNClassifier) and the model zoo (list_models, pfn models).

Most tests use tiny models trained here for a few steps (for 10 features, so scikit-learn's own
checks, which use up to 10 features, can run): these tests are about the estimators' plumbing,
which does not depend on how well the network predicts. The tests of the shipped defaults on scikit-learn's
bundled datasets are skipped where those checkpoints are not present.
"""

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import pfn
from pfn.checkpoint import CHECKPOINT_DIR, CheckpointError
from pfn.cli import main
from pfn.config import load_config
from pfn.distributions import RiemannMixture
from pfn.estimators import EXPECTED_FAILED_CHECKS, PFNClassifier, PFNRegressor
from pfn.training import train
from pfn.zoo import list_models, model_card
from priors import build_prior

from .conftest import ROOT, readme_blocks

QUIET = ["--train.progress_bar", "false", "--logger", "none", "--train.max_steps", "10"]
# A tiny model is far too weak for the accuracy thresholds of these two checks (R^2 > 0.5 and
# accuracy > 0.83 on their toy data); the shipped defaults are what must meet them.
TINY_MODEL_CHECKS = {
    "check_regressors_train": "a tiny test model is too weak for the check's score threshold",
    "check_classifiers_train": "a tiny test model is too weak for the check's accuracy threshold",
}


@pytest.fixture(scope="module")
def tiny_regressor(tmp_path_factory) -> str:
    """A GP PFN for up to 10 features and contexts of up to 59 points (10 training steps)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    output = tmp_path_factory.mktemp("tiny_regressor")
    overrides = ["--train.output_dir", str(output), "--model.max_features", "10", "--data.num_points", "60", *QUIET]
    return str(train(load_config(ROOT / "configs" / "tiny.yaml", overrides)))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> str:
    """A min-max scaled GMM PFN for up to 10 features and 4 classes (10 training steps)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    output = tmp_path_factory.mktemp("tiny_classifier")
    prior = "{name: minmax, prior: {name: gmm, min_classes: 2, max_classes: 4}}"
    overrides = ["--train.output_dir", str(output), "--model.max_features", "10", "--prior", prior, *QUIET]
    return str(train(load_config(ROOT / "configs" / "tiny_gmm.yaml", overrides)))


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(50, 3))
    y = np.sin(4 * X[:, 0]) + X[:, 1] + 0.05 * rng.standard_normal(50)
    return X[:35], y[:35], X[35:], y[35:]


@pytest.fixture
def classification_data():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=60)
    X = rng.standard_normal((60, 2)) + 3.0 * np.eye(3)[labels][:, :2] - 1.5 * (labels == 2)[:, None]
    return X, np.array(["cat", "dog", "emu"])[labels]


def test_check_estimator_regressor(tiny_regressor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # contexts longer than the tiny model's, skipped checks
        check_estimator(
            PFNRegressor(tiny_regressor), expected_failed_checks={**EXPECTED_FAILED_CHECKS, **TINY_MODEL_CHECKS}
        )


def test_check_estimator_classifier(tiny_classifier):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(
            PFNClassifier(tiny_classifier), expected_failed_checks={**EXPECTED_FAILED_CHECKS, **TINY_MODEL_CHECKS}
        )


def test_fit_stores_the_context_and_predictions_go_through_pfn_predict(tiny_regressor, regression_data):
    X, y, X_test, y_test = regression_data
    estimator = PFNRegressor(tiny_regressor)
    assert estimator.fit(X, y) is estimator
    np.testing.assert_array_equal(estimator.X_context_, X)
    assert estimator.n_features_in_ == 3
    reference = pfn.load(tiny_regressor).predict(X, y, X_test)  # the one normalisation path
    np.testing.assert_allclose(estimator.predict(X_test), reference.mean.numpy(), rtol=1e-5, atol=1e-6)
    median = PFNRegressor(tiny_regressor, point_estimate="median").fit(X, y).predict(X_test)
    np.testing.assert_allclose(median, reference.median.numpy(), rtol=1e-5, atol=1e-6)
    distribution = estimator.predict_distribution(X_test)
    assert distribution.batch_shape == (len(X_test),)
    np.testing.assert_allclose(
        estimator.log_likelihood(X_test, y_test), reference.log_prob(torch.tensor(y_test)).numpy(), rtol=1e-5
    )
    assert estimator.score(X_test, y_test) == pytest.approx(r2_score(y_test, estimator.predict(X_test)))


def test_quantiles_are_ordered_and_match_the_distribution(tiny_regressor, regression_data):
    X, y, X_test, _ = regression_data
    estimator = PFNRegressor(tiny_regressor).fit(X, y)
    quantiles = estimator.predict_quantiles(X_test, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    assert quantiles.shape == (len(X_test), 5)
    assert (np.diff(quantiles, axis=1) > 0).all()
    np.testing.assert_allclose(quantiles[:, 2], estimator.predict_distribution(X_test).median.numpy(), rtol=1e-5)


def test_chunked_prediction_equals_one_pass(tiny_regressor, tiny_classifier, regression_data, classification_data):
    X, y, X_test, _ = regression_data
    whole = PFNRegressor(tiny_regressor).fit(X, y)
    chunked = PFNRegressor(tiny_regressor, chunk_size=4).fit(X, y)
    np.testing.assert_allclose(chunked.predict(X_test), whole.predict(X_test), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.predict_quantiles(X_test), whole.predict_quantiles(X_test), rtol=1e-5)
    assert chunked.predict_distribution(X_test).batch_shape == (len(X_test),)
    X, labels = classification_data
    whole = PFNClassifier(tiny_classifier).fit(X, labels)
    chunked = PFNClassifier(tiny_classifier, chunk_size=7).fit(X, labels)
    np.testing.assert_allclose(chunked.predict_proba(X), whole.predict_proba(X), atol=1e-6)


def test_string_labels_round_trip(tiny_classifier, classification_data):
    X, labels = classification_data
    classifier = PFNClassifier(tiny_classifier).fit(X, labels)
    np.testing.assert_array_equal(classifier.classes_, ["cat", "dog", "emu"])
    probabilities = classifier.predict_proba(X)
    assert probabilities.shape == (len(X), 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(classifier.predict_log_proba(X), np.log(probabilities))
    predicted = classifier.predict(X)
    assert set(predicted) <= {"cat", "dog", "emu"}
    np.testing.assert_array_equal(predicted, classifier.classes_[probabilities.argmax(1)])
    assert classifier.score(X, labels) == pytest.approx(np.mean(predicted == labels))
    # The same data with integer labels gives the same probabilities.
    as_ints = PFNClassifier(tiny_classifier).fit(X, np.searchsorted(classifier.classes_, labels))
    np.testing.assert_allclose(as_ints.predict_proba(X), probabilities)


def test_ensemble_of_a_linear_readout_model_mixes_its_members(regression_data):
    """The shipped gp places its buckets per query (model.linear_readout): members on borders of
    their own make a RiemannMixture, in chunks or whole."""
    X, y, X_test, y_test = regression_data
    ensemble = PFNRegressor("gp", n_ensemble=3, random_state=0, chunk_size=6).fit(X, y)
    distribution = ensemble.predict_distribution(X_test)
    assert isinstance(distribution, RiemannMixture) and distribution.batch_shape == (len(X_test),)
    model = pfn.load("gp")
    members = [model.predict(m.view(X), y, m.view(X_test)) for m in ensemble.ensemble_]
    targets = torch.as_tensor(y_test, dtype=torch.float32)
    expected = torch.stack([member.log_prob(targets) for member in members]).logsumexp(0) - math.log(3)
    # Chunks of 6 queries against all 15 at once: the readout's float32 features of the same context
    # come out of GEMMs of other shapes, which some CPUs block differently (an Intel Xeon differed
    # in the 7th digit), and its nearly noiseless solve amplifies that to ~3e-4 in the
    # log-likelihood. A wrong mixture would be off by tenths.
    np.testing.assert_allclose(ensemble.log_likelihood(X_test, y_test), expected.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ensemble.predict(X_test), distribution.mean.numpy(), rtol=1e-5, atol=1e-6)
    bands = ensemble.predict_quantiles(X_test, (0.1, 0.5, 0.9))
    assert (np.diff(bands, axis=1) > 0).all()
    np.testing.assert_allclose(distribution.cdf(torch.as_tensor(bands[:, 1], dtype=torch.float32)), 0.5, atol=1e-4)


def test_ensembles_mirror_the_features_where_the_prior_is_symmetric():
    """With one feature, reordering alone gives no other view; under a GP prior the data's mirror
    image is one (`pfn.ensemble.has_cube_symmetries`), and the members run through the views
    before repeating one. Not under a learning-curve prior, whose one input is time."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-2, 5, size=(30, 1))
    y = np.sin(X[:, 0]) + 0.05 * rng.normal(size=30)
    X_test = np.linspace(-2, 5, 9)[:, None]
    ensemble = PFNRegressor("gp", n_ensemble=4, random_state=0).fit(X, y)
    assert [bool(m.negated[0]) for m in ensemble.ensemble_] == [False, True, False, True]
    model = pfn.load("gp")
    original, mirrored = model.predict(X, y, X_test), model.predict(-X, y, -X_test)
    expected = torch.stack([original.log_prob(torch.as_tensor(y[:9])), mirrored.log_prob(torch.as_tensor(y[:9]))])
    np.testing.assert_allclose(
        ensemble.log_likelihood(X_test, y[:9]), (expected.logsumexp(0) - math.log(2)).numpy(), rtol=1e-4, atol=1e-4
    )
    assert not torch.allclose(original.mean, mirrored.mean, atol=1e-4)  # the mirror image is another view
    curves = PFNRegressor("lc", n_ensemble=3, random_state=0).fit(
        np.arange(1.0, 11.0)[:, None], np.linspace(0.3, 0.6, 10)
    )
    assert not any(m.negated.any() for m in curves.ensemble_)


def test_ensembles_are_reproducible_and_average_members(tiny_regressor, tiny_classifier, regression_data):
    X, y, X_test, _ = regression_data
    single = PFNRegressor(tiny_regressor).fit(X, y)
    a = PFNRegressor(tiny_regressor, n_ensemble=4, random_state=0).fit(X, y)
    b = PFNRegressor(tiny_regressor, n_ensemble=4, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict(X_test), b.predict(X_test))
    assert not np.allclose(a.predict(X_test), single.predict(X_test))  # other feature orders count
    # The ensemble's distribution is the average of its members' distributions.
    model = pfn.load(tiny_regressor)
    members = [model.predict(m.view(X), y, m.view(X_test)) for m in a.ensemble_]
    mean_of_members = torch.stack([member.mean for member in members]).mean(0)
    np.testing.assert_allclose(a.predict(X_test), mean_of_members.numpy(), rtol=1e-4, atol=1e-5)
    # Chunks and all at once agree.
    chunked = PFNRegressor(tiny_regressor, n_ensemble=4, random_state=0, chunk_size=4).fit(X, y)
    np.testing.assert_allclose(chunked.predict(X_test), a.predict(X_test), rtol=1e-5, atol=1e-6)
    labels = (X[:, 0] > 0.5).astype(int)
    classifier = PFNClassifier(tiny_classifier, n_ensemble=3, random_state=1).fit(X, labels)
    assert len({tuple(m.class_ids) for m in classifier.ensemble_}) > 1
    np.testing.assert_allclose(classifier.predict_proba(X_test).sum(1), 1.0, atol=1e-6)


def test_pipeline_cross_val_score_grid_search_and_pandas(tiny_regressor, tiny_classifier, regression_data):
    X, y, _, _ = regression_data
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    scores = cross_val_score(make_pipeline(StandardScaler(), PFNRegressor(tiny_regressor)), frame, pd.Series(y), cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    search = GridSearchCV(PFNRegressor(tiny_regressor), {"point_estimate": ["mean", "median"]}, cv=3).fit(frame, y)
    assert search.best_params_["point_estimate"] in ("mean", "median")
    fitted = PFNRegressor(tiny_regressor).fit(frame, y)
    np.testing.assert_array_equal(fitted.feature_names_in_, ["a", "b", "c"])
    labels = pd.Series(np.where(X[:, 0] > 0.5, "high", "low"))
    accuracy = cross_val_score(PFNClassifier(tiny_classifier), frame, labels, cv=3)
    assert np.isfinite(accuracy).all()


def test_bad_inputs_get_clear_errors(tiny_regressor, tiny_classifier, regression_data):
    X, y, X_test, _ = regression_data
    with pytest.raises(NotFittedError):
        PFNRegressor(tiny_regressor).predict(X_test)
    with pytest.raises(ValueError, match="at most 10"):
        PFNRegressor(tiny_regressor).fit(np.random.rand(20, 11), np.random.rand(20))
    with pytest.raises(ValueError, match="at most 4"):
        PFNClassifier(tiny_classifier).fit(np.random.rand(20, 2), np.arange(20) % 5)
    with pytest.raises(ValueError, match="n_ensemble must be an integer >= 1"):
        PFNRegressor(tiny_regressor, n_ensemble=0).fit(X, y)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        PFNRegressor(tiny_regressor, chunk_size=0).fit(X, y)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        PFNRegressor(tiny_regressor, precision="float16").fit(X, y)
    with pytest.raises(ValueError, match="point_estimate must be 'mean' or 'median'"):
        PFNRegressor(tiny_regressor, point_estimate="mode").fit(X, y)
    with pytest.raises(ValueError, match="device must be"):
        PFNRegressor(tiny_regressor, device="gpu0").fit(X, y)
    with pytest.raises(ValueError, match="classification model"):
        PFNRegressor(tiny_classifier).fit(X, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        PFNClassifier(tiny_classifier).fit(X, y)  # continuous targets are not labels
    with pytest.raises(FileNotFoundError, match="no checkpoint file or shipped model"):
        PFNRegressor("no-such-model").fit(X, y)
    fitted = PFNRegressor(tiny_regressor).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but PFNRegressor is expecting 3"):
        fitted.predict(X_test[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(np.where(X_test > 0.9, np.nan, X_test))
    with pytest.raises(ValueError, match="quantiles must be levels strictly between 0 and 1"):
        fitted.predict_quantiles(X_test, quantiles=(0.5, 1.0))


def test_bfloat16_estimators_predict_nearly_the_same(tiny_regressor, tiny_classifier, regression_data):
    X, y, X_test, _ = regression_data
    exact, fast = (PFNRegressor(tiny_regressor, precision=p).fit(X, y) for p in ("float32", "bfloat16"))
    assert fast.model_.precision == "bfloat16" and exact.model_.precision == "float32"  # not one cached model
    difference = np.abs(fast.predict(X_test) - exact.predict(X_test))
    assert 0 < difference.max() < 0.05 * y.std()
    labels = (X[:, 0] > 0.5).astype(int)
    probabilities = [
        PFNClassifier(tiny_classifier, precision=p).fit(X, labels).predict_proba(X_test)
        for p in ("float32", "bfloat16")
    ]
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=0.02)


def test_a_context_longer_than_trained_warns_with_the_trained_length(tiny_regressor):
    rng = np.random.default_rng(0)
    X, y = rng.uniform(size=(80, 2)), rng.standard_normal(80)
    with pytest.warns(UserWarning, match="trained on contexts of up to 59 points"):
        PFNRegressor(tiny_regressor).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PFNRegressor(tiny_regressor).fit(X[:59], y[:59])


def test_a_model_file_is_loaded_once(tiny_regressor, regression_data):
    X, y, X_test, _ = regression_data
    by_path = PFNRegressor(tiny_regressor).fit(X, y)
    again = PFNRegressor(Path(tiny_regressor)).fit(X, y)
    assert by_path.model_ is again.model_  # cached: GridSearchCV's clones do not reload the file


# -- model zoo ---------------------------------------------------------------------------------
def test_list_models_gives_a_card_per_shipped_checkpoint():
    cards = {card.name: card for card in list_models()}
    assert set(cards) == {path.stem for path in CHECKPOINT_DIR.glob("*.pfn")}
    gp = cards["gp"]
    payload_config = pfn.load("gp").config
    assert gp.task == "regression" and gp.prior == payload_config.prior
    assert gp.max_features == payload_config.model.max_features
    assert gp.parameters == sum(p.numel() for p in pfn.load("gp").backbone.parameters())
    assert gp.trained_steps is not None and gp.datasets_seen == gp.trained_steps * gp.batch_size
    text = str(gp)
    for part in ("prior", "parameters", "steps", "command", "gp.pfn"):
        assert part in text
    assert pfn.list_models()[0].name == sorted(cards)[0]


def test_card_file_adds_description_and_rejects_unknown_keys(tmp_path, tiny_regressor):
    path = tmp_path / "mine.pfn"
    path.write_bytes(Path(tiny_regressor).read_bytes())
    card = model_card(path)
    assert card.description == "" and card.benchmark == "" and "pfn models" in card.command + str(card)
    (tmp_path / "mine.json").write_text(json.dumps({"description": "mine", "benchmark": "R^2 0.9"}))
    card = model_card(path)
    assert card.description == "mine" and "R^2 0.9" in str(card)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "mine.json").write_text(json.dumps({"benchmark": "R^2 0.9", "sha256": digest}))
    assert not model_card(path).stale and "R^2 0.9" in str(model_card(path))
    (tmp_path / "mine.json").write_text(json.dumps({"description": "mine", "benchmark": "R^2 0.9", "sha256": "0" * 64}))
    card = model_card(path)  # the card describes another file: its figures are not shown
    assert card.stale and card.description == "mine" and "R^2 0.9" not in str(card)
    assert "describes another version" in str(card)
    (tmp_path / "mine.json").write_text(json.dumps({"benchmarks": "typo"}))
    with pytest.raises(CheckpointError, match="unknown model card keys"):
        model_card(path)


def test_cli_models_lists_cards_and_writes_a_config_that_retrains(tmp_path, tiny_regressor, capsys):
    main(["models"])
    out = capsys.readouterr().out
    for card in list_models():
        assert f"{card.name}: " in out
    config_path = tmp_path / "runs" / "again.yaml"  # a folder that does not exist yet
    main(["models", tiny_regressor, "--write-config", str(config_path)])
    assert str(config_path) in capsys.readouterr().out
    assert load_config(config_path).to_dict() == pfn.load(tiny_regressor).config.to_dict()


def test_loading_a_newer_checkpoint_format_fails_clearly(tmp_path, tiny_regressor):
    payload = torch.load(tiny_regressor, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pfn")
    with pytest.raises(CheckpointError, match="format version 99"):
        PFNRegressor(str(tmp_path / "future.pfn")).fit(np.random.rand(5, 2), np.random.rand(5))
    with pytest.raises(CheckpointError, match="format version 99"):
        model_card(tmp_path / "future.pfn")


# -- the shipped defaults -----------------------------------------------------------------------
needs_regressor = pytest.mark.skipif(
    not (CHECKPOINT_DIR / "regressor.pfn").is_file(), reason="checkpoints/regressor.pfn not shipped"
)
needs_classifier = pytest.mark.skipif(
    not (CHECKPOINT_DIR / "classifier.pfn").is_file(), reason="checkpoints/classifier.pfn not shipped"
)


@needs_regressor
def test_default_regressor_is_calibrated_on_its_prior():
    model = pfn.load("regressor")
    prior = build_prior(model.prior_spec)
    batch = prior.sample(12, 220, 4, torch.Generator().manual_seed(2024))
    covered = []
    for x, y in zip(batch.x.numpy(), batch.y.numpy(), strict=True):
        quantiles = PFNRegressor("regressor").fit(x[:100], y[:100]).predict_quantiles(x[100:], (0.05, 0.5, 0.95))
        assert (np.diff(quantiles, axis=1) >= 0).all()
        covered.append((quantiles[:, 0] <= y[100:]) & (y[100:] <= quantiles[:, 2]))
    coverage = np.mean(covered)
    assert abs(coverage - 0.9) < 0.04, coverage  # 1,440 query points: the standard error is about 0.008


@needs_classifier
def test_default_classifier_on_iris_with_string_labels():
    X, y = load_iris(return_X_y=True, as_frame=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    assert cross_val_score(PFNClassifier(), X, names, cv=5).mean() > 0.9


@needs_regressor
@needs_classifier
def test_defaults_handle_20_features_1000_points_and_10_classes():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(1000, 20))
    y = X @ rng.standard_normal(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1,000 points is longer than the trained contexts
        assert PFNRegressor().fit(X, y).score(X[:50], y[:50]) > 0.5
        labels = np.digitize(y, np.quantile(y, np.linspace(0.1, 0.9, 9)))
        assert PFNClassifier().fit(X, labels).predict_proba(X[:5]).shape == (5, 10)
    with pytest.raises(ValueError, match="at most 20"):
        PFNRegressor().fit(rng.uniform(size=(10, 21)), rng.standard_normal(10))
    pipeline = make_pipeline(PCA(n_components=20), PFNRegressor()).fit(rng.uniform(size=(100, 30)), y[:100])
    assert pipeline.predict(rng.uniform(size=(3, 30))).shape == (3,)


@needs_regressor
@needs_classifier
def test_readme_estimator_example_runs_and_fits_diabetes():
    code = readme_blocks("## Use it like scikit-learn")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["scores"].mean() > 0.4  # cross-validated R^2 on diabetes; linear regression: 0.49
    assert set(namespace["clf"].classes_) == {"setosa", "versicolor", "virginica"}


def test_every_card_file_belongs_to_a_shipped_checkpoint():
    for path in CHECKPOINT_DIR.glob("*.json"):
        assert path.with_suffix(".pfn").is_file(), f"{path.name} has no checkpoint"
        model_card(path.with_suffix(".pfn"))  # known keys only
