"""`pfn compare NEW OLD`: which of two models of the same prior predicts its datasets better.

Both models predict the same freshly drawn prior datasets, so the difference of their mean NLL
per dataset is paired: its standard error is far smaller than that of either NLL alone, and a
continued training run that gained a few thousandths of a nat shows it. (An exact baseline on a
handful of datasets cannot tell two such models apart; this is how a continuation is judged
before it replaces a shipped model.)
"""

from __future__ import annotations

from typing import Any

import torch

from pfn.benchmarks.common import BENCH_STREAM, standard_error
from pfn.predictor import PFN, load
from pfn.training import seeded_generators
from priors import build_prior

COMPARE_STREAM = 3  # next to the benchmarks' own streams, so these datasets are none of theirs
DATASETS_PER_DRAW = 50


def compare_models(
    new: PFN,
    old: PFN,
    contexts: list[int],
    features: list[int],
    num_datasets: int = 1000,
    num_queries: int = 20,
    seed: int = 999,
) -> list[dict[str, Any]]:
    """Per context size: both models' mean NLL per query point and their paired difference
    (new - old; negative means the new model is better), over `num_datasets` prior datasets
    spread evenly over the feature counts."""
    if new.prior_spec != old.prior_spec:
        raise ValueError(f"the models were trained on different priors: {new.prior_spec} vs {old.prior_spec}")
    too_many = [f for f in features if f > min(new.max_features, old.max_features)]
    if too_many:
        raise ValueError(f"feature counts {too_many} exceed a model's maximum")
    prior = build_prior(new.prior_spec)
    per_feature = -(-num_datasets // len(features))
    rows = []
    for num_context in contexts:
        nll: dict[str, list[torch.Tensor]] = {"new": [], "old": []}
        for num_features in features:
            _, generator = seeded_generators(seed, BENCH_STREAM, COMPARE_STREAM, num_context, num_features)
            for start in range(0, per_feature, DATASETS_PER_DRAW):
                batch = prior.sample(min(DATASETS_PER_DRAW, per_feature - start), num_context + num_queries,
                                     num_features, generator)  # fmt: skip
                x_context, y_context = batch.x[:, :num_context], batch.y[:, :num_context]
                x_query, y_query = batch.x[:, num_context:], batch.y[:, num_context:]
                for name, model in (("new", new), ("old", old)):
                    predictive = model.predict(x_context, y_context, x_query, normalize=False)
                    nll[name].append(-predictive.log_prob(y_query).double().mean(-1).cpu())
        new_nll, old_nll = torch.cat(nll["new"]), torch.cat(nll["old"])
        difference = new_nll - old_nll
        rows.append(
            {
                "context": num_context,
                "datasets": len(difference),
                "new_nll": new_nll.mean().item(),
                "old_nll": old_nll.mean().item(),
                "difference": difference.mean().item(),
                "difference_se": standard_error(difference),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| context | datasets | NLL new | NLL old | new - old | ± s.e. |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['context']} | {row['datasets']} | {row['new_nll']:+.4f} | {row['old_nll']:+.4f} "
            f"| {row['difference']:+.4f} | {row['difference_se']:.4f} |"
        )
    return "\n".join(lines)


def run_compare(
    new_name: str,
    old_name: str,
    contexts: list[int] | None,
    features: list[int] | None,
    num_datasets: int,
    num_queries: int,
    seed: int,
) -> list[dict[str, Any]]:
    new, old = load(new_name), load(old_name)
    data = new.config.data
    contexts = contexts or sorted({1, 10, 50, data.longest_context} & set(range(data.longest_context + 1)))
    features = features or list(range(data.min_features, new.max_features + 1))
    print(
        f"pfn compare: {new_name} (new) vs {old_name} (old), {num_datasets} datasets per context over "
        f"{len(features)} feature count(s), {num_queries} queries each, seed {seed}",
        flush=True,
    )
    rows = compare_models(new, old, contexts, features, num_datasets, num_queries, seed)
    print(markdown_table(rows))
    return rows
