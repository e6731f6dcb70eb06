"""Shared pieces of the benchmarks: timing, seeds, averaging, and writing JSON + Markdown."""

from __future__ import annotations

import datetime
import json
import math
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch

from pfn.predictor import PFN, load

# Seed stream tag for benchmark data; training draws from streams (seed, rank, step) and
# (seed, 10**6, draw), so benchmark datasets never coincide with training batches.
BENCH_STREAM = 7_777_777


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work, so that a timer stopped next measures it; no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def standard_error(values: torch.Tensor) -> float:
    return (values.double().std() / math.sqrt(len(values))).item() if len(values) > 1 else float("nan")


def average_by_context(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the rows of each context size over feature counts (standard errors combined);
    what is not a number (per-dataset lists) stays in the rows."""
    by_context: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_context.setdefault(row["context"], []).append(row)
    summary = []
    for context, group in by_context.items():
        averaged: dict[str, Any] = {"context": context}
        for key in group[0]:
            if key in ("context", "features") or not isinstance(group[0][key], (int, float)):
                continue
            if key.endswith("_se"):
                averaged[key] = math.sqrt(sum(r[key] ** 2 for r in group)) / len(group)
            else:
                averaged[key] = sum(r[key] for r in group) / len(group)
        summary.append(averaged)
    return summary


class ResultCache:
    """Baseline results in a JSON file, one entry per name, valid for one `key` (the settings they
    depend on). MCMC baselines do not depend on the PFN, so the benchmark of a new checkpoint of
    the same prior reuses them instead of spending hours on the same chains again. Each entry
    computed from data records `observed_sum`, the sum of that data, and is only returned for the
    same data."""

    def __init__(self, path: Path | None, key: dict[str, Any]) -> None:
        self.path = path
        self.key = json.loads(json.dumps(key))  # as it reads back from the file
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == self.key:
                self.entries = stored["entries"]
            else:
                print(f"cache {path} is for other settings ({stored.get('key')}); starting a new one")

    def get(self, name: str, observed: torch.Tensor | None = None) -> dict[str, Any] | None:
        """The entry `name`; with `observed`, only if it was computed from that data."""
        entry = self.entries.get(name)
        if entry is None or observed is None:
            return entry
        return entry if math.isclose(entry["observed_sum"], observed.sum().item(), rel_tol=1e-9) else None

    def put(self, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry
        if self.path is not None:  # after every entry, so an interrupted run keeps what it did
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps({"key": self.key, "entries": self.entries}))
            partial.replace(self.path)  # atomic: a run stopped mid-write leaves the last complete file


def load_for_bench(
    benchmark: str,
    model_name_or_path: str,
    seed: int,
    num_datasets: int,
    num_queries: int,
    precision: str = "float32",
    device: str = "cpu",
) -> PFN:
    model = load(model_name_or_path, device, precision)
    if seed == model.config.seed:
        raise ValueError(f"bench seed {seed} equals the model's training seed; choose another --seed")
    print(
        f"pfn bench {benchmark}: model {model_name_or_path} ({model}), {num_datasets} datasets x {num_queries} "
        f"queries per cell, seed {seed}, {precision} on {model.device}",
        flush=True,
    )
    return model


def assemble_result(
    benchmark: str, model_name_or_path: str, model: PFN, rows: list[dict[str, Any]], **settings: Any
) -> dict[str, Any]:
    """The JSON record of a run: settings, machine, per-context summary and every row."""
    summary = average_by_context(rows)
    return {
        "benchmark": benchmark,
        "model": str(model_name_or_path),
        "model_metadata": model.metadata,
        "prior": model.prior_spec,
        **settings,
        "machine": machine(model),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mean_difference": sum(r["difference"] for r in summary) / len(summary),
        "summary": summary,
        "rows": rows,
    }


def machine(model: PFN) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bfloat16_flags": cpu_bfloat16_flags(),  # what makes precision="bfloat16" fast on a CPU
        "torch_threads": torch.get_num_threads(),
        "device": str(model.device),
    }


def cpu_bfloat16_flags() -> list[str]:
    """The CPU's bfloat16 instruction sets (from /proc/cpuinfo on Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(text.split("flags", 1)[1].split("\n", 1)[0].split()) if "flags" in text else set()
    return sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def results_name(benchmark: str, precision: str = "float32", tag: str = "") -> str:
    """The stem of a run's result files: the benchmark's name, then the precision unless float32, then
    the caller's tag, so that a variant run (other chains, another checkpoint) does not overwrite the
    main result of the day."""
    # No '.': result and figure paths are this stem plus a suffix (`Path.with_suffix`), which a dot would cut.
    if tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", tag):
        raise ValueError(f"tag {tag!r} must be letters, digits, '_' or '-' (it becomes part of a file name)")
    return "-".join(part for part in (benchmark, "" if precision == "float32" else precision, tag) if part)


def write_results(name: str, result: dict[str, Any], table: str, description: str, out_dir: Path | None) -> Path | None:
    """Print the table and write `<out_dir>/<name>-<date>.json` and `.md`; returns that stem, to
    which figures add their own suffix."""
    print(table)
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}-{datetime.date.today().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(f"# {name} benchmark: {result['model']}\n\n{description}\n\n{table}\n")
    print(f"results written to {stem}.json and {stem}.md")
    return stem
