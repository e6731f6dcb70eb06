"""The command-line options of the training-throughput benchmark, shared by `pfn bench train` and
`python -m pfn.benchmarks.throughput`. Kept apart from the benchmark itself, whose imports
(Lightning) would slow every `pfn` command down while its parser is built."""

from __future__ import annotations

import argparse
from typing import Any

MEASUREMENTS = ("prior", "cholesky", "model_step", "end_to_end", "end_to_end_prefetch", "linalg")


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options; `prefix` starts each help text (`pfn bench` shares its parser among benchmarks)."""
    parser.add_argument("--preset", default="all", help=f"{prefix}paper, small or all")
    parser.add_argument("--out", help=f"{prefix}JSON file to write")
    parser.add_argument("--quick", action="store_true", help=f"{prefix}tiny sizes and windows (a CPU smoke test)")
    switch = {"choices": ("auto", "true", "false"), "default": "auto"}
    parser.add_argument(
        "--compile", **switch, help=f"{prefix}torch.compile the network (train.compile; auto: on a CUDA GPU)"
    )
    parser.add_argument(
        "--compile_mode", default="auto", help=f"{prefix}torch.compile mode (train.compile_mode; auto: CUDA graphs)"
    )
    parser.add_argument(
        "--static_shapes",
        **switch,
        help=f"{prefix}one shape for every batch, context by mask (train.static_shapes; auto: when compiled)",
    )
    parser.add_argument("--measure", help=f"{prefix}some of {','.join(MEASUREMENTS)} (default: all)")
    parser.add_argument(
        "--warmup", type=float, help=f"{prefix}warm-up seconds before the end-to-end window (default 2.5)"
    )
    parser.add_argument("--seconds", type=float, help=f"{prefix}measurement window in seconds (default 5)")


def speed_options(args: argparse.Namespace) -> dict[str, Any]:
    """The train options that change how a step runs, as `run_throughput(speed=...)` takes them."""
    switch = {"auto": "auto", "true": True, "false": False}
    return {
        "compile": switch[args.compile],
        "compile_mode": args.compile_mode,
        "static_shapes": switch[args.static_shapes],
    }
