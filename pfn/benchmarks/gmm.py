"""`pfn bench gmm`: a classification PFN against the exact GMM posterior and classical classifiers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.gaussian_process.kernels import RBF, ConstantKernel

from pfn.baselines.gmm_exact import gmm_posterior_predictive
from pfn.benchmarks.common import (
    BENCH_STREAM,
    assemble_result,
    load_for_bench,
    results_name,
    standard_error,
    timed,
    write_results,
)
from pfn.ensemble import symmetry_ensemble
from pfn.predictor import PFN
from pfn.training import seeded_generators
from priors import GMMPrior, build_prior

# Classical classifiers give probability 0 to classes absent from the context; mixing in this
# much of the uniform distribution keeps their cross-entropy finite.
SMOOTHING = 1e-3
CLASSICAL = ("qda", "gpc")


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-label confidence: [n, C] probabilities and [n] labels."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    which = torch.bucketize(confidence, edges[1:-1])
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.double().mean().item() * abs(correct[inside].mean() - confidence[inside].mean()).item()
    return error


def kl_divergence(exact: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """KL(exact || probs) over the last (class) dimension: the expected excess cross-entropy of
    `probs` when labels come from `exact`."""
    exact, probs = exact.double(), probs.double()
    return (exact * (exact.clamp_min(1e-300).log() - probs.clamp_min(1e-300).log())).sum(-1)


def classical_probs(
    name: str, x_context: np.ndarray, labels: np.ndarray, x_query: np.ndarray, num_classes: int
) -> np.ndarray:
    """Class probabilities [q, C] from a scikit-learn classifier fitted to one context."""
    probs = np.full((len(x_query), num_classes), 1.0 / num_classes)
    if name == "qda":
        # QDA needs more points than features in a class to estimate its covariance; classes with
        # fewer are left out (they keep only the smoothing mass), as a user of QDA would have to.
        ids, counts = np.unique(labels, return_counts=True)
        enough = ids[counts > x_context.shape[1]]
        usable = np.isin(labels, enough)
        if len(enough) >= 2:
            model = QuadraticDiscriminantAnalysis(reg_param=0.1).fit(x_context[usable], labels[usable])
            probs = np.zeros_like(probs)
            probs[:, model.classes_.astype(int)] = model.predict_proba(x_query)
    elif name == "gpc":
        if len(np.unique(labels)) >= 2:
            kernel = ConstantKernel(1.0) * RBF(1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings of the kernel optimiser
                model = GaussianProcessClassifier(kernel=kernel, random_state=0).fit(x_context, labels)
            probs = np.zeros_like(probs)
            probs[:, model.classes_.astype(int)] = model.predict_proba(x_query)
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(CLASSICAL)}")
    return (1 - SMOOTHING) * probs + SMOOTHING / num_classes


def classical_batch(
    name: str, x_context: torch.Tensor, labels: torch.Tensor, x_query: torch.Tensor, num_classes: int
) -> np.ndarray:
    """`classical_probs` fitted to each dataset of a batch, one at a time: [b, q, C]."""
    return np.stack(
        [
            classical_probs(name, x_context[i].numpy(), labels[i].numpy(), x_query[i].numpy(), num_classes)
            for i in range(len(x_context))
        ]
    )


def gmm_bench_rows(
    model: PFN,
    contexts: list[int],
    features: list[int],
    num_datasets: int,
    num_queries: int,
    seed: int,
    baselines: tuple[str, ...] = CLASSICAL,
    ensemble: int = 1,
) -> list[dict[str, Any]]:
    prior = build_prior(model.prior_spec)
    if not isinstance(prior, GMMPrior) or not model.is_classifier:
        raise ValueError(
            f"`pfn bench gmm` needs a classification model of a GMM prior; this model's prior is {model.prior_spec}"
        )
    too_many = [f for f in features if f > model.max_features]
    if too_many:
        raise ValueError(f"feature counts {too_many} exceed the model's maximum of {model.max_features}")
    num_classes = prior.max_classes
    rows = []
    for num_context in contexts:
        for num_features in features:
            views, generator = seeded_generators(seed, BENCH_STREAM, num_context, num_features)
            batch = prior.sample(num_datasets, num_context + num_queries, num_features, generator)
            x_context, y_context = batch.x[:, :num_context], batch.y[:, :num_context]
            x_query, y_query = batch.x[:, num_context:], batch.y[:, num_context:].long()
            pfn_dist, pfn_time = timed(model.predict, x_context, y_context, x_query, normalize=False)
            exact, exact_time = timed(gmm_posterior_predictive, x_context, y_context, x_query, prior)
            methods = {"pfn": pfn_dist.probs.double(), "exact": exact}
            seconds = {"pfn": pfn_time / num_datasets, "exact": exact_time / num_datasets}
            if ensemble > 1:
                members, members_time = timed(symmetry_ensemble, model, x_context, y_context, x_query, ensemble, views)
                methods["pfn_ensemble"] = members.probs.double()
                seconds["pfn_ensemble"] = members_time / num_datasets
            for name in baselines:
                probs, elapsed = timed(classical_batch, name, x_context, y_context, x_query, num_classes)
                methods[name] = torch.from_numpy(probs)
                seconds[name] = elapsed / num_datasets
            row: dict[str, Any] = {"context": num_context, "features": num_features}
            per_dataset_ce = {}
            for name, probs in methods.items():
                log_likelihood = probs.gather(-1, y_query[..., None]).squeeze(-1).clamp_min(1e-300).log()
                per_dataset_ce[name] = -log_likelihood.mean(-1)  # [datasets]
                row[f"{name}_ce"] = per_dataset_ce[name].mean().item()
                row[f"{name}_accuracy"] = (probs.argmax(-1) == y_query).double().mean().item()
                row[f"{name}_ece"] = expected_calibration_error(probs.flatten(0, 1), y_query.flatten())
                row[f"{name}_seconds_per_dataset"] = seconds[name]
            line = f"  context {num_context:4d}  features {num_features}"
            for name, prefix in (("pfn", ""), ("pfn_ensemble", "ensemble_")):
                if name not in methods:
                    continue
                difference = per_dataset_ce[name] - per_dataset_ce["exact"]
                # The same gap in expectation over each query's label under the exact posterior
                # (the KL divergence from it), free of the noise of the drawn labels.
                divergence = kl_divergence(exact, methods[name]).mean(-1)  # [datasets]
                row[f"{prefix}difference"] = difference.mean().item()
                row[f"{prefix}difference_se"] = standard_error(difference)
                row[f"{prefix}expected_difference"] = divergence.mean().item()
                row[f"{prefix}expected_difference_se"] = standard_error(divergence)
                line += f"  {name} - exact {difference.mean():+.4f} (expected {divergence.mean():+.4f})"
            rows.append(row)
            print(line, flush=True)
    return rows


def markdown_table(summary: list[dict[str, Any]], methods: list[str]) -> str:
    header = "| context | PFN - exact CE | ± s.e. | expected (KL) | ± s.e. | "
    header += " | ".join(f"{m} CE / acc / ECE" for m in methods)
    header += " | " + " | ".join(f"{m} ms/dataset" for m in methods) + " |"
    lines = [header, "|" + "---:|" * (5 + 2 * len(methods))]
    for row in summary:
        cells = [f"{row['context']}", f"{row['difference']:+.4f}", f"{row['difference_se']:.4f}"]
        cells += [f"{row['expected_difference']:+.4f}", f"{row['expected_difference_se']:.4f}"]
        cells += [f"{row[f'{m}_ce']:.4f} / {row[f'{m}_accuracy']:.3f} / {row[f'{m}_ece']:.3f}" for m in methods]
        cells += [f"{1e3 * row[f'{m}_seconds_per_dataset']:.2f}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_gmm_bench(
    model_name_or_path: str,
    contexts: list[int],
    features: list[int],
    num_datasets: int = 50,
    num_queries: int = 20,
    seed: int = 12345,
    baselines: tuple[str, ...] = CLASSICAL,
    out_dir: Path | None = Path("benchmarks/results"),
    precision: str = "float32",
    tag: str = "",
    ensemble: int = 1,
) -> dict[str, Any]:
    """`ensemble` > 1 also scores the model averaged over that many rotated and relabelled views
    of each dataset (`pfn.ensemble.symmetry_ensemble`) as the method `pfn_ensemble`; the headline
    difference stays the single model's."""
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    model = load_for_bench("gmm", model_name_or_path, seed, num_datasets, num_queries, precision)
    rows = gmm_bench_rows(model, contexts, features, num_datasets, num_queries, seed, baselines, ensemble)
    result = assemble_result(
        "gmm",
        model_name_or_path,
        model,
        rows,
        datasets_per_cell=num_datasets,
        queries_per_dataset=num_queries,
        seed=seed,
        classical_smoothing=SMOOTHING,
        pfn_precision=precision,
        ensemble=ensemble,
    )
    summary, mean_difference = result["summary"], result["mean_difference"]
    methods = ["pfn", *(["pfn_ensemble"] if ensemble > 1 else []), "exact", *baselines]

    def mean_over_contexts(key: str) -> float:
        return sum(r[key] for r in summary) / len(summary)

    result["mean_expected_difference"] = mean_over_contexts("expected_difference")
    if ensemble > 1:
        result["ensemble_mean_difference"] = mean_over_contexts("ensemble_difference")
        result["ensemble_mean_expected_difference"] = mean_over_contexts("ensemble_expected_difference")
    description = (
        f"Cross-entropy (nats per query point), accuracy and expected calibration error on held-out datasets of "
        f"the model's own prior ({num_datasets} datasets x {num_queries} queries per context size and feature "
        f"count {features}, seed {seed}), averaged over feature counts. Classical baselines are mixed with "
        f"{SMOOTHING} of the uniform distribution. Mean PFN - exact CE: {mean_difference:+.4f} nats. 'expected': the "
        f"same difference in expectation over each query's label under the exact posterior (KL(exact || PFN)), "
        f"free of the drawn labels' noise: {result['mean_expected_difference']:+.4f} nats."
    )
    if ensemble > 1:
        description += (
            f" pfn_ensemble: the PFN averaged over {ensemble} views of each dataset (the data as given, and "
            f"random rotations of x with random class ids); its mean - exact CE: "
            f"{result['ensemble_mean_difference']:+.4f} nats "
            f"(expected: {result['ensemble_mean_expected_difference']:+.4f})."
        )
    write_results(
        results_name("gmm", precision, tag),
        result,
        markdown_table(summary, methods),
        description,
        out_dir,
    )
    print(
        f"mean PFN - exact cross-entropy over context sizes: {mean_difference:+.4f} nats per query point "
        f"(in expectation over the labels: {result['mean_expected_difference']:+.4f})"
    )
    if ensemble > 1:
        print(
            f"the same for its ensemble of {ensemble} views: {result['ensemble_mean_difference']:+.4f} "
            f"({result['ensemble_mean_expected_difference']:+.4f})"
        )
    return result
