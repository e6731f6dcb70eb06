"""`pfn bench gp`: a PFN against the exact GP posterior on held-out datasets from the same prior."""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pfn.baselines import exact_gp_predictive
from pfn.predictor import PFN, load
from pfn.training import seeded_generators
from priors import GPPrior, build_prior

# Seed stream tag for benchmark data; training draws from streams (seed, rank, step) and
# (seed, 10**6, draw), so benchmark datasets never coincide with training batches.
BENCH_STREAM = 7_777_777


def _timed(function, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def gp_bench_rows(
    model: PFN, contexts: list[int], features: list[int], num_datasets: int, num_queries: int, seed: int
) -> list[dict[str, Any]]:
    """One row per (context size, feature count): mean NLL per query point of PFN and exact GP."""
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
            _, generator = seeded_generators(seed, BENCH_STREAM, num_context, num_features)
            batch = prior.sample(num_datasets, num_context + num_queries, num_features, generator)
            x_context, y_context = batch.x[:, :num_context], batch.y[:, :num_context]
            x_query, y_query = batch.x[:, num_context:], batch.y[:, num_context:]
            # The data are in the prior's own units, so the model sees them as in training.
            pfn_dist, pfn_time = _timed(model.predict, x_context, y_context, x_query, normalize=False)
            gp_dist, gp_time = _timed(exact_gp_predictive, x_context, y_context, x_query, prior)
            pfn_nll = -pfn_dist.log_prob(y_query).double().mean(-1)  # [datasets]
            gp_nll = -gp_dist.log_prob(y_query.double()).mean(-1)
            difference = pfn_nll - gp_nll
            rows.append(
                {
                    "context": num_context,
                    "features": num_features,
                    "pfn_nll": pfn_nll.mean().item(),
                    "gp_nll": gp_nll.mean().item(),
                    "difference": difference.mean().item(),
                    "difference_se": (difference.std() / math.sqrt(num_datasets)).item(),
                    "pfn_seconds_per_dataset": pfn_time / num_datasets,
                    "gp_seconds_per_dataset": gp_time / num_datasets,
                }
            )
            print(
                f"  context {num_context:4d}  features {num_features}  PFN {rows[-1]['pfn_nll']:+.4f}  "
                f"GP {rows[-1]['gp_nll']:+.4f}  diff {rows[-1]['difference']:+.4f}",
                flush=True,
            )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the rows of each context size over feature counts."""
    by_context: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_context.setdefault(row["context"], []).append(row)
    summary = []
    for context, group in by_context.items():
        mean = {key: sum(r[key] for r in group) / len(group) for key in group[0] if key not in ("context", "features")}
        mean["difference_se"] = math.sqrt(sum(r["difference_se"] ** 2 for r in group)) / len(group)
        summary.append({"context": context, **mean})
    return summary


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| context | PFN NLL | exact GP NLL | PFN - GP | ± s.e. | PFN ms/dataset | GP ms/dataset |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        lines.append(
            f"| {row['context']} | {row['pfn_nll']:.4f} | {row['gp_nll']:.4f} | {row['difference']:+.4f} | "
            f"{row['difference_se']:.4f} | {1e3 * row['pfn_seconds_per_dataset']:.3f} | "
            f"{1e3 * row['gp_seconds_per_dataset']:.3f} |"
        )
    return "\n".join(lines)


def run_gp_bench(
    model_name_or_path: str,
    contexts: list[int],
    features: list[int],
    num_datasets: int = 100,
    num_queries: int = 10,
    seed: int = 12345,
    out_dir: Path | None = Path("benchmarks/results"),
) -> dict[str, Any]:
    model = load(model_name_or_path)
    if seed == model.config.seed:
        raise ValueError(f"bench seed {seed} equals the model's training seed; choose another --seed")
    print(
        f"pfn bench gp: model {model_name_or_path} ({model}), {num_datasets} datasets x {num_queries} queries "
        f"per cell, seed {seed}",
        flush=True,
    )
    rows = gp_bench_rows(model, contexts, features, num_datasets, num_queries, seed)
    summary = summarise(rows)
    result = {
        "benchmark": "gp",
        "model": str(model_name_or_path),
        "model_metadata": model.metadata,
        "prior": model.prior_spec,
        "datasets_per_cell": num_datasets,
        "queries_per_dataset": num_queries,
        "seed": seed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "device": str(model.device),
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mean_difference": sum(r["difference"] for r in summary) / len(summary),
        "summary": summary,
        "rows": rows,
    }
    table = markdown_table(summary)
    print(table)
    print(f"mean PFN - exact GP NLL over context sizes: {result['mean_difference']:+.4f} nats per query point")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"gp-{datetime.date.today().isoformat()}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
        header = (
            f"# GP benchmark: {model_name_or_path}\n\nMean NLL per query point on held-out datasets of the "
            f"model's own prior ({num_datasets} datasets x {num_queries} queries per context size and "
            f"feature count {features}, seed {seed}), averaged over feature counts.\n\n"
        )
        stem.with_suffix(".md").write_text(header + table + f"\n\nMean difference: {result['mean_difference']:+.4f}\n")
        print(f"results written to {stem}.json and {stem}.md")
    return result
