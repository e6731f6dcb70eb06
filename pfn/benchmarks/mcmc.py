"""`pfn bench bnn` and `pfn bench gp-hyper`: a PFN against NUTS (and type-II ML) on the same datasets.

For each context size and feature count, `num_datasets` held-out datasets are drawn from the
benchmark's prior (the model's own, when the model was trained on a prior of the benchmark's
kind). The PFN predicts them all in one batched forward pass and once more one dataset at a
time; NUTS runs per dataset at every budget, its sampler compiled once per budget and dataset
shape (the compile time is reported apart); for gp-hyper, type-II maximum likelihood (GPyTorch)
runs as well. Every method is scored by its mean negative log-likelihood per query point, and
every method runs on one thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pfn.benchmarks.common import (
    BENCH_STREAM,
    ResultCache,
    assemble_result,
    load_for_bench,
    results_name,
    standard_error,
    synchronize,
    timed,
    write_results,
)
from pfn.config import load_config
from pfn.distributions import RiemannDistribution
from pfn.ensemble import symmetry_ensemble
from pfn.predictor import PFN
from pfn.training import seeded_generators
from priors import BNNPrior, GPPrior, Prior, build_prior

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Benchmark name -> the config whose prior it uses when the model's own prior is of another kind.
BENCHMARK_CONFIGS = {"bnn": "bnn.yaml", "gp-hyper": "gp_hyper.yaml"}
# Keeps these datasets apart from the GP and GMM benchmarks' (which use the same BENCH_STREAM).
STREAM_TAG = {"bnn": 1, "gp-hyper": 2}


def fits_benchmark(benchmark: str, prior: Prior) -> bool:
    if benchmark == "bnn":
        return isinstance(prior, BNNPrior)
    return isinstance(prior, GPPrior) and not prior.has_fixed_hyperparameters


def benchmark_prior(benchmark: str, model: PFN, force: bool = False) -> Prior:
    """The model's own prior if it is of the benchmark's kind; else, with `force`, the benchmark's."""
    own = build_prior(model.prior_spec)
    if fits_benchmark(benchmark, own):
        return own
    default = load_config(CONFIGS / BENCHMARK_CONFIGS[benchmark]).prior
    if not force:
        raise ValueError(
            f"the model was trained on the prior {model.prior_spec}, not on a prior of the {benchmark!r} "
            f"benchmark (such as {default}); pass --force to benchmark it on the latter anyway"
        )
    print(f"--force: benchmarking on the prior of configs/{BENCHMARK_CONFIGS[benchmark]}, not the model's own")
    return build_prior(default)


def make_baselines(prior: Prior, budgets: list[int], num_chains: int, max_tree_depth: int) -> list[Any]:
    """One NUTS baseline per budget, compiled once per context size and feature count.

    Contexts are not padded to a common size: a GP's marginal likelihood padded from 10 to 100
    points costs a 100 x 100 Cholesky per gradient, and made NUTS-512 at 10 points 40x slower
    (5.3 s instead of 0.12 s per dataset, gp_hyper), which inflated the PFN's speedup."""
    from pfn.baselines.nuts import NUTSBaseline  # NumPyro is an optional extra

    return [NUTSBaseline(prior, b, num_chains, max_tree_depth) for b in budgets]


def _nll_stats(prefix: str, nll: torch.Tensor) -> dict[str, float]:
    return {f"{prefix}_nll": nll.mean().item(), f"{prefix}_nll_se": standard_error(nll)}


def finished_prediction(model: PFN, x_context, y_context, x_query) -> RiemannDistribution:
    """The PFN's predictive for data on the CPU, made on the model's device and finished
    (synchronised) on a GPU, so that it can be timed."""
    device = model.device
    dist = model.predict(x_context.to(device), y_context.to(device), x_query.to(device), normalize=False)
    synchronize(device)
    return dist


