"""The `pfn` command line: train, export, predict, bench, example, models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfn.benchmarks.train_arguments import add_arguments as add_train_arguments


def _train(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.config import load_config
    from pfn.training import train

    config = load_config(args.config, overrides)
    path = train(config, ckpt_path=args.ckpt_path)
    print(f"model written to {path}")


def _export(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.checkpoint import save_model
    from pfn.training import PFNModule

    # Lightning's own checkpoints are pickles: export only those you wrote yourself.
    module = PFNModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=False)
    path = save_model(module, args.out, trained_steps=int(args.steps) if args.steps else None)
    print(f"model written to {path}")


def _predict(args: argparse.Namespace, overrides: list[str]) -> None:
    import numpy as np
    import torch

    import pfn

    def read_csv(path: str) -> np.ndarray:
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1 if args.header else 0)
        except ValueError as error:
            hint = "" if args.header else " (if its first row names the columns, pass --header)"
            raise SystemExit(f"{path}: not a numeric CSV table{hint}: {error}") from error

    model = pfn.load(args.model)
    context, query = read_csv(args.context), read_csv(args.query)
    if context.shape[1] < 2:
        raise SystemExit(
            f"{args.context}: need feature columns followed by a target column, got {context.shape[1]} column(s)"
        )
    quantiles = [float(q) for q in args.quantiles.split(",")]
    if args.ensemble < 1:
        raise SystemExit(f"--ensemble must be >= 1, got {args.ensemble}")
    if args.ensemble == 1:
        table = model.predict_table(context[:, :-1], context[:, -1], query, quantiles=quantiles)
    else:  # the sklearn estimators' views (pfn/estimators.py): one way to build an ensemble
        from pfn.distributions import CategoricalDistribution
        from pfn.estimators import PFNClassifier, PFNRegressor
        from pfn.predictor import predictive_table

        kind = PFNClassifier if model.is_classifier else PFNRegressor
        settings = {"n_ensemble": args.ensemble, "random_state": args.seed, "device": "cpu"}
        estimator = kind(args.model, **settings).fit(context[:, :-1], context[:, -1])
        if model.is_classifier:
            probs = torch.as_tensor(estimator.predict_proba(query))
            table = predictive_table(CategoricalDistribution(probs.log()), labels=estimator.classes_)
        else:
            table = predictive_table(estimator.predict_distribution(query), quantiles)
    header = ",".join(table)
    rows = np.column_stack(list(table.values()))
    if args.out:
        np.savetxt(args.out, rows, delimiter=",", header=header, comments="", fmt="%.6g")
        print(f"predictions for {len(rows)} query points written to {args.out}")
    else:
        np.savetxt(sys.stdout, rows, delimiter=",", header=header, comments="", fmt="%.6g")


BENCH_DEFAULTS = {
    # benchmark: (model, context sizes, feature counts, datasets per cell, queries per dataset)
    "gp": ("gp", "1,2,5,10,20,50,100", "1,2,3,4,5", 100, 10),
    "gmm": ("gmm", "10,20,50,100,200", "2,3,4,5", 50, 20),
    # NUTS costs minutes per dataset on a CPU: the defaults finish in about 20 minutes on 2 cores.
    "bnn": ("bnn", "10,50,100", "1", 2, 20),
    "gp-hyper": ("gp_hyper", "10,50,100", "1", 2, 20),
}


def _bench(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.benchmarks.common import results_name

    results_name(args.prior, tag=args.tag)  # a bad tag fails now, not after hours of sampling
    if args.prior == "train":
        from pfn.benchmarks.throughput import run_from_args

        run_from_args(args)
        return
    if args.prior == "lc":
        from pfn.baselines.mcmc_pp import MCMCSettings
        from pfn.benchmarks.lc import run_lc_bench

        walkers, steps, burn_in, thin = (int(v) for v in args.mcmc.split(","))
        cutoffs = [int(c) for c in args.cutoffs.split(",")]
        settings = MCMCSettings(walkers, steps, burn_in, thin)
        cache = Path(args.mcmc_cache) if args.mcmc_cache else None
        run_lc_bench(
            args.model or "lc", cutoffs, args.curves, args.seed, settings, Path(args.out_dir), 1, args.device, cache,
            args.precision, args.tag,
        )  # fmt: skip
        return
    if args.prior == "tabular":
        from pfn.benchmarks.tabular import run_tabular_bench

        regressor, _, classifier = (args.model or "regressor,classifier").partition(",")
        run_tabular_bench(
            regressor, classifier or "classifier", seed=args.seed, out_dir=Path(args.out_dir), tag=args.tag
        )
        return
    if args.prior not in BENCH_DEFAULTS:
        available = ", ".join([*BENCH_DEFAULTS, "lc", "tabular", "train"])
        raise SystemExit(f"unknown benchmark {args.prior!r}; available: {available}")
    model, contexts, features, datasets, queries = BENCH_DEFAULTS[args.prior]
    common = {
        "contexts": [int(c) for c in (args.context or contexts).split(",")],
        "features": [int(f) for f in (args.features or features).split(",")],
        "num_datasets": args.datasets or datasets,
        "num_queries": args.queries or queries,
        "seed": args.seed,
        "out_dir": Path(args.out_dir),
        "precision": args.precision,
        "tag": args.tag,
    }
    if args.prior in ("bnn", "gp-hyper"):
        from pfn.benchmarks.mcmc import run_mcmc_bench

        budgets = tuple(int(b) for b in args.budgets.split(","))
        run_mcmc_bench(
            args.prior, args.model or model, budgets=budgets, num_chains=args.chains,
            max_tree_depth=args.max_tree_depth, force=args.force, plot=args.plot,
            nuts_cache=Path(args.mcmc_cache) if args.mcmc_cache else None, device=args.device,
            ensemble=args.ensemble, **common,
        )  # fmt: skip
    elif args.prior == "gp":
        from pfn.benchmarks.gp import run_gp_bench

        run_gp_bench(args.model or model, ensemble=args.ensemble, **common)
    else:
        from pfn.benchmarks.gmm import run_gmm_bench

        baselines = tuple(b for b in args.baselines.split(",") if b)
        run_gmm_bench(args.model or model, baselines=baselines, ensemble=args.ensemble, **common)


def _models(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.zoo import list_models, model_card

    if args.write_config and not args.name:
        raise ValueError("--write-config needs a model name, e.g. pfn models gp --write-config gp.yaml")
    cards = [model_card(args.name)] if args.name else list_models()
    if not cards:
        print("no shipped models found")
    print("\n\n".join(str(card) for card in cards))
    if args.write_config:
        print(f"training config written to {cards[0].write_config(args.write_config)}")


def _compare(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.benchmarks.compare import run_compare

    def numbers(text: str | None) -> list[int] | None:
        return [int(value) for value in text.split(",")] if text else None

    run_compare(
        args.new, args.old, numbers(args.context), numbers(args.features), args.datasets, args.queries, args.seed
    )


def _example(args: argparse.Namespace, overrides: list[str]) -> None:
    from pfn.example import run_example

    run_example(args.model, num_context=args.context, seed=args.seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pfn", description="Prior-data fitted networks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a PFN from a YAML config",
        description="Any config key can be overridden, e.g. --model.emsize 128",
    )
    train.add_argument("--config", help="YAML config file (defaults apply where omitted)")
    train.add_argument("--ckpt_path", help="resume: a Lightning checkpoint, or 'last' for the run's latest")
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="turn a Lightning training checkpoint into a .pfn model file")
    export.add_argument("ckpt")
    export.add_argument("--out", required=True)
    export.add_argument("--steps", help="number of training steps, recorded in the file")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", help="predict query points from a context, CSV in and out")
    predict.add_argument("--model", default="gp", help="shipped model name or .pfn path")
    predict.add_argument("--context", required=True, help="CSV: feature columns, then the target column")
    predict.add_argument("--query", required=True, help="CSV: feature columns")
    predict.add_argument("--out", help="output CSV (default: stdout)")
    predict.add_argument("--quantiles", default="0.05,0.5,0.95")
    predict.add_argument("--header", action="store_true", help="the CSV files have a header row")
    predict.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="average over N views of the data (features reordered, and mirrored where the prior allows; "
        "for a classifier also relabelled), as PFNRegressor / PFNClassifier(n_ensemble=N) do",
    )
    predict.add_argument("--seed", type=int, default=0, help="seed of the ensemble's views")
    predict.set_defaults(run=_predict)

    bench = commands.add_parser("bench", help="compare a PFN with the exact Bayesian answer on prior data")
    bench.add_argument("prior", help="benchmark name: " + ", ".join([*BENCH_DEFAULTS, "lc", "tabular", "train"]))
    bench.add_argument(
        "--model", help="shipped model name or .pfn path (default: the benchmark's name; tabular: REGRESSOR,CLASSIFIER)"
    )
    bench.add_argument("--context", help="context sizes, e.g. 10,50,100")
    bench.add_argument("--features", help="numbers of input features, e.g. 1,2,3")
    bench.add_argument("--datasets", type=int, help="datasets per context size and feature count")
    bench.add_argument("--queries", type=int, help="query points per dataset")
    bench.add_argument("--baselines", default="qda,gpc", help="gmm: classical baselines to run (qda, gpc)")
    bench.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="gp, gp-hyper, bnn, gmm: also score the PFN averaged over N views of each dataset under the prior's "
        "symmetries (gp, gp-hyper, bnn: features reordered and reflected; gmm: rotated inputs, relabelled classes)",
    )
    bench.add_argument("--seed", type=int, default=12345, help="held-out seed (training uses other streams)")
    bench.add_argument("--out_dir", default="benchmarks/results")
    bench.add_argument(
        "--tag", default="", help="added to the result file names, e.g. 4chains: keeps a variant run from overwriting"
    )
    # `pfn bench bnn|gp-hyper`: NUTS (and type-II ML) on the same datasets (pfn/benchmarks/mcmc.py)
    bench.add_argument("--budgets", default="32,128,512", help="bnn, gp-hyper: NUTS iterations per chain")
    bench.add_argument("--chains", type=int, default=1, help="bnn, gp-hyper: NUTS chains")
    bench.add_argument("--max_tree_depth", type=int, default=8, help="bnn, gp-hyper: NUTS maximum tree depth")
    bench.add_argument("--force", action="store_true", help="bench a model trained on a prior of another kind")
    bench.add_argument("--plot", action="store_true", help="bnn, gp-hyper: write a PNG next to the results")
    # `pfn bench lc`: learning-curve extrapolation against MCMC-PP (pfn/benchmarks/lc.py)
    bench.add_argument("--curves", type=int, default=200, help="lc: held-out curves")
    bench.add_argument("--cutoffs", default="10,20,40", help="lc: observed epochs before extrapolating")
    bench.add_argument("--mcmc", default="100,2500,500,10", help="lc: MCMC-PP walkers,steps,burn_in,thin")
    bench.add_argument(
        "--device", default="cpu", help="lc, bnn, gp-hyper: device of the PFN (MCMC and type-II ML run on the CPU)"
    )
    bench.add_argument(
        "--precision",
        default="float32",
        help="the PFN's precision, float32 or bfloat16 (fast on CPUs with AVX512-BF16 or AMX)",
    )
    bench.add_argument(
        "--mcmc_cache", help="lc, bnn, gp-hyper: JSON file of MCMC results to reuse and extend (independent of the PFN)"
    )
    # `pfn bench train`: training throughput (pfn/benchmarks/throughput.py)
    add_train_arguments(bench, prefix="train: ")
    bench.set_defaults(run=_bench)

    compare = commands.add_parser(
        "compare", help="which of two models of one prior predicts its datasets better (paired NLL difference)"
    )
    compare.add_argument("new", help="shipped model name or .pfn path")
    compare.add_argument("old", help="shipped model name or .pfn path")
    compare.add_argument("--context", help="context sizes, e.g. 10,50,100 (default: 1, 10, 50 and the longest)")
    compare.add_argument("--features", help="feature counts (default: every one the model was trained on)")
    compare.add_argument("--datasets", type=int, default=1000, help="datasets per context size")
    compare.add_argument("--queries", type=int, default=20, help="query points per dataset")
    compare.add_argument("--seed", type=int, default=999)
    compare.set_defaults(run=_compare)

    example = commands.add_parser("example", help="predict a dataset from the model's prior, next to the exact GP")
    example.add_argument("--model", default="gp")
    example.add_argument("--context", type=int, default=8)
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(run=_example)

    models = commands.add_parser("models", help="list the shipped models with their model cards")
    models.add_argument("name", nargs="?", help="one model: a shipped name or a .pfn path")
    models.add_argument("--write-config", help="write the model's stored training config to this YAML file")
    models.set_defaults(run=_models)

    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        args.run(args, overrides)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
