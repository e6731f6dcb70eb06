"""Would averaging a linear-readout model over its readout's input scale help? An experiment.

A model with `model.readout_input_scale` reads, from its transformer's summary of the context, how
fast its readout's basis functions should vary in x (for a GP prior, the lengthscale). At 10
context points that guess is uncertain, and a Bayesian answer would average over it. Here, at
prediction time only and with the network unchanged, the readout's inputs are multiplied by each of
a few factors around 1 and the predictions mixed with weights from each regression's evidence
(its marginal likelihood of the context's y, the precisions integrated over the same grid as
`pfn.model.evidence_precisions`). The NLL per query point is reported against the exact GP
predictive given the hyperparameters each dataset was drawn with (an oracle), on datasets of the
model's own prior.

    python benchmarks/readout_scale_average.py gp_hyper [--features 1] [--out FILE.md]
"""

import argparse
import math
from pathlib import Path

import torch

import pfn
from pfn.model import evidence_on_grid
from priors import build_prior

FACTOR_SETS = {
    "3 factors": (0.85, 1.0, 1.18),
    "5 factors": (0.8, 0.9, 1.0, 1.1, 1.25),
    "7 factors": (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4),
}


def log_evidence(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | features), up to a constant shared by every feature map: phi [b, c, D], y [b, c]
    (centred) -> [b]; the readout's own evidence (`pfn.model.evidence_on_grid`) summed over its
    grid instead of normalised."""
    _, log_density, _, _ = evidence_on_grid(phi, y, phi.shape[1])
    return log_density.logsumexp(-1)


def scaled_prediction(model, x_context, y_context, x_query, y_query, factor):
    """log p(y_query) [b, q] with the readout's inputs multiplied by `factor`, and the readout's
    log evidence on the context [b]."""
    readout = model.backbone.linear_readout
    features = []
    # from_x is the readout's first layer on the (input-scaled) x; basis maps to the features.
    handles = [
        readout.from_x.register_forward_pre_hook(lambda module, args: (args[0] * factor,)),
        readout.basis.register_forward_hook(lambda module, args, output: features.append(output)),
    ]
    try:
        log_prob = model.predict(x_context, y_context, x_query, normalize=False).log_prob(y_query).double()
    finally:
        for handle in handles:
            handle.remove()
    num_context = x_context.shape[1]
    phi = torch.cat([chunk[:, :num_context] for chunk in features])  # every chunk: context, then queries
    return log_prob, log_evidence(phi, y_context - y_context.mean(1, keepdim=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="gp_hyper")
    parser.add_argument("--features", type=int, default=1)
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = pfn.load(args.model)
    if model.backbone.linear_readout is None:
        raise SystemExit(f"{args.model} has no linear readout (model.linear_readout)")
    prior = build_prior(model.config.prior)
    factors = sorted({f for chosen in FACTOR_SETS.values() for f in chosen})
    lines = [
        f"# Readout-scale averaging of `{args.model}` (`python benchmarks/readout_scale_average.py {args.model} "
        f"--features {args.features} --datasets {args.datasets}`)",
        "",
        f"{args.datasets} datasets x {args.queries} queries per context size, {args.features} feature(s), seed "
        f"{args.seed}. NLL per query point minus the exact GP's given the drawn hyperparameters (lower is better).",
        "",
        "| context | the model | "
        + " | ".join(f"{name}, evidence-weighted" for name in FACTOR_SETS)
        + " | 5 factors, equal weights |",
        "|---:|---:|" + "---:|" * (len(FACTOR_SETS) + 1),
    ]
    generator = torch.Generator().manual_seed(args.seed)
    for n in (10, 50, 100):
        batch = prior.sample(args.datasets, n + args.queries, args.features, generator)
        x_context, y_context, x_query, y_query = batch.x[:, :n], batch.y[:, :n], batch.x[:, n:], batch.y[:, n:]
        exact = prior.posterior_predictive(x_context, y_context, x_query, batch.hyperparameters)
        exact_nll = -exact.log_prob(y_query.double())
        runs = {f: scaled_prediction(model, x_context, y_context, x_query, y_query, f) for f in factors}

        def gap(log_prob: torch.Tensor, exact_nll: torch.Tensor = exact_nll) -> str:
            return f"{(-log_prob - exact_nll).mean():+.4f}"

        cells = [gap(runs[1.0][0])]
        for chosen in FACTOR_SETS.values():
            log_probs = torch.stack([runs[f][0] for f in chosen])  # [F, b, q]
            weights = torch.stack([runs[f][1] for f in chosen]).log_softmax(0)  # [F, b]
            cells.append(gap((weights[..., None] + log_probs).logsumexp(0)))
        five = torch.stack([runs[f][0] for f in FACTOR_SETS["5 factors"]])
        cells.append(gap(five.logsumexp(0) - math.log(len(five))))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
