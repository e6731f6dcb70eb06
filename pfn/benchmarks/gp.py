"""`pfn bench gp`: a PFN against the exact GP posterior on held-out datasets from the same prior."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfn.baselines import exact_gp_predictive
from pfn.benchmarks.common import (
    BENCH_STREAM,
    assemble_result,
    load_for_bench,
    results_name,
    standard_error,
    timed,
    write_results,
)
from pfn.distributions import RiemannDistribution
from pfn.ensemble import symmetry_ensemble
from pfn.predictor import PFN
from pfn.training import seeded_generators
from priors import GPPrior, build_prior


def gp_bench_rows(
    model: PFN,
    contexts: list[int],
    features: list[int],
    num_datasets: int,
    num_queries: int,
    seed: int,
    ensemble: int = 1,
) -> list[dict[str, Any]]:
    """One row per (context size, feature count): mean NLL per query point of PFN and exact GP
    (and with `ensemble` > 1, of the PFN averaged over that many views of the input cube)."""
    prior = build_prior(model.prior_spec)
    if not isinstance(prior, GPPrior) or not prior.has_fixed_hyperparameters:
        raise ValueError(
            f"`pfn bench gp` needs a model trained on a GP prior with fixed hyperparameters; "
            f"this model's prior is {model.prior_spec}"
        )
    too_many = [f for f in features if f > model.max_features]
    if too_many:
        raise ValueError(f"feature counts {too_many} exceed the model's maximum of {model.max_features}")
    rows = []
    for num_context in contexts:
        for num_features in features:
            views, generator = seeded_generators(seed, BENCH_STREAM, num_context, num_features)
            batch = prior.sample(num_datasets, num_context + num_queries, num_features, generator)
            x_context, y_context = batch.x[:, :num_context], batch.y[:, :num_context]
            x_query, y_query = batch.x[:, num_context:], batch.y[:, num_context:]
            # The data are in the prior's own units, so the model sees them as in training.
            pfn_dist, pfn_time = timed(model.predict, x_context, y_context, x_query, normalize=False)
            gp_dist, gp_time = timed(exact_gp_predictive, x_context, y_context, x_query, prior)
            pfn_nll = -pfn_dist.log_prob(y_query).double().mean(-1)  # [datasets]
            gp_nll = -gp_dist.log_prob(y_query.double()).mean(-1)
            # The exact answer put on the PFN's own buckets: the best NLL its head can reach.
            floor_nll = -RiemannDistribution.nearest_to(gp_dist, pfn_dist.borders).log_prob(y_query).mean(-1)
            difference = pfn_nll - gp_nll
            # Where the gap comes from, in units of the exact predictive's std: a spread that is
            # too wide or narrow (std ratio away from 1), or a centre in the wrong place.
            gp_std = gp_dist.stddev
            std_ratio = (pfn_dist.stddev.double() / gp_std).median()
            location_error = ((pfn_dist.median.double() - gp_dist.mean).abs() / gp_std).median()
            if ensemble > 1:
                members, members_time = timed(symmetry_ensemble, model, x_context, y_context, x_query, ensemble, views)
                ensemble_difference = -members.log_prob(y_query).double().mean(-1) - gp_nll
            rows.append(
                {
                    "context": num_context,
                    "features": num_features,
                    "pfn_nll": pfn_nll.mean().item(),
                    "gp_nll": gp_nll.mean().item(),
                    "difference": difference.mean().item(),
                    "difference_se": standard_error(difference),
                    "head_floor": (floor_nll - gp_nll).mean().item(),
                    "std_ratio": std_ratio.item(),
                    "location_error": location_error.item(),
                    "pfn_seconds_per_dataset": pfn_time / num_datasets,
                    "gp_seconds_per_dataset": gp_time / num_datasets,
                }
            )
            row = rows[-1]
            if ensemble > 1:
                row["ensemble_difference"] = ensemble_difference.mean().item()
                row["ensemble_difference_se"] = standard_error(ensemble_difference)
                row["ensemble_seconds_per_dataset"] = members_time / num_datasets
            print(
                f"  context {num_context:4d}  features {num_features}  PFN {row['pfn_nll']:+.4f}  "
                f"GP {row['gp_nll']:+.4f}  diff {row['difference']:+.4f}",
                flush=True,
            )
    return rows


def markdown_table(summary: list[dict[str, Any]]) -> str:
    with_ensemble = "ensemble_difference" in summary[0]
    header = (
        "| context | PFN NLL | exact GP NLL | PFN - GP | ± s.e. | head floor | std ratio | location error "
        "| PFN ms/dataset | GP ms/dataset |"
    )
    if with_ensemble:
        header += " ensemble - GP | ± s.e. | ensemble ms/dataset |"
    lines = [header, "|---:" * header.count(" |") + "|"]
    for row in summary:
        line = (
            f"| {row['context']} | {row['pfn_nll']:.4f} | {row['gp_nll']:.4f} | {row['difference']:+.4f} | "
            f"{row['difference_se']:.4f} | {row['head_floor']:+.4f} | {row['std_ratio']:.2f} | "
            f"{row['location_error']:.2f} | {1e3 * row['pfn_seconds_per_dataset']:.3f} | "
            f"{1e3 * row['gp_seconds_per_dataset']:.3f} |"
        )
        if with_ensemble:
            line += (
                f" {row['ensemble_difference']:+.4f} | {row['ensemble_difference_se']:.4f} | "
                f"{1e3 * row['ensemble_seconds_per_dataset']:.3f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def run_gp_bench(
    model_name_or_path: str,
    contexts: list[int],
    features: list[int],
    num_datasets: int = 100,
    num_queries: int = 10,
    seed: int = 12345,
    out_dir: Path | None = Path("benchmarks/results"),
    precision: str = "float32",
    tag: str = "",
    ensemble: int = 1,
) -> dict[str, Any]:
    """`ensemble` > 1 also scores the model averaged over that many views of the input cube
    (`pfn.ensemble.symmetry_ensemble`); the headline difference stays the single model's."""
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    model = load_for_bench("gp", model_name_or_path, seed, num_datasets, num_queries, precision)
    rows = gp_bench_rows(model, contexts, features, num_datasets, num_queries, seed, ensemble)
    result = assemble_result(
        "gp",
        model_name_or_path,
        model,
        rows,
        datasets_per_cell=num_datasets,
        queries_per_dataset=num_queries,
        seed=seed,
        pfn_precision=precision,
        ensemble=ensemble,
    )
    summary, mean_difference = result["summary"], result["mean_difference"]
    mean_floor = sum(row["head_floor"] for row in summary) / len(summary)
    description = (
        f"Mean NLL per query point on held-out datasets of the model's own prior ({num_datasets} datasets x "
        f"{num_queries} queries per context size and feature count {features}, seed {seed}), averaged over "
        f"feature counts. Mean PFN - exact GP over context sizes: {mean_difference:+.4f} nats per query point. "
        f"Head floor: the exact GP predictive put on the PFN's own buckets (each bucket gets the Gaussian's mass) "
        f"minus the exact GP; no network with these buckets can do better on average (mean over context sizes "
        f"{mean_floor:+.4f}). Std ratio: median over query points of the PFN's predictive std over the exact "
        f"GP's (1 is right; above 1 the PFN is too unsure); location error: median over query points of "
        f"|PFN median - GP mean| in units of the GP's std (0 is right). Both are medians per cell, averaged "
        f"over feature counts."
    )
    if ensemble > 1:
        result["ensemble_mean_difference"] = sum(row["ensemble_difference"] for row in summary) / len(summary)
        description += (
            f" Ensemble: the PFN's predictive averaged over {ensemble} views of each dataset (the data as given, and "
            f"random symmetries of the input cube: features reordered and reflected), minus the exact GP: "
            f"{result['ensemble_mean_difference']:+.4f} nats per query point on average."
        )
    write_results(results_name("gp", precision, tag), result, markdown_table(summary), description, out_dir)
    print(f"mean PFN - exact GP NLL over context sizes: {mean_difference:+.4f} nats per query point")
    if ensemble > 1:
        print(f"the same for its ensemble of {ensemble} views: {result['ensemble_mean_difference']:+.4f}")
    return result
