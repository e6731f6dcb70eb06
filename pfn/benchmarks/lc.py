"""`pfn bench lc`: learning-curve extrapolation, the PFN against MCMC-PP and the true curve.

Held-out curves are drawn from the model's own prior (fixed seed, its own seed stream). For each
cutoff n the first n epochs are observed and every later epoch is held out; per curve we score
the mean log-likelihood of the held-out noisy values and the squared error of the predictive
median, then average over curves (with standard errors). Methods: the PFN (through
`PFN.extrapolate`, timed one curve alone and all curves in one batch), MCMC-PP (emcee on the same
generative model, Domhan et al.'s budget) and an oracle that knows the true curve and noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Normal

from pfn.baselines.mcmc_pp import MCMCSettings, mixture_quantile, sample_posterior
from pfn.benchmarks.common import (
    BENCH_STREAM,
    ResultCache,
    assemble_result,
    results_name,
    standard_error,
    synchronize,
    timed,
    write_results,
)
from pfn.curves import predict_in_prior_units, trained_length
from pfn.distributions import RiemannDistribution
from pfn.predictor import PFN, load
from pfn.training import seeded_generators
from priors import LearningCurvePrior, build_prior
from priors.lc import LearningCurves

METHODS = ("pfn", "mcmc", "oracle")
CURVES_PER_DRAW = 50
EXAMPLE_CURVES = 2  # curves per cutoff drawn in the figure
EXAMPLE_LEVELS = (0.05, 0.5, 0.95)


def timed_cpu(function, *args) -> tuple[Any, float, float]:
    """`timed` plus the CPU seconds this process spent. Each method runs on one thread, so on a CPU
    shared with other work its CPU time measures the work itself; wall time adds the waiting."""
    start = time.process_time()
    result, wall = timed(function, *args)
    return result, wall, time.process_time() - start


def pfn_forecast(model: PFN, observed: torch.Tensor, epochs: torch.Tensor):
    """The PFN's predictive for curves in the prior's units, finished (synchronised) on a GPU so it can be timed."""
    distribution = predict_in_prior_units(model, observed, epochs)
    synchronize(distribution.logits.device)
    return distribution


def held_out_curves(prior: LearningCurvePrior, length: int, num_curves: int, seed: int) -> LearningCurves:
    """Curves drawn in fixed chunks of CURVES_PER_DRAW, so curve i is the same whatever num_curves."""
    chunks = []
    for chunk in range(math.ceil(num_curves / CURVES_PER_DRAW)):
        _, generator = seeded_generators(seed, BENCH_STREAM, chunk)
        chunks.append(prior.draw(CURVES_PER_DRAW, length, generator))
    fields = ("theta", "noise_std", "curves", "y")
    joined = {name: torch.cat([getattr(chunk, name) for chunk in chunks])[:num_curves] for name in fields}
    return LearningCurves(epochs=chunks[0].epochs, **joined)


def mcmc_pp_scores(
    prior: LearningCurvePrior, curves: LearningCurves, i: int, cutoff: int, seed: int, settings: MCMCSettings
) -> dict[str, Any]:
    """MCMC-PP on curve i observed up to `cutoff`: its scores, its time and (for example curves) its bands."""
    observed, held_out, future = curves.y[i, :cutoff], curves.y[i, cutoff:], curves.epochs[cutoff:]
    mcmc_seed = int(np.random.SeedSequence([seed, cutoff, i]).generate_state(1)[0])
    # Timed: sampling and building the predictive mixture (as the PFN's forward pass is).
    posterior, sampling, sampling_cpu = timed_cpu(
        sample_posterior, prior, observed, len(curves.epochs), mcmc_seed, settings
    )
    mixture, building, building_cpu = timed_cpu(posterior.predictive, future)
    scores = {
        "loglik": mixture.log_prob(held_out).mean().item(),
        "squared_error": ((mixture_quantile(mixture, 0.5) - held_out) ** 2).mean().item(),
        "seconds": sampling + building,
        "cpu_seconds": sampling_cpu + building_cpu,
        "observed_sum": observed.sum().item(),  # identifies the curve when read back from a cache
    }
    if i < EXAMPLE_CURVES:
        scores["bands"] = torch.stack([mixture_quantile(mixture, level) for level in EXAMPLE_LEVELS]).tolist()
    return scores


def lc_bench_rows(
    model: PFN,
    cutoffs: list[int],
    num_curves: int,
    seed: int,
    settings: MCMCSettings = MCMCSettings(),  # noqa: B008
    mcmc_cache: Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row of scores per cutoff, and the predictive bands of a few example curves (for the figure)."""
    prior = build_prior(model.prior_spec)
    if not isinstance(prior, LearningCurvePrior):
        raise ValueError(f"`pfn bench lc` needs a learning-curve model (prior 'lc'); this model's prior is {prior}")
    length = trained_length(model)
    curves = held_out_curves(prior, length, num_curves, seed)
    cache_key = {"prior": prior.spec, "length": length, "seed": seed, "chunk": CURVES_PER_DRAW, **asdict(settings)}
    cache = ResultCache(mcmc_cache, cache_key)
    rows, examples = [], []
    for cutoff in cutoffs:
        if not 1 <= cutoff < length:
            raise ValueError(f"cutoffs must be in 1..{length - 1} (the model's curves have {length} epochs)")
        observed, held_out = curves.y[:, :cutoff], curves.y[:, cutoff:]
        log_likelihood: dict[str, torch.Tensor] = {}  # method -> [curves], mean over held-out epochs
        squared_error: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}  # wall-clock, per curve
        cpu_seconds: dict[str, float] = {}

        # Prior samples are in the prior's units already and their noise may leave [0, 1], so the PFN
        # is called below `extrapolate`'s bounds check (as `pfn bench gp` calls predict(normalize=False)).
        future = curves.epochs[cutoff:]
        # Warm-up at both shapes timed below: a first call pays one-off costs (on a GPU, kernel
        # selection per shape: 0.13 ms/curve batched at the first cutoff, 0.03 at the next, on an H100).
        pfn_forecast(model, observed[:1], future)
        pfn_forecast(model, observed, future)
        predictive, wall, cpu = timed_cpu(pfn_forecast, model, observed, future)
        seconds["pfn_batched"], cpu_seconds["pfn_batched"] = wall / num_curves, cpu / num_curves
        alone = torch.tensor([timed_cpu(pfn_forecast, model, curve[None], future)[1:] for curve in observed])
        seconds["pfn"], cpu_seconds["pfn"] = alone.mean(0).tolist()
        predictive = RiemannDistribution(predictive.logits.cpu(), predictive.borders.cpu())
        log_likelihood["pfn"] = predictive.log_prob(held_out).double().mean(-1)
        squared_error["pfn"] = ((predictive.median.double() - held_out) ** 2).mean(-1)

        mcmc = []
        for i in range(num_curves):
            entry = cache.get(f"{cutoff}/{i}", observed[i])
            if entry is None:
                entry = mcmc_pp_scores(prior, curves, i, cutoff, seed, settings)
                cache.put(f"{cutoff}/{i}", entry)
            mcmc.append(entry)
            if i < EXAMPLE_CURVES:
                levels = torch.tensor(EXAMPLE_LEVELS)[:, None].expand(-1, len(future))
                bands = predictive[i].icdf(levels).double().tolist()
                examples.append({"cutoff": cutoff, "curve": i, "pfn": bands, "mcmc": entry["bands"]})
        seconds["mcmc"] = sum(entry["seconds"] for entry in mcmc) / num_curves
        cpu_timed = [entry["cpu_seconds"] for entry in mcmc if "cpu_seconds" in entry]  # older caches lack it
        cpu_seconds["mcmc"] = sum(cpu_timed) / len(cpu_timed) if cpu_timed else math.nan
        log_likelihood["mcmc"] = torch.tensor([entry["loglik"] for entry in mcmc], dtype=torch.float64)
        squared_error["mcmc"] = torch.tensor([entry["squared_error"] for entry in mcmc], dtype=torch.float64)

        truth = curves.curves[:, cutoff:]
        log_likelihood["oracle"] = Normal(truth, curves.noise_std[:, None]).log_prob(held_out).mean(-1)
        squared_error["oracle"] = ((truth - held_out) ** 2).mean(-1)

        row: dict[str, Any] = {"context": cutoff}
        for method in METHODS:
            row[f"{method}_loglik"] = log_likelihood[method].mean().item()
            row[f"{method}_loglik_se"] = standard_error(log_likelihood[method])
            row[f"{method}_mse"] = squared_error[method].mean().item()
            row[f"{method}_mse_se"] = standard_error(squared_error[method])
        # Positive: the PFN assigns the held-out points more log-likelihood than MCMC-PP does.
        difference = log_likelihood["pfn"] - log_likelihood["mcmc"]
        row["difference"] = difference.mean().item()
        row["difference_se"] = standard_error(difference)
        for name, value in seconds.items():
            row[f"{name}_seconds_per_curve"] = value
            row[f"{name}_cpu_seconds_per_curve"] = cpu_seconds[name]
        row["mcmc_cpu_timed_curves"] = len(cpu_timed)
        rows.append(row)
        print(
            f"  cutoff {cutoff:3d}  log-lik PFN {row['pfn_loglik']:+.3f}  MCMC-PP {row['mcmc_loglik']:+.3f}  "
            f"oracle {row['oracle_loglik']:+.3f}  PFN - MCMC {row['difference']:+.3f} ± {row['difference_se']:.3f}  "
            f"CPU s/curve PFN {cpu_seconds['pfn']:.4f} (batched {cpu_seconds['pfn_batched']:.5f}) "
            f"MCMC {cpu_seconds['mcmc']:.1f}",
            flush=True,
        )
    return rows, examples


