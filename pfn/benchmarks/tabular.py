"""`pfn bench tabular`: the scikit-learn estimators on scikit-learn's bundled real datasets.

Each dataset is split by the same shuffled K-fold for every method; a PFN gets each training
fold as its context. Regression (diabetes) reports R^2 and, for methods with a predictive
distribution, the negative log-likelihood per point; classification (iris, wine, breast cancer,
digits) reports accuracy and log-loss. Where a dataset has more features than the PFN supports,
the PFN's pipeline starts with a PCA down to that number (the baselines see every feature).
Nothing is downloaded: these datasets ship with scikit-learn.
"""

from __future__ import annotations

import datetime
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, log_loss, r2_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pfn.benchmarks.common import results_name, write_results
from pfn.estimators import PFNClassifier, PFNRegressor
from pfn.zoo import model_card

REGRESSION = {"diabetes": load_diabetes}
CLASSIFICATION = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer, "digits": load_digits}


def _pfn_pipeline(estimator: PFNRegressor | PFNClassifier, num_features: int) -> Pipeline:
    limit = model_card(estimator.model).max_features
    return make_pipeline(PCA(n_components=limit), estimator) if num_features > limit else make_pipeline(estimator)


def _gaussian_process(num_features: int) -> GaussianProcessRegressor:
    kernel = ConstantKernel() * RBF(length_scale=np.ones(num_features)) + WhiteKernel()
    return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0)


def _gaussian_nll(model: Pipeline, X: np.ndarray, y: np.ndarray) -> float:
    mean, std = model.predict(X, return_std=True)
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((y - mean) / std) ** 2))


def _cross_validate(
    estimator: Pipeline, X: np.ndarray, y: np.ndarray, folds: Any, score: Callable[[Any, Any, Any], dict]
) -> dict[str, float]:
    """Mean of each score over the folds, plus seconds per fold (fit + predict); a fresh clone per fold."""
    totals: dict[str, list[float]] = {}
    for train, test in folds.split(X, y):
        model = clone(estimator)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings, contexts longer than trained
            model.fit(X[train], y[train])
            scores = score(model, X[test], y[test])
        scores["seconds"] = time.perf_counter() - start
        for key, value in scores.items():
            totals.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in totals.items()}


def run_tabular_bench(
    regressor: str = "regressor",
    classifier: str = "classifier",
    n_ensemble: int = 4,
    num_folds: int = 5,
    seed: int = 0,
    device: str = "auto",
    out_dir: Path | None = Path("benchmarks/results"),
    tag: str = "",
) -> dict[str, Any]:
    torch.manual_seed(seed)
    rows = []

    def pfn_regressor(n: int) -> PFNRegressor:
        return PFNRegressor(regressor, device=device, n_ensemble=n, random_state=seed)

    def pfn_classifier(n: int) -> PFNClassifier:
        return PFNClassifier(classifier, device=device, n_ensemble=n, random_state=seed)

    def regression_scores(model, X, y):
        scores = {"r2": r2_score(y, model.predict(X))}
        if isinstance(model[-1], PFNRegressor):
            features = model[:-1].transform(X) if len(model) > 1 else X
            scores["nll"] = -float(np.mean(model[-1].log_likelihood(features, y)))
        elif isinstance(model[-1], GaussianProcessRegressor):
            scores["nll"] = _gaussian_nll(model, X, y)
        return scores

    def classification_scores(model, X, y):
        probabilities = np.clip(model.predict_proba(X), 1e-12, 1)
        return {
            "accuracy": accuracy_score(y, model.classes_[probabilities.argmax(1)]),
            "log_loss": log_loss(y, probabilities, labels=model.classes_),
        }

    for name, loader in REGRESSION.items():
        X, y = loader(return_X_y=True)
        folds = KFold(num_folds, shuffle=True, random_state=seed)
        d = X.shape[1]
        methods = {
            "PFNRegressor": _pfn_pipeline(pfn_regressor(1), d),
            f"PFNRegressor (ensemble of {n_ensemble})": _pfn_pipeline(pfn_regressor(n_ensemble), d),
            "RidgeCV": make_pipeline(StandardScaler(), RidgeCV()),
            "GaussianProcess (ARD, fitted)": make_pipeline(StandardScaler(), _gaussian_process(d)),
            "HistGradientBoosting": make_pipeline(HistGradientBoostingRegressor(random_state=seed)),
        }
        for method, estimator in methods.items():
            rows.append(
                {"dataset": name, "task": "regression", "n": len(X), "features": d, "method": method}
                | _cross_validate(estimator, X, y, folds, regression_scores)
            )
            print(rows[-1], flush=True)

    for name, loader in CLASSIFICATION.items():
        X, y = loader(return_X_y=True)
        folds = StratifiedKFold(num_folds, shuffle=True, random_state=seed)
        d = X.shape[1]
        methods = {
            "PFNClassifier": _pfn_pipeline(pfn_classifier(1), d),
            f"PFNClassifier (ensemble of {n_ensemble})": _pfn_pipeline(pfn_classifier(n_ensemble), d),
            "LogisticRegression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            "RandomForest": make_pipeline(RandomForestClassifier(300, random_state=seed)),
        }
        for method, estimator in methods.items():
            rows.append(
                {"dataset": name, "task": "classification", "n": len(X), "features": d, "method": method}
                | _cross_validate(estimator, X, y, folds, classification_scores)
            )
            print(rows[-1], flush=True)

    result = {
        "benchmark": "tabular",
        "regressor": regressor,
        "classifier": classifier,
        "n_ensemble": n_ensemble,
        "folds": num_folds,
        "seed": seed,
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "device": "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"),
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
    }
    write_results(
        results_name("tabular", tag=tag),
        result | {"model": f"{regressor}, {classifier}"},
        _table(rows),
        _description(result),
        out_dir,
    )
    return result


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | n x features | method | R^2 / accuracy | NLL / log-loss | seconds per fold |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        main = row.get("r2", row.get("accuracy"))
        second = row.get("nll", row.get("log_loss"))
        second_text = "-" if second is None else f"{second:.3f}"
        lines.append(
            f"| {row['dataset']} | {row['n']} x {row['features']} | {row['method']} | {main:.3f} | {second_text} | "
            f"{row['seconds']:.2f} |"
        )
    return "\n".join(lines)


def _description(result: dict[str, Any]) -> str:
    return (
        f"`pfn bench tabular --model {result['regressor']},{result['classifier']}`: {result['folds']}-fold "
        f"cross-validation (shuffled, seed {result['seed']}) on scikit-learn's bundled datasets; the same folds "
        "for every method. A PFN takes each training fold as its context (PCA first where a dataset has more "
        "features than the model supports); baselines are standardised where that matters. NLL is per point, "
        "in the units of y (only for methods with a predictive distribution). "
        f"Machine: {result['machine']['platform']}, {result['machine']['torch_threads']} torch threads, "
        f"device {result['machine']['device']}; {result['date']}."
    )
