"""The `--plot` figure of `pfn bench bnn|gp-hyper`: NLL against time, and one example dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pfn.benchmarks.common import BENCH_STREAM  # noqa: E402
from pfn.predictor import PFN  # noqa: E402
from pfn.training import seeded_generators  # noqa: E402
from priors import Prior  # noqa: E402

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def plot_results(
    result: dict[str, Any],
    model: PFN,
    prior: Prior,
    nuts: Any,
    seed: int,
    path: Path,
) -> Path:
    """Left: NLL against seconds per dataset. Right: a one-feature example dataset, NUTS at the
    largest budget (`nuts`, reused from the benchmark, so nothing compiles twice)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    _nll_against_time(left, result["summary"])
    _example(right, model, prior, nuts, seed, min(r["context"] for r in result["rows"]))
    figure.suptitle(f"pfn bench {result['benchmark']}: {result['model']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def mixture_quantiles(means: torch.Tensor, stds: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Quantiles of the equal-weight mixture of Normals over dim 0 (the posterior samples), by
    bisection on its cdf: means, stds [S, q] -> [len(quantiles), q]."""
    normal = torch.distributions.Normal(means, stds)
    result = []
    for level in quantiles:
        low, high = (means - 10 * stds).min(0).values, (means + 10 * stds).max(0).values
        for _ in range(60):
            middle = (low + high) / 2
            below = normal.cdf(middle).mean(0) < level
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        result.append((low + high) / 2)
    return torch.stack(result)


def _nll_against_time(axes, summary: list[dict[str, Any]]) -> None:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, colour in zip(summary, colours, strict=False):
        nuts = sorted((k[:-4] for k in row if k.startswith("nuts-") and k.endswith("_nll")), key=lambda m: int(m[5:]))
        axes.plot(
            [row[f"{m}_seconds"] for m in nuts],
            [row[f"{m}_nll"] for m in nuts],
            "o-",
            color=colour,
            label=f"NUTS, {row['context']} points",
        )
        for m in nuts:
            axes.annotate(m[5:], (row[f"{m}_seconds"], row[f"{m}_nll"]), fontsize=7, color=colour)
        axes.plot(row["pfn_seconds_single"], row["pfn_nll"], "*", ms=14, color=colour, label=f"PFN, {row['context']}")
        if "type2ml_nll" in row:
            axes.plot(
                row["type2ml_seconds"], row["type2ml_nll"], "s", color=colour, label=f"type-II ML, {row['context']}"
            )
    axes.set_xscale("log")
    nlls = [row[key] for row in summary for key in row if key.endswith("_nll")]
    if max(nlls) - min(nlls) > 20:  # a failed run (type-II ML on a few points) can reach hundreds
        axes.set_yscale("symlog", linthresh=1.0)
    axes.set_xlabel("seconds per dataset (NUTS: budget annotated; PFN: one dataset per forward pass)")
    axes.set_ylabel("mean NLL per query point")
    axes.legend(fontsize=7)
    axes.set_title("NLL against wall time")


def _example(axes, model: PFN, prior: Prior, nuts: Any, seed: int, num_context: int) -> None:
    """A one-feature dataset: PFN quantile bands (filled) over NUTS's (lines)."""
    _, generator = seeded_generators(seed, BENCH_STREAM, 99, num_context)
    batch = prior.sample(1, num_context, 1, generator)
    x_context, y_context = batch.x[0], batch.y[0]
    grid = torch.linspace(0, 1, 200)[:, None]
    dist = model.predict(x_context.to(model.device), y_context.to(model.device), grid.to(model.device), normalize=False)
    pfn_bands = [dist.icdf(torch.full((200,), q, device=model.device)).cpu().numpy() for q in QUANTILES]
    samples = nuts.sample(x_context.numpy(), y_context.numpy(), seed)
    means, stds = nuts.predictive_normals(samples, x_context.numpy(), y_context.numpy(), grid.numpy())
    nuts_bands = mixture_quantiles(torch.tensor(means), torch.tensor(stds), QUANTILES).numpy()
    x = grid[:, 0].numpy()
    axes.fill_between(x, pfn_bands[0], pfn_bands[-1], alpha=0.2, color="C0", label="PFN 5-95%")
    axes.fill_between(x, pfn_bands[1], pfn_bands[-2], alpha=0.3, color="C0", label="PFN 25-75%")
    axes.plot(x, pfn_bands[2], color="C0", label="PFN median")
    for i, style in ((0, ":"), (1, "--"), (2, "-"), (3, "--"), (4, ":")):
        axes.plot(
            x,
            nuts_bands[i],
            style,
            color="C3",
            lw=1,
            label=None if i not in (0, 2) else ("NUTS median" if i == 2 else "NUTS 5/25/75/95%"),
        )
    axes.plot(x_context[:, 0].numpy(), y_context.numpy(), "k.", ms=8, label="context")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    axes.set_title(f"example: {num_context} context points, {nuts.name}")
    axes.legend(fontsize=7)