def plot_examples(curves, examples: list[dict[str, Any]], path: Path) -> None:
    """Example forecasts: one panel per (cutoff, curve), PFN and MCMC-PP 90% bands and medians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cutoffs = sorted({e["cutoff"] for e in examples})
    figure, axes = plt.subplots(
        len(cutoffs), EXAMPLE_CURVES, figsize=(5 * EXAMPLE_CURVES, 3 * len(cutoffs)), squeeze=False
    )
    epochs = curves.epochs.numpy()
    for example in examples:
        ax = axes[cutoffs.index(example["cutoff"]), example["curve"]]
        i, cutoff = example["curve"], example["cutoff"]
        ax.plot(epochs, curves.y[i].numpy(), ".", color="0.7", ms=3, label="held-out noisy values")
        ax.plot(epochs[:cutoff], curves.y[i, :cutoff].numpy(), ".", color="k", ms=4, label="observed")
        ax.plot(epochs, curves.curves[i].numpy(), "-", color="k", lw=0.8, label="true curve")
        for method, color, label in (("pfn", "C0", "PFN"), ("mcmc", "C1", "MCMC-PP")):
            low, median, high = example[method]
            ax.fill_between(epochs[cutoff:], low, high, color=color, alpha=0.2, lw=0)
            ax.plot(epochs[cutoff:], median, "-", color=color, label=f"{label} median, 90% band")
        ax.axvline(cutoff + 0.5, color="0.5", lw=0.5)
        ax.set_title(f"curve {i}, {cutoff} epochs observed", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_table(rows: list[dict[str, Any]], pfn_clock: str = "cpu_seconds") -> str:
    """Times: MCMC-PP's CPU time; the PFN's CPU time too, or its wall time on a GPU (`pfn_clock="seconds"`)."""
    header = (
        "| cutoff | log-lik PFN | MCMC-PP | oracle | PFN - MCMC-PP | MSE PFN | MCMC-PP | oracle "
        "| ms/curve PFN alone | PFN batched | s/curve MCMC-PP | speed-up, batched |"
    )
    lines = [header, "|" + "---:|" * 12]
    for row in rows:
        cells = [str(row["context"])]
        cells += [f"{row[f'{m}_loglik']:+.3f} ± {row[f'{m}_loglik_se']:.3f}" for m in METHODS]
        cells += [f"{row['difference']:+.3f} ± {row['difference_se']:.3f}"]
        cells += [f"{row[f'{m}_mse']:.2e} ± {row[f'{m}_mse_se']:.1e}" for m in METHODS]
        cells += [
            f"{1e3 * row[f'pfn_{pfn_clock}_per_curve']:.1f}",
            f"{1e3 * row[f'pfn_batched_{pfn_clock}_per_curve']:.2f}",
            f"{row['mcmc_cpu_seconds_per_curve']:.1f}",
            f"{row['mcmc_cpu_seconds_per_curve'] / row[f'pfn_batched_{pfn_clock}_per_curve']:,.0f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_lc_bench(
    model_name_or_path: str,
    cutoffs: list[int],
    num_curves: int = 200,
    seed: int = 12345,
    settings: MCMCSettings = MCMCSettings(),  # noqa: B008
    out_dir: Path | None = Path("benchmarks/results"),
    threads: int = 1,
    device: str = "cpu",
    mcmc_cache: Path | None = None,
    precision: str = "float32",
    tag: str = "",
) -> dict[str, Any]:
    # Both methods get one core: MCMC-PP is sequential, and a PFN forward pass on one curve gains
    # nothing from more threads on a small CPU (they only thrash when the machine is busy).
    torch.set_num_threads(threads)
    model = load(model_name_or_path, device, precision)
    if seed == model.config.seed:
        raise ValueError(f"bench seed {seed} equals the model's training seed; choose another --seed")
    print(f"pfn bench lc: model {model_name_or_path} ({model}), {num_curves} curves, cutoffs {cutoffs}, seed {seed}")
    rows, examples = lc_bench_rows(model, cutoffs, num_curves, seed, settings, mcmc_cache)
    result = assemble_result(
        "lc",
        model_name_or_path,
        model,
        rows,
        curves=num_curves,
        cutoffs=cutoffs,
        seed=seed,
        mcmc=asdict(settings),
        mcmc_cache=str(mcmc_cache) if mcmc_cache else None,
        pfn_precision=precision,
    )
    description = (
        f"Learning-curve extrapolation on {num_curves} held-out curves of the model's own prior (seed {seed}): "
        f"the first `cutoff` epochs observed, every later epoch held out. Log-lik: mean log-likelihood per "
        f"held-out noisy point (higher is better); MSE: of the predictive median against the held-out noisy "
        f"points; ± one standard error over curves. MCMC-PP: emcee, {settings.walkers} walkers, {settings.steps} "
        f"steps, {settings.burn_in} burn-in, thinning {settings.thin}. Oracle: the true curve and noise. "
        f"Times per curve: CPU time of one thread (`time.process_time`, robust to other work on the machine) "
        f"for MCMC-PP and, on a CPU, for the PFN; wall time for the PFN on a GPU. The PFN ran on "
        f"{result['machine']['device']} ({result['machine']['torch_threads']} torch thread(s), {precision}); wall "
        "times are in the JSON. Speed-up = MCMC-PP time per curve / batched PFN time per curve."
        + (f" MCMC-PP scores and times come from `{mcmc_cache}` where it has them." if mcmc_cache else "")
    )
    result["examples"] = examples
    pfn_clock = "cpu_seconds" if model.device.type == "cpu" else "seconds"
    name = results_name("lc", precision, tag)
    stem = write_results(name, result, markdown_table(rows, pfn_clock), description, out_dir)
    if stem is not None:
        try:
            figure = stem.with_suffix(".png")
            curves = held_out_curves(build_prior(model.prior_spec), trained_length(model), num_curves, seed)
            plot_examples(curves, examples, figure)
            print(f"example forecasts drawn in {figure}")
        except ImportError:
            print("matplotlib is not installed: no figure (pip install -e '.[bench]')")
    return result
