"""Where `gp_hyper`'s gap to the exact answer comes from: the predictive's location or its width.

On datasets of the model's own prior (1 feature), this compares the PFN's predictive at each query
with the exact GP predictive given the hyperparameters the dataset was drawn with (an oracle:
NUTS, which averages over their posterior, is a little wider). It splits the NLL gap by what a
Gaussian would score with the exact width at the PFN's median (location alone) and with the PFN's
width at the exact mean (width alone), and measures both in units of the context's standard
deviation, against how sharp the exact predictive is. And it splits the width's error into a level
per dataset (the mean over its queries of log(PFN std / exact std)) and a shape within the
dataset: a Gaussian at the exact mean with the PFN's width moved to the exact level per dataset
scores what a right level alone would give.

    python benchmarks/gp_hyper_precision.py [MODEL] [--out FILE.md]
"""

import argparse
from pathlib import Path

import torch

import pfn
from priors import build_prior

SHARP = 3e-3  # exact predictive std below this share of the context's std: "nearly noiseless"
SHARPNESS_BINS = ((0, 3e-4), (3e-4, 1e-3), (1e-3, 3e-3), (3e-3, 1e-2), (1e-2, float("inf")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="gp_hyper")
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = pfn.load(args.model)
    prior = build_prior(model.config.prior)
    lines = [
        f"# `{args.model}`: location or width? "
        f"(`python benchmarks/gp_hyper_precision.py {args.model} --datasets {args.datasets}`)",
        "",
        f"{args.datasets} datasets x {args.queries} queries per context size, 1 feature, seed {args.seed}; gaps are",
        "NLL per query point above the exact GP predictive given the drawn hyperparameters (an oracle).",
        f"'sharp': exact std below {SHARP:.0e} of the context's std. z: (PFN median - exact mean) / exact std.",
        "",
        "| context | queries | gap | gap, exact width at PFN median | gap, PFN width at exact mean "
        "| median abs z | abs z q90 | abs z q99 | std ratio (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    precision_rows, level_rows = [], []
    for n in (10, 50, 100):
        batch = prior.sample(args.datasets, n + args.queries, 1, torch.Generator().manual_seed(args.seed + n))
        x, y = batch.x, batch.y
        exact = prior.posterior_predictive(x[:, :n], y[:, :n], x[:, n:], batch.hyperparameters)
        predictive = model.predict(x[:, :n], y[:, :n], x[:, n:], normalize=False)
        targets = y[:, n:].double()
        median, std = predictive.median.double(), predictive.stddev.double()
        exact_nll = -exact.log_prob(targets)
        gap = -predictive.log_prob(y[:, n:]).double() - exact_nll
        location_only = -torch.distributions.Normal(median, exact.scale).log_prob(targets) - exact_nll
        width_only = -torch.distributions.Normal(exact.loc, std).log_prob(targets) - exact_nll
        z = ((median - exact.loc) / exact.scale).abs()
        context_std = y[:, :n].double().std(1, keepdim=True)
        sharpness = exact.scale / context_std
        for name, mask in ((f"{n} sharp", sharpness < SHARP), (f"{n} other", sharpness >= SHARP)):
            if not mask.any():
                continue
            lines.append(
                f"| {name} | {int(mask.sum())} | {gap[mask].mean():+.3f} | {location_only[mask].mean():+.3f} "
                f"| {width_only[mask].mean():+.3f} | {z[mask].median():.2f} | {z[mask].quantile(0.9):.1f} "
                f"| {z[mask].quantile(0.99):.1f} | {(std / exact.scale)[mask].median():.2f} |"
            )
        log_ratio = (std / exact.scale).log()  # [datasets, queries]
        level = log_ratio.mean(1, keepdim=True)
        shape, exact_shape = log_ratio - level, exact.scale.log() - exact.scale.log().mean(1, keepdim=True)
        correlation = (shape + exact_shape) * exact_shape  # log PFN std's deviation times the exact one's
        correlation = correlation.sum(1) / ((shape + exact_shape).square().sum(1) * exact_shape.square().sum(1)).sqrt()
        level_only = -torch.distributions.Normal(exact.loc, std / level.exp()).log_prob(targets) - exact_nll
        level_rows.append(
            f"| {n} | {level.mean():+.2f} | {level.std():.2f} | {correlation.median():.3f} "
            f"| {(shape + exact_shape).std(1).median() / exact_shape.std(1).median():.2f} | {gap.mean():+.3f} "
            f"| {width_only.mean():+.3f} | {level_only.mean():+.3f} |"
        )
        if n == 100:
            location_error = (median - exact.loc).abs() / context_std
            for low, high in SHARPNESS_BINS:
                mask = (sharpness >= low) & (sharpness < high)
                if mask.any():
                    precision_rows.append(
                        f"| [{low:.0e}, {high:.0e}) | {int(mask.sum())} | {location_error[mask].median():.1e} "
                        f"| {location_error[mask].quantile(0.9):.1e} | {(std / context_std)[mask].median():.1e} |"
                    )
    borders = model.head.borders.double()
    widths, centres = borders[1:] - borders[:-1], (borders[1:] + borders[:-1]) / 2
    central = widths[(centres > -0.5) & (centres < 0.5)].median()
    lines += [
        "",
        "At 100 context points, in units of the context's std, by how sharp the exact predictive is:",
        "",
        "| exact std / context std | queries | abs(PFN median - exact mean), median | q90 | PFN std, median |",
        "|---|---:|---:|---:|---:|",
        *precision_rows,
        "",
        "The width's level per dataset (mean over its queries of log(PFN std / exact std)) and its shape",
        "within the dataset (log std about that mean), all queries:",
        "",
        "| context | level, mean | level, sd over datasets | shape: correlation with the exact (median) "
        "| shape: spread / the exact's | gap | gap, PFN width at exact mean | the same at the exact level |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *level_rows,
        "",
        f"The head's buckets are {central:.1e} context std wide around the context mean (median over [-0.5, 0.5]).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
