"""What `PFN.predict`'s map from a user's units into the prior's costs each shipped model.

    python benchmarks/units.py [MODELS...] > benchmarks/results/units-DATE.md

Real data come in their own units, so `predict` maps every dataset into the units of the model's
prior from its context alone (`pfn.predictor.Normalizer`). On datasets drawn from the prior the
map can only lose: the best answer is the model's prediction in the prior's own units
(`normalize=False`). This script measures that loss, mean NLL (classifiers: cross-entropy) per
query point with the map minus without it, for the map `predict` uses now and for the one it
used before (every feature's context range mapped onto [0, 1], y standardised by the context's
mean and standard deviation). Every map is affine-equivariant, so the loss is the same for the
same data in any other units. 100 datasets x 20 queries per cell, seed 4242, one CPU thread.
"""

from __future__ import annotations

import sys

import torch

import pfn
from pfn.predictor import Normalizer
from pfn.scaling import context_standardization

MODELS = ("gp", "bnn", "gp_hyper", "regressor", "gmm", "classifier")
CONTEXTS = (1, 2, 3, 5, 10, 20, 50, 100)
FEATURES = (1, 2, 3, 5)
DATASETS, QUERIES, SEED = 100, 20, 4242


def previous_map(x_context: torch.Tensor, y_context: torch.Tensor, classifier: bool) -> Normalizer:
    """The map `predict` used before priors chose their own: context range onto [0, 1], y standardised."""
    normalizer = Normalizer.identity(x_context)
    low = x_context.amin(1, keepdim=True)
    span = x_context.amax(1, keepdim=True) - low
    normalizer.x_loc, normalizer.x_scale = low, torch.where(span > 0, span, torch.ones_like(span))
    if not classifier:
        normalizer.y_loc, normalizer.y_scale = context_standardization(y_context)
    return normalizer


def mean_nll(model: pfn.PFN, normalizer: Normalizer, x_context, y_context, x_query, y_query) -> float:
    """Mean NLL per query point in the prior's units of the model's prediction after `normalizer`."""
    distribution = model.predict(
        normalizer.x(x_context), normalizer.y(y_context), normalizer.x(x_query), normalize=False
    )
    if model.is_classifier:
        return -distribution.log_prob(y_query.long()).mean().item()
    log_density = distribution.log_prob(normalizer.y(y_query)) - normalizer.y_scale.log()
    return -log_density.mean().item()


def main(models: list[str]) -> None:
    torch.set_num_threads(1)
    print("# The cost of mapping a dataset into the prior's units (`PFN.predict`)\n")
    print("Mean NLL (classifiers: cross-entropy) per query point with the map minus in the prior's own")
    print("units, averaged over 1, 2, 3, 5 features (up to the model's maximum); `now`: the map of")
    print("`predict`, `before`: context range onto [0, 1] and y standardised by the context.\n")
    print("| model | map | " + " | ".join(f"n = {n}" for n in CONTEXTS) + " |")
    print("|---|---|" + "---:|" * len(CONTEXTS))
    for name in models:
        model = pfn.load(name)
        features = [f for f in FEATURES if f <= model.max_features]
        generator = torch.Generator().manual_seed(SEED)
        losses: dict[str, list[float]] = {"now": [], "before": []}
        for num_context in CONTEXTS:
            cells: dict[str, list[float]] = {"now": [], "before": []}
            for num_features in features:
                batch = model.prior.sample(DATASETS, num_context + QUERIES, num_features, generator)
                context, query = slice(0, num_context), slice(num_context, None)
                data = batch.x[:, context], batch.y[:, context], batch.x[:, query], batch.y[:, query]
                x_context, y_context = data[0].double(), data[1].double()
                in_prior_units = mean_nll(model, Normalizer.identity(x_context), *data)
                maps = {
                    "now": Normalizer.fit(x_context, y_context, model.prior, standardize_y=not model.is_classifier),
                    "before": previous_map(x_context, y_context, model.is_classifier),
                }
                for key, normalizer in maps.items():
                    cells[key].append(mean_nll(model, normalizer, *data) - in_prior_units)
            for key in losses:
                losses[key].append(sum(cells[key]) / len(cells[key]))
        for key, row in losses.items():
            print(f"| {name} | {key} | " + " | ".join(f"{loss:+.3f}" for loss in row) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