def pfn_scores(
    model: PFN, x_context, y_context, x_query, y_query
) -> tuple[dict[str, float], torch.Tensor, RiemannDistribution]:
    """PFN NLL per dataset, seconds per dataset batched (all in one pass) and one at a time, and
    the batched prediction (on the CPU)."""
    for size in (1, len(x_context)):  # warm-up at both shapes timed (a GPU's first call pays one-off costs)
        finished_prediction(model, x_context[:size], y_context[:size], x_query[:size])
    dist, batched = timed(finished_prediction, model, x_context, y_context, x_query)
    dist = RiemannDistribution(dist.logits.cpu(), dist.borders.cpu())
    nll = -dist.log_prob(y_query).double().mean(-1)
    single = 0.0
    for i in range(len(x_context)):
        _, seconds = timed(finished_prediction, model, x_context[i], y_context[i], x_query[i])
        single += seconds
    n = len(x_context)
    timings = {"pfn_seconds_batched": batched / n, "pfn_seconds_single": single / n}
    return {**_nll_stats("pfn", nll), **timings}, nll, dist


def ensemble_scores(model: PFN, x_context, y_context, x_query, y_query, num_members: int, views) -> dict[str, Any]:
    """NLL and seconds per dataset (batched) of the PFN averaged over `num_members` views of each
    dataset under the prior's symmetries (`pfn.ensemble.symmetry_ensemble`)."""
    device = model.device

    def predict() -> Any:
        data = (t.to(device) for t in (x_context, y_context, x_query))
        mixture = symmetry_ensemble(model, *data, num_members, views)
        synchronize(device)
        return mixture

    mixture, seconds = timed(predict)
    nll = -mixture.log_prob(y_query.to(device)).double().mean(-1).cpu()
    return _nll_stats("ensemble", nll) | {
        "ensemble_seconds_batched": seconds / len(x_context),
        "ensemble_per_dataset": nll.tolist(),
    }


def bench_rows(
    benchmark: str,
    model: PFN,
    prior: Prior,
    contexts: list[int],
    features: list[int],
    num_datasets: int,
    num_queries: int,
    seed: int,
    baselines: list[Any],
    cache: ResultCache,
    ensemble: int = 1,
) -> list[dict[str, Any]]:
    too_many = [f for f in features if f > model.max_features]
    if too_many:
        raise ValueError(f"feature counts {too_many} exceed the model's maximum of {model.max_features}")
    # The PFN is scored and timed on every cell first, before any baseline loads the machine
    # (on a GPU machine, several benchmarks can then start a few seconds apart and run their
    # NUTS side by side without touching each other's PFN timings).
    cells = []
    for num_context in contexts:
        for num_features in features:
            views, generator = seeded_generators(seed, BENCH_STREAM, STREAM_TAG[benchmark], num_context, num_features)
            batch = prior.sample(num_datasets, num_context + num_queries, num_features, generator)
            x_context, y_context = batch.x[:, :num_context], batch.y[:, :num_context]
            x_query, y_query = batch.x[:, num_context:], batch.y[:, num_context:]
            row, pfn_nll, pfn_dist = pfn_scores(model, x_context, y_context, x_query, y_query)
            row = {"context": num_context, "features": num_features, **row}
            if ensemble > 1:
                row |= ensemble_scores(model, x_context, y_context, x_query, y_query, ensemble, views)
            cells.append((row, pfn_nll, pfn_dist, x_context, y_context, x_query, y_query))
    progress = tqdm(total=len(cells) * num_datasets * len(baselines), desc="NUTS runs")
    rows = []
    for row, pfn_nll, pfn_dist, x_context, y_context, x_query, y_query in cells:
        num_context, num_features = row["context"], row["features"]
        best_nll = None
        for baseline in baselines:
            nll, seconds = [], []
            for i in range(num_datasets):
                name = f"{baseline.name}/{num_context}/{num_features}/{i}"
                entry = cache.get(name, y_context[i])
                if entry is None:
                    log_prob, elapsed = baseline.fit_predict(
                        x_context[i].numpy(), y_context[i].numpy(), x_query[i].numpy(), y_query[i].numpy(), seed + i
                    )
                    entry = {"nll": -float(np.mean(log_prob)), "seconds": elapsed}
                    cache.put(name, entry | {"observed_sum": y_context[i].sum().item()})
                nll.append(entry["nll"])
                seconds.append(entry["seconds"])
                progress.update()
            nll = torch.tensor(nll, dtype=torch.float64)
            row |= _nll_stats(baseline.name, nll) | {f"{baseline.name}_seconds": sum(seconds) / len(seconds)}
            best_nll = nll
        # `difference`: PFN minus NUTS at its largest budget, per dataset (the target).
        difference = pfn_nll - best_nll
        row |= {"difference": difference.mean().item(), "difference_se": standard_error(difference)}
        row["per_dataset"] = {"pfn_nll": pfn_nll.tolist(), f"{baselines[-1].name}_nll": best_nll.tolist()}
        if ensemble > 1:
            row["per_dataset"]["ensemble_nll"] = row.pop("ensemble_per_dataset")
            ensemble_difference = torch.tensor(row["per_dataset"]["ensemble_nll"], dtype=torch.float64) - best_nll
            row["ensemble_difference"] = ensemble_difference.mean().item()
            row["ensemble_difference_se"] = standard_error(ensemble_difference)
        if isinstance(prior, GPPrior):
            scores, per_dataset = _type2_scores(prior, x_context, y_context, x_query, y_query, pfn_dist)
            row |= scores
            row["per_dataset"] |= per_dataset
        rows.append(row)
        progress.write(
            f"  context {num_context:4d}  features {num_features}  PFN {row['pfn_nll']:+.4f}  "
            + "  ".join(f"{b.name} {row[b.name + '_nll']:+.4f}" for b in baselines)
        )
    progress.close()
    return rows


