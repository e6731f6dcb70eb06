"""`pfn bench lc`: learning-curve extrapolation, the PFN against MCMC-PP and the true curve.

Held-out curves are drawn from the model's own prior (fixed seed, its own seed stream). For each
cutoff n the first n epochs are observed and every later epoch is held out; per curve we score
the mean log-likelihood of the held-out noisy values and the squared error of the predictive
median, then average over curves (with standard errors). Methods: the PFN (through
`PFN.extrapolate`, timed one curve alone and all curves in one batch), MCMC-PP (emcee on the same
generative model, Domhan et al.'s budget) and an oracle that knows the true curve and noise.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Normal

from pfn.baselines.mcmc_pp import MCMCSettings, mixture_quantile, sample_posterior
from pfn.benchmarks.common import BENCH_STREAM, assemble_result, standard_error, timed, write_results
from pfn.curves import predict_in_prior_units, trained_length
from pfn.predictor import PFN, load
from pfn.training import seeded_generators
from priors import LearningCurvePrior, build_prior

METHODS = ("pfn", "mcmc", "oracle")


def held_out_curves(model: PFN, num_curves: int, seed: int):
    prior = build_prior(model.prior_spec)
    if not isinstance(prior, LearningCurvePrior):
        raise ValueError(f"`pfn bench lc` needs a learning-curve model (prior 'lc'); this model's prior is {prior}")
    _, generator = seeded_generators(seed, BENCH_STREAM)
    return prior, prior.draw(num_curves, trained_length(model), generator)


def lc_bench_rows(
    model: PFN,
    cutoffs: list[int],
    num_curves: int,
    seed: int,
    settings: MCMCSettings = MCMCSettings(),  # noqa: B008
) -> list[dict[str, Any]]:
    prior, curves = held_out_curves(model, num_curves, seed)
    length = len(curves.epochs)
    rows = []
    for cutoff in cutoffs:
        if not 1 <= cutoff < length:
            raise ValueError(f"cutoffs must be in 1..{length - 1} (the model's curves have {length} epochs)")
        observed, held_out = curves.y[:, :cutoff], curves.y[:, cutoff:]
        log_likelihood: dict[str, torch.Tensor] = {}  # method -> [curves], mean over held-out epochs
        squared_error: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}

        # Prior samples are in the prior's units already and their noise may leave [0, 1], so the PFN
        # is called below `extrapolate`'s bounds check (as `pfn bench gp` calls predict(normalize=False)).
        future = curves.epochs[cutoff:]
        predict_in_prior_units(model, observed[:1], future)  # warm-up: the first call pays one-off costs
        predictive, batched_time = timed(predict_in_prior_units, model, observed, future)
        seconds["pfn_batched"] = batched_time / num_curves
        alone = [timed(predict_in_prior_units, model, curve[None], future)[1] for curve in observed]
        seconds["pfn"] = sum(alone) / num_curves
        log_likelihood["pfn"] = predictive.log_prob(held_out).double().mean(-1)
        squared_error["pfn"] = ((predictive.median.double() - held_out) ** 2).mean(-1)

        mcmc_ll, mcmc_se, mcmc_seconds = [], [], 0.0
        for i in range(num_curves):
            mcmc_seed = int(np.random.SeedSequence([seed, cutoff, i]).generate_state(1)[0])
            # Timed: sampling and building the predictive mixture (as the PFN's forward pass is).
            posterior, elapsed = timed(sample_posterior, prior, observed[i], length, mcmc_seed, settings)
            mixture, predictive_time = timed(posterior.predictive, future)
            mcmc_seconds += elapsed + predictive_time
            mcmc_ll.append(mixture.log_prob(held_out[i]).mean())
            mcmc_se.append(((mixture_quantile(mixture, 0.5) - held_out[i]) ** 2).mean())
        seconds["mcmc"] = mcmc_seconds / num_curves
        log_likelihood["mcmc"], squared_error["mcmc"] = torch.stack(mcmc_ll), torch.stack(mcmc_se)

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
        rows.append(row)
        print(
            f"  cutoff {cutoff:3d}  log-lik PFN {row['pfn_loglik']:+.3f}  MCMC-PP {row['mcmc_loglik']:+.3f}  "
            f"oracle {row['oracle_loglik']:+.3f}  PFN - MCMC {row['difference']:+.3f} ± {row['difference_se']:.3f}  "
            f"s/curve PFN {seconds['pfn']:.4f} (batched {seconds['pfn_batched']:.5f}) MCMC {seconds['mcmc']:.1f}",
            flush=True,
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
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
            f"{1e3 * row['pfn_seconds_per_curve']:.1f}",
            f"{1e3 * row['pfn_batched_seconds_per_curve']:.2f}",
            f"{row['mcmc_seconds_per_curve']:.1f}",
            f"{row['mcmc_seconds_per_curve'] / row['pfn_batched_seconds_per_curve']:,.0f}x",
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
) -> dict[str, Any]:
    model = load(model_name_or_path)
    if seed == model.config.seed:
        raise ValueError(f"bench seed {seed} equals the model's training seed; choose another --seed")
    print(f"pfn bench lc: model {model_name_or_path} ({model}), {num_curves} curves, cutoffs {cutoffs}, seed {seed}")
    rows = lc_bench_rows(model, cutoffs, num_curves, seed, settings)
    result = assemble_result(
        "lc", model_name_or_path, model, rows, curves=num_curves, cutoffs=cutoffs, seed=seed, mcmc=asdict(settings)
    )
    description = (
        f"Learning-curve extrapolation on {num_curves} held-out curves of the model's own prior (seed {seed}): "
        f"the first `cutoff` epochs observed, every later epoch held out. Log-lik: mean log-likelihood per "
        f"held-out noisy point (higher is better); MSE: of the predictive median against the held-out noisy "
        f"points; ± one standard error over curves. MCMC-PP: emcee, {settings.walkers} walkers, {settings.steps} "
        f"steps, {settings.burn_in} burn-in, thinning {settings.thin}. Oracle: the true curve and noise. "
        f"Times on {result['machine']['device']} with {result['machine']['torch_threads']} torch threads; "
        "speed-up = MCMC-PP time per curve / batched PFN time per curve."
    )
    write_results("lc", result, markdown_table(rows), description, out_dir)
    return result
