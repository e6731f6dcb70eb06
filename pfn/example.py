"""`pfn example`: a dataset from the model's own prior, predicted by the PFN and by the exact GP."""

from __future__ import annotations

import torch

from pfn.baselines import exact_gp_predictive
from pfn.predictor import load
from pfn.training import seeded_generators
from priors import GPPrior, build_prior


def run_example(model_name_or_path: str = "gp", num_context: int = 8, num_query: int = 8, seed: int = 0) -> None:
    model = load(model_name_or_path)
    prior = build_prior(model.prior_spec)
    if not isinstance(prior, GPPrior) or not prior.has_fixed_hyperparameters:
        raise ValueError(
            "`pfn example` compares with the exact GP and needs a model of a fixed-hyperparameter GP prior"
        )
    _, generator = seeded_generators(seed, 424242)
    batch = prior.sample(1, num_context + num_query, 1, generator)
    x_context, y_context = batch.x[0, :num_context], batch.y[0, :num_context]
    order = batch.x[0, num_context:, 0].argsort()
    x_query, y_query = batch.x[0, num_context:][order], batch.y[0, num_context:][order]

    pfn_dist = model.predict(x_context, y_context, x_query, normalize=False)
    gp_dist = exact_gp_predictive(x_context[None], y_context[None], x_query[None], prior)
    gp_low, gp_high = (gp_dist.icdf(torch.tensor(q, dtype=torch.float64))[0] for q in (0.05, 0.95))

    print(f"model: {model}\nprior: {model.prior_spec}")
    print(f"{num_context} context points drawn from the prior (seed {seed}); predictions at {num_query} new inputs:\n")
    print(f"{'x':>7} {'true y':>8} | {'PFN mean':>9} {'PFN 90% interval':>20} | {'GP mean':>9} {'GP 90% interval':>20}")
    for i in range(num_query):
        pfn_interval = f"[{pfn_dist.icdf(0.05)[i]:+.3f}, {pfn_dist.icdf(0.95)[i]:+.3f}]"
        gp_interval = f"[{gp_low[i]:+.3f}, {gp_high[i]:+.3f}]"
        print(
            f"{x_query[i, 0]:7.3f} {y_query[i]:+8.3f} | {pfn_dist.mean[i]:+9.3f} {pfn_interval:>20} | "
            f"{gp_dist.mean[0, i]:+9.3f} {gp_interval:>20}"
        )
    pfn_nll = -pfn_dist.log_prob(y_query).mean()
    gp_nll = -gp_dist.log_prob(y_query.double())[0].mean()
    print(f"\nmean NLL of the true values: PFN {pfn_nll:.3f}, exact GP {gp_nll:.3f} (lower is better)")