def _type2_scores(
    prior: GPPrior, x_context, y_context, x_query, y_query, pfn_dist
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Type-II ML scores, and its Gaussian put on the PFN's buckets (`type2ml_on_buckets`): what
    the PFN's head could reach if the network predicted type-II ML's answer exactly. Then, per
    dataset, how sharp type-II ML's predictive is (its standard deviation over the context
    targets'; ~0.001 for nearly noiseless datasets) and how much wider the PFN's is, medians over
    the queries: where the PFN loses, and why."""
    from pfn.baselines.gp_type2 import type2_ml_gp_predictive

    dist, seconds = timed(type2_ml_gp_predictive, x_context, y_context, x_query, prior)
    nll = -dist.log_prob(y_query.double()).mean(-1)
    on_buckets = -RiemannDistribution.nearest_to(dist, pfn_dist.borders).log_prob(y_query).mean(-1)
    relative_std = dist.stddev / y_context.double().std(-1, keepdim=True)  # [datasets, queries]
    width_ratio = pfn_dist.variance.double().sqrt() / dist.stddev
    scores = (
        _nll_stats("type2ml", nll)
        | {"type2ml_seconds": seconds / len(x_context)}
        | {"type2ml_on_buckets": on_buckets.mean().item(), "type2ml_on_buckets_se": standard_error(on_buckets)}
    )
    per_dataset = {
        "type2ml_std_over_context_std": relative_std.median(-1).values.tolist(),
        "pfn_std_over_type2ml_std": width_ratio.median(-1).values.tolist(),
    }
    return scores, per_dataset


def methods(row: dict[str, Any]) -> list[str]:
    """Baseline names in a row, in order: nuts-<budget>..., then type2ml if present (not the
    PFN's ensemble)."""
    return [key[: -len("_nll")] for key in row if key.endswith("_nll") and key not in ("pfn_nll", "ensemble_nll")]


def speedup(row: dict[str, Any]) -> tuple[float, str]:
    """How many times faster the PFN (one dataset at a time) is than the cheapest NUTS run that
    reaches the PFN's NLL or better; if none does, a lower bound against the largest budget."""
    nuts = [m for m in methods(row) if m.startswith("nuts-")]
    as_good = [m for m in nuts if row[f"{m}_nll"] <= row["pfn_nll"]]
    pfn_time = row["pfn_seconds_single"]
    if as_good:
        cheapest = min(as_good, key=lambda m: row[f"{m}_seconds"])
        return row[f"{cheapest}_seconds"] / pfn_time, f"vs {cheapest}"
    return row[f"{nuts[-1]}_seconds"] / pfn_time, f"or more (PFN better than every budget; vs {nuts[-1]})"


def markdown_tables(summary: list[dict[str, Any]]) -> str:
    names = methods(summary[0])
    lines = [
        "Mean NLL per query point (± standard error over datasets); lower is better.",
        "",
        "| context | PFN | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    if "type2ml_on_buckets" in summary[0]:
        lines[2] += " type2ml on PFN buckets |"
        lines[3] += "---:|"
    with_ensemble = "ensemble_nll" in summary[0]
    if with_ensemble:
        largest_nuts = [m for m in names if m.startswith("nuts-")][-1]
        lines[2] += f" PFN ensemble | ensemble - {largest_nuts} |"
        lines[3] += "---:|---:|"
    for row in summary:
        cells = [f"{row[f'{m}_nll']:.3f} ± {row[f'{m}_nll_se']:.3f}" for m in ["pfn", *names]]
        if "type2ml_on_buckets" in row:
            cells.append(f"{row['type2ml_on_buckets']:.3f} ± {row['type2ml_on_buckets_se']:.3f}")
        if with_ensemble:
            cells.append(f"{row['ensemble_nll']:.3f} ± {row['ensemble_nll_se']:.3f}")
            cells.append(f"{row['ensemble_difference']:+.3f} ± {row['ensemble_difference_se']:.3f}")
        lines.append(f"| {row['context']} | " + " | ".join(cells) + " |")
    if "type2ml_on_buckets" in summary[0]:
        lines += [
            "",
            "type2ml on PFN buckets: type-II ML's Gaussian put on the PFN's own buckets (each bucket gets its "
            "mass), roughly the best NLL a network with these buckets could reach; the distance from type2ml "
            "to it is the cost of the head's resolution, the distance from it to PFN the network's.",
        ]
    lines += [
        "",
        "Wall time per dataset in seconds (NUTS: sampling and scoring; compiling, once per budget, context "
        "size and feature count, is listed in the JSON under nuts.compile_seconds), and the speedup of the PFN "
        "(single) over the cheapest NUTS budget at equal or better NLL.",
        "",
        "| context | PFN batched | PFN single | "
        + ("PFN ensemble batched | " if with_ensemble else "")
        + " | ".join(names)
        + " | speedup |",
        "|---:|---:|---:|" + ("---:|" if with_ensemble else "") + "---:|" * len(names) + "---|",
    ]
    for row in summary:
        factor, against = speedup(row)
        factor_text = f"{factor:,.0f}" if factor >= 10 else f"{factor:.2g}"
        ensemble_time = f"{row['ensemble_seconds_batched']:.2e} | " if with_ensemble else ""
        lines.append(
            f"| {row['context']} | {row['pfn_seconds_batched']:.2e} | {row['pfn_seconds_single']:.2e} | "
            + ensemble_time
            + " | ".join(f"{row[f'{m}_seconds']:.3g}" for m in names)
            + f" | {factor_text}x {against} |"
        )
    return "\n".join(lines)


def run_mcmc_bench(
    benchmark: str,
    model_name_or_path: str,
    contexts: list[int],
    features: list[int],
    num_datasets: int = 5,
    num_queries: int = 20,
    seed: int = 12345,
    budgets: tuple[int, ...] = (32, 128, 512),
    num_chains: int = 1,
    max_tree_depth: int = 8,
    force: bool = False,
    plot: bool = False,
    out_dir: Path | None = Path("benchmarks/results"),
    nuts_cache: Path | None = None,
    precision: str = "float32",
    tag: str = "",
    device: str = "cpu",
    ensemble: int = 1,
) -> dict[str, Any]:
    """`nuts_cache`: a JSON file of NUTS results to reuse and extend (they do not depend on the
    PFN, so benchmarking another checkpoint of the same prior skips the hours of sampling).
    `device`: where the PFN runs (NUTS and type-II ML run on one CPU thread). `ensemble` > 1
    also scores the PFN averaged over that many views of each dataset under the prior's
    symmetries (`pfn.ensemble.symmetry_ensemble`); the headline stays the single model's."""
    if benchmark not in BENCHMARK_CONFIGS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARK_CONFIGS)}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    if not budgets or any(b < 2 for b in budgets):
        raise ValueError(f"budgets must be integers >= 2 (NUTS iterations per chain), got {list(budgets)}")
    model = load_for_bench(benchmark, model_name_or_path, seed, num_datasets, num_queries, precision, device)
    prior = benchmark_prior(benchmark, model, force)
    budgets = sorted(budgets)
    baselines = make_baselines(prior, budgets, num_chains, max_tree_depth)
    # Every method runs on one thread, as NUTS does: the matrices are small, and on a shared
    # machine a second thread can make the PFN's forward pass 30x slower instead of faster.
    cache_key = {
        "benchmark": benchmark,
        "prior": prior.spec,
        "seed": seed,
        "queries": num_queries,
        "chains": num_chains,
        "max_tree_depth": max_tree_depth,
        "padded": False,  # results of earlier versions, which padded contexts, are not reused
    }
    cache = ResultCache(nuts_cache, cache_key)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = bench_rows(
            benchmark, model, prior, contexts, features, num_datasets, num_queries, seed, baselines, cache, ensemble
        )
    finally:
        torch.set_num_threads(threads)
    # Compile times of this run, or of the run that filled the cache when everything came from it.
    compile_seconds = {}
    for baseline in baselines:
        name = f"compile/{baseline.name}"
        if baseline.compile_seconds > 0:
            cache.put(name, {"seconds": baseline.compile_seconds})
            compile_seconds[baseline.name] = baseline.compile_seconds
        else:
            stored = cache.get(name)
            compile_seconds[baseline.name] = stored["seconds"] if stored else 0.0
    result = assemble_result(
        benchmark,
        model_name_or_path,
        model,
        rows,
        benchmark_prior=prior.spec,
        threads_per_method=1,
        datasets_per_cell=num_datasets,
        queries_per_dataset=num_queries,
        seed=seed,
        pfn_precision=precision,
        ensemble_members=ensemble,
        nuts={
            "budgets": budgets,
            "chains": num_chains,
            "max_tree_depth": max_tree_depth,
            "warmup": "half",
            "compile_seconds": compile_seconds,
        },
    )
    description = (
        f"Held-out datasets from the prior {prior.spec} ({num_datasets} datasets x {num_queries} queries per "
        f"context size and feature count {features}, seed {seed}), averaged over feature counts. NUTS budgets are "
        f"iterations per chain (half warm-up), {num_chains} chains, max tree depth {max_tree_depth}. "
        f"Mean PFN - NUTS-{budgets[-1]} NLL over context sizes: {result['mean_difference']:+.4f} nats per point."
    )
    name = results_name(benchmark, precision, tag)
    stem = write_results(name, result, markdown_tables(result["summary"]), description, out_dir)
    if plot and stem is not None:
        from pfn.benchmarks.mcmc_plot import plot_results

        path = plot_results(result, model, prior, baselines[-1], seed, stem.with_suffix(".png"))
        print(f"figure written to {path}")
    return result
