"""Is a GMM classifier's gap to the exact posterior a matter of calibration? A temperature scan.

    python benchmarks/gmm_calibration.py [MODEL] > benchmarks/results/gmm-calibration-DATE.md

Divides the model's logits by a temperature T (T > 1 softens, T < 1 sharpens the predictive)
and reports KL(exact || PFN) per query point, the gap `pfn bench gmm` calls "expected", for
each context size, averaged over 1-5 features (100 datasets x 50 queries per cell, seed 4242,
not a training seed). If the network were merely over- or under-confident, some T != 1 would
close part of the gap; a minimum at T = 1 says the error is in which classes it favours, which
only a better network removes.
"""

from __future__ import annotations

import sys

import torch

import pfn
from pfn.baselines.gmm_exact import gmm_posterior_predictive
from pfn.benchmarks.gmm import kl_divergence
from priors import build_prior

CONTEXTS = (10, 20, 50, 100, 200)
FEATURES = (1, 2, 3, 4, 5)
TEMPERATURES = (0.9, 0.95, 0.97, 1.0, 1.03, 1.05, 1.1)
DATASETS, QUERIES, SEED = 100, 50, 4242


def main(model_name: str = "gmm") -> None:
    torch.set_num_threads(1)
    model = pfn.load(model_name)
    prior = build_prior(model.prior_spec)
    generator = torch.Generator().manual_seed(SEED)
    print(f"# Temperature scan of `{model_name}`: KL(exact || PFN with logits / T), nats per query point\n")
    print("| context | " + " | ".join(f"T = {t}" for t in TEMPERATURES) + " |")
    print("|---:|" + "---:|" * len(TEMPERATURES))
    for num_context in CONTEXTS:
        logits, exact = [], []
        for num_features in FEATURES:
            batch = prior.sample(DATASETS, num_context + QUERIES, num_features, generator)
            x_context, y_context, x_query = batch.x[:, :num_context], batch.y[:, :num_context], batch.x[:, num_context:]
            logits.append(model.predict(x_context, y_context, x_query, normalize=False).log_probs.double())
            exact.append(gmm_posterior_predictive(x_context, y_context, x_query, prior))
        logits_all, exact_all = torch.cat(logits), torch.cat(exact)
        cells = [kl_divergence(exact_all, torch.softmax(logits_all / t, -1)).mean().item() for t in TEMPERATURES]
        print(f"| {num_context} | " + " | ".join(f"{kl:.5f}" for kl in cells) + " |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
