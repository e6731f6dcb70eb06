"""How much a shipped model loses when its network runs under bfloat16 autocast.

    python benchmarks/bfloat16_precision.py [MODELS...] > benchmarks/results/bfloat16-precision-DATE.md

For each model, datasets from its own prior (64 per cell, 50 queries each) are predicted twice
with the same weights, in float32 and with `precision="bfloat16"`, and the mean NLL per query
point of both is compared. Training in bf16-mixed runs the same forward pass, so this is also the
noise a bfloat16 training step sees. Targets are given in the prior's units (as in `pfn bench`),
except for models trained on standardised targets (gp_hyper), which normalise their context.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

import pfn
from pfn.benchmarks.common import BENCH_STREAM
from pfn.training import seeded_generators
from priors import build_prior

FEATURES = {"gp": (1, 3), "gp_hyper": (1,), "bnn": (1, 3), "gmm": (2, 5)}


def datasets(name: str, model: pfn.PFN) -> Iterator[tuple[int, int, tuple, torch.Tensor]]:
    """The cells both precision scripts score: (context, features, predict's arguments, query
    targets), 64 datasets of the model's own prior each, 50 queries, seed 777."""
    prior = build_prior(model.prior_spec)
    for context in (10, 50, 100):
        for features in FEATURES.get(name, (1,)):
            _, generator = seeded_generators(777, BENCH_STREAM, context, features)
            batch = prior.sample(64, context + 50, features, generator)
            yield (
                context,
                features,
                (batch.x[:, :context], batch.y[:, :context], batch.x[:, context:]),
                batch.y[:, context:],
            )


def mean_nll(model: pfn.PFN, args: tuple, y_query: torch.Tensor) -> float:
    # Models trained on standardised targets (gp_hyper) normalise their context; the others are
    # given the prior's own units, as in `pfn bench`.
    normalize = model.config.data.standardize_y
    return -model.predict(*args, normalize=normalize).log_prob(y_query).double().mean().item()


def main(models: list[str]) -> None:
    torch.set_num_threads(1)
    print("| model | context | features | NLL float32 | bfloat16 - float32 |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        full, half = pfn.load(name), pfn.load(name, precision="bfloat16")
        for context, features, args, y_query in datasets(name, full):
            nll = [mean_nll(model, args, y_query) for model in (full, half)]
            print(f"| {name} | {context} | {features} | {nll[0]:+.4f} | {nll[1] - nll[0]:+.4f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(FEATURES))
