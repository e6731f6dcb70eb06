"""Training throughput: datasets/s end to end, of the model step alone, and of the prior alone.

For a named preset (the reference PFN trainer's "paper" and "small" GP configs, see issue 7)
this measures, on the current device:

- end to end: the real training path (`PFNModule` + `PriorDataModule` + `make_trainer`), timed
  by a callback between two steps after a warm-up, with the GPU synchronised at the window's
  edges only;
- the model step alone: forward, loss, backward, gradient clipping, fused AdamW and scheduler
  steps on batches drawn beforehand, under the same autocast precision as training;
- the prior alone: `draw_training_batch` on the device, as training calls it;

and reports the sampling share of a training step, which attention kernel (SDPA backend) runs,
the host-device synchronisations inside a step (on CUDA), and the machine. Each measurement is
guarded: a failure is recorded in the JSON and the others still run. The JSON file is rewritten
after every measurement, so a run cut short keeps what it measured.

    python -m pfn.benchmarks.throughput --preset all --out throughput.json
    pfn bench train --preset paper --out throughput.json
    pfn bench train --quick            # tiny sizes and windows: a CPU smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pfn.benchmarks.common import synchronize
from pfn.benchmarks.train_arguments import MEASUREMENTS, add_arguments, speed_options
from pfn.config import Config, resolve_speed
from pfn.heads import borders_from_samples
from pfn.training import PFNModule, PriorDataModule, compile_backbone, draw_training_batch, make_trainer
from priors import GPPrior, Prior, build_prior

# The prior of configs/gp.yaml (the PFN paper's fixed GP hyperparameters); a test checks they agree.
GP_PRIOR = {"name": "gp", "kernel": "rbf", "lengthscale": 0.6, "outputscale": 1.0, "noise": 1.0e-4}

# The reference trainer's configs (issue 7). Every dataset has exactly `features` features.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {
        "emsize": 512, "nlayers": 6, "nhead": 4, "nhid": 1024, "num_buckets": 1000,
        "num_points": 1000, "features": 5, "batch_size": 32,
    },
    "small": {
        "emsize": 256, "nlayers": 6, "nhead": 4, "nhid": 512, "num_buckets": 1000,
        "num_points": 200, "features": 1, "batch_size": 128,
    },
}  # fmt: skip
# --quick: sizes small enough for a CPU test, same code path.
QUICK = {"emsize": 32, "nlayers": 2, "nhead": 2, "nhid": 64, "num_buckets": 20, "num_points": 30, "batch_size": 8}

# The reference PFN trainer (PyPI `pfns` 0.4.2) on an H100, datasets/s (issue 7).
REFERENCE = {"paper": {"end_to_end": 64.0, "model_step": 788.0}, "small": {"end_to_end": 855.0, "model_step": 3783.0}}
TARGETS = {
    name: {"end_to_end": 10 * ref["end_to_end"] if name == "paper" else 4000.0, "model_step": 1.5 * ref["model_step"]}
    for name, ref in REFERENCE.items()
}

SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}


def preset_config(
    name: str,
    quick: bool = False,
    prefetch: bool = False,
    output_dir: str = "runs/bench",
    speed: dict[str, Any] | None = None,
) -> Config:
    """The training config of a preset: GP prior, fixed feature count, context size drawn per batch.
    `speed` sets the train options that change how a step runs: compile, compile_mode, static_shapes."""
    sizes = {**PRESETS[name], **(QUICK if quick else {})}
    features = sizes["features"]
    return Config.from_dict(
        {
            "seed": 0,
            "logger": "csv",
            "prior": dict(GP_PRIOR),
            "model": {
                "emsize": sizes["emsize"],
                "nlayers": sizes["nlayers"],
                "nhead": sizes["nhead"],
                "nhid": sizes["nhid"],
                "max_features": features,
                "num_buckets": sizes["num_buckets"],
            },
            "data": {
                "batch_size": sizes["batch_size"],
                "num_points": sizes["num_points"],
                "min_features": features,
                "prefetch": prefetch,
            },
            "train": {
                "max_steps": 10**9,  # the timing callback stops the run
                "checkpoint_every": 10**9,
                "log_every": 50,
                "progress_bar": False,
                "output_dir": output_dir,
                **(speed or {}),
            },
        }
    ).validate()


def timed_loop(function: Callable[[], Any], device: torch.device, warmup_s: float, seconds: float) -> dict[str, float]:
    """Call `function` for `warmup_s`, then count calls for `seconds` (at least 3), synchronising at both edges."""
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < warmup_s:
        function()
        calls += 1
    synchronize(device)
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        function()
        calls += 1
    synchronize(device)
    return {"calls": calls, "seconds": time.perf_counter() - start}


def rates(calls: int, seconds: float, config: Config) -> dict[str, float]:
    per_second = calls / seconds
    return {
        "steps": calls,
        "seconds": seconds,
        "ms_per_step": 1000 / per_second,
        "datasets_per_s": per_second * config.data.batch_size,
        "tokens_per_s": per_second * config.data.batch_size * config.data.num_points,
    }


def placed_borders(prior: Prior, config: Config, device: torch.device) -> torch.Tensor:
    """Bucket borders from a few batches drawn on the device: quicker than training's CPU draw of
    `border_datasets` datasets, and where the borders lie does not change the step's cost."""
    needed = 20 * config.model.num_buckets
    per_batch = config.data.batch_size * config.data.num_points
    draws = [draw_training_batch(prior, config, 10**6 + i, 0, device)["y"] for i in range(-(-needed // per_batch))]
    return borders_from_samples(torch.cat(draws).cpu(), config.model.num_buckets)


def build_module(config: Config, prior: Prior, device: torch.device) -> PFNModule:
    module = PFNModule(config.to_dict())
    module.head.borders.copy_(placed_borders(prior, config, device))  # so `setup` keeps them
    return module


def attempt(function: Callable[[], Any]) -> Any:
    """A diagnostic's result, or its error: a diagnostic that fails must not lose the timing beside it."""
    try:
        return function()
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {error}"}


class SyncProbe:
    """Counts host-device synchronisations (CUDA only) while active, by where they were called:
    `where` counts the calling lines, `stacks` holds the Python stack of the first few, so that a
    sync raised inside torch (the line is then torch's own) can be traced to the code that led to it."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.syncs: list[tuple[str, list[str]]] = []  # (calling line, stack)
        self._catcher: warnings.catch_warnings | None = None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" in str(message):
            frames = [frame for frame in traceback.extract_stack()[:-1] if not frame.filename.endswith("warnings.py")]
            stack = [f"{frame.filename}:{frame.lineno} {frame.name}" for frame in frames[-12:]]
            self.syncs.append((f"{filename}:{lineno}", stack))

    def start(self) -> None:
        if not self.enabled:
            return
        self.syncs = []
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record  # restored by the catcher on exit
        attempt(lambda: torch.cuda.set_sync_debug_mode("warn"))

    def stop(self, steps: int) -> dict[str, Any] | None:
        if not self.enabled or self._catcher is None:
            return None
        attempt(lambda: torch.cuda.set_sync_debug_mode("default"))
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        places: dict[str, int] = {}
        for place, _ in self.syncs:
            places[place] = places.get(place, 0) + 1
        return {
            "steps": steps,
            "syncs": len(self.syncs),
            "syncs_per_step": len(self.syncs) / steps,
            "where": places,
            "stacks": [stack for _, stack in self.syncs[:3]],
        }


def model_step_function(module: PFNModule, batches: list[dict[str, Any]], config: Config, device: torch.device):
    """One training step as Lightning runs it (bf16 autocast on CUDA), on batches drawn beforehand."""
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    use_bf16 = device.type == "cuda"  # what precision "auto" chooses
    index = 0

    def step() -> None:
        nonlocal index
        batch = batches[index % len(batches)]
        index += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = module.loss(batch)
        loss.backward()
        module.on_before_optimizer_step(optimizer)  # clipping and the non-finite guard, as in training
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def start_profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.start()
    return profiler


def summarise_profile(
    profiler: torch.profiler.profile, device: torch.device, steps: int, wall_s: float, top: int = 15
) -> dict[str, Any]:
    """Which `scaled_dot_product_attention` implementation ran (from the op names), the ops that
    took the most time, and how busy the device was: with `device_busy` far below `wall`, a step
    waits on the host (kernel launches, Python, synchronisations), not on the GPU."""
    on_gpu = device.type == "cuda"
    events = profiler.key_averages()
    names = [event.key for event in events]
    ops = {SDPA_OPS[name]: name for name in names if name in SDPA_OPS}
    kernels = [  # CUDA kernel names (not aten ops or autograd nodes)
        name[:120]
        for name in names
        if any(k in name.lower() for k in ("flash", "fmha", "attention"))
        and not name.startswith(("aten::", "autograd::"))
        and "Backward" not in name
    ]

    def self_ms(event) -> float:  # per step; device time on a GPU, host time on a CPU
        micros = getattr(event, "self_device_time_total", 0.0) if on_gpu else event.self_cpu_time_total
        return micros / 1e3 / steps

    # The device was busy for the sum of the kernels' times. (An operator's self device time is
    # the time of the kernels it launched, so summing operators too would count each twice.)
    kernels_run = [event for event in events if event.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(self_ms(event) for event in kernels_run) if on_gpu else None
    ranked = sorted(events, key=self_ms, reverse=True)[:top]

    def host_ms(event) -> float:  # per step
        return event.self_cpu_time_total / 1e3 / steps

    def listed(chosen: list, time_ms: Callable) -> list[dict[str, Any]]:
        return [
            {"name": event.key[:120], "self_ms_per_step": time_ms(event), "calls_per_step": event.count / steps}
            for event in chosen
        ]

    # A host-bound step is as long as its operators' dispatch: how many there are, and which cost most.
    operators = [event for event in events if event.key.startswith("aten::")]
    return {
        "sdpa": {"backends": sorted(ops), "ops": sorted(ops.values()), "kernels": kernels[:8]},
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3 / steps,
        "device_busy_ms_per_step": busy_ms,
        "operators_per_step": sum(event.count for event in operators) / steps,
        "top_ops": listed(ranked, self_ms),
        "top_host_ops": listed(sorted(events, key=host_ms, reverse=True)[:top], host_ms),
    }


def profile_step(step: Callable[[], None], device: torch.device, steps: int = 3) -> dict[str, Any]:
    synchronize(device)
    start = time.perf_counter()
    profiler = start_profiler(device)
    for _ in range(steps):
        step()
    synchronize(device)
    profiler.stop()
    return summarise_profile(profiler, device, steps, time.perf_counter() - start)


def probe_syncs(step: Callable[[], None], device: torch.device, steps: int) -> dict[str, Any] | None:
    probe = SyncProbe(device)
    probe.start()
    try:
        for _ in range(steps):
            step()
    finally:
        result = probe.stop(steps=steps)
    return result


def measure_model_step(config: Config, device: torch.device, warmup_s: float, seconds: float) -> dict[str, Any]:
    prior = build_prior(config.prior)
    module = build_module(config, prior, device).to(device)
    if module.speed.compile:
        compile_backbone(module)
    # The batches training sees at steps 0-7: a spread of context sizes.
    batches = [draw_training_batch(prior, config, step, 0, device) for step in range(8)]
    step = model_step_function(module, batches, config, device)
    if module.speed.compile:
        # Every context size once before timing: with dynamic shapes the first two compile
        # (static, then dynamic shapes), and the window must not include a compilation.
        for _ in batches:
            step()
    result = rates(**timed_loop(step, device, warmup_s, seconds), config=config)
    result["sync_probe"] = attempt(lambda: probe_syncs(step, device, steps=3))
    profile = attempt(lambda: profile_step(step, device))
    if isinstance(profile, dict) and "sdpa" in profile:
        result["sdpa"] = profile.pop("sdpa")
    result["profile"] = profile
    result["context_sizes"] = [batch["num_context"] for batch in batches]
    return result


def measure_prior(config: Config, device: torch.device, warmup_s: float, seconds: float) -> dict[str, Any]:
    prior = build_prior(config.prior)
    step = 0

    def draw() -> None:
        nonlocal step
        draw_training_batch(prior, config, step, 0, device)
        step += 1

    return rates(**timed_loop(draw, device, warmup_s, seconds), config=config)


def prior_kernel_matrices(config: Config, device: torch.device) -> dict[str, torch.Tensor] | None:
    """A batch of the GP prior's float64 covariance matrices at the config's size: the noise-free
    kernel matrix with the prior's jitter (what the prior factors) and the kernel matrix plus the
    noise variance (the covariance of y); None for other priors."""
    prior = build_prior(config.prior)
    if not isinstance(prior, GPPrior) or not prior.has_fixed_hyperparameters:
        return None
    data = config.data
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(data.batch_size, data.num_points, data.min_features, generator=generator, device=device)
    x = x.double()
    batch = torch.ones(data.batch_size, device=device, dtype=torch.float64)
    kernel = prior.covariance(x, prior.lengthscale * batch, prior.outputscale * batch)
    eye = torch.eye(data.num_points, device=device, dtype=torch.float64)
    return {"f_jitter": kernel + prior.jitter * eye, "y_noise": kernel + prior.noise * eye}


def cholesky_precision(config: Config, device: torch.device, repeats: int = 3) -> dict[str, Any]:
    """Time the GP prior's Cholesky factorisation in float64 (what it uses) and float32, and count
    float32 failures: for the noise-free kernel matrix (what the prior factors now) and for the
    kernel matrix plus the noise variance (the covariance of y, an alternative that skips f)."""
    matrices = prior_kernel_matrices(config, device)
    if matrices is None:
        return {"skipped": "needs a GP prior with fixed hyperparameters"}
    result: dict[str, Any] = {"num_points": config.data.num_points, "batch_size": config.data.batch_size}
    for name, matrix in matrices.items():
        for dtype in (torch.float64, torch.float32):
            key = f"{name}_{str(dtype).removeprefix('torch.')}"
            result[f"{key}_ms"], info = time_cholesky(matrix.to(dtype), device, repeats)
            result[f"{key}_failures"] = int((info > 0).sum())
    return result


def time_cholesky(matrix: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Milliseconds per batched Cholesky factorisation of `matrix`, after a warm-up (library
    handles, workspaces), and the last call's `info` (> 0 where a factorisation failed)."""
    torch.linalg.cholesky_ex(matrix)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        _, info = torch.linalg.cholesky_ex(matrix)
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / repeats, info


def linalg_libraries(config: Config, device: torch.device, repeats: int = 3, readout_size: int = 256) -> dict[str, Any]:
    """For each CUDA linear-algebra library torch can use (MAGMA, cuSOLVER): the float64 Cholesky
    of the prior's batch, and whether a linear readout's solves (Cholesky, then `cholesky_solve`
    and a triangular solve, at `readout_size`) can be captured in a CUDA graph. MAGMA's batched
    solve cannot (H100, torch 2.11), which keeps readout models off CUDA graphs. `run_throughput`
    measures it after everything else: a failed capture may leave errors behind."""
    matrices = prior_kernel_matrices(config, device)
    if device.type != "cuda" or matrices is None:
        return {"skipped": "needs a CUDA GPU and a GP prior with fixed hyperparameters"}
    matrix = matrices["f_jitter"]
    features = torch.randn(matrix.shape[0], 2 * readout_size, readout_size, device=device, dtype=torch.float64)
    gram = features.mT @ features + torch.eye(readout_size, device=device, dtype=torch.float64)
    right = torch.randn(matrix.shape[0], readout_size, 1, device=device, dtype=torch.float64)
    queries = torch.randn(matrix.shape[0], readout_size, 64, device=device, dtype=torch.float64)

    def readout_solves() -> torch.Tensor:
        factor, _ = torch.linalg.cholesky_ex(gram)
        weights = torch.cholesky_solve(right, factor)
        return weights.sum() + torch.linalg.solve_triangular(factor, queries, upper=False).sum()

    chosen = torch.backends.cuda.preferred_linalg_library()
    result: dict[str, Any] = {"default": str(chosen)}
    try:
        for library in ("cusolver", "magma"):
            torch.backends.cuda.preferred_linalg_library(library)
            entry: dict[str, Any] = {"cholesky_float64_ms": time_cholesky(matrix, device, repeats)[0]}
            expected = readout_solves()
            side = torch.cuda.Stream(device)  # warm up on a side stream before capturing, as torch advises
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                readout_solves()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    captured = readout_solves()
                graph.replay()
                synchronize(device)
                entry["readout_in_cuda_graph"] = bool(torch.isclose(captured, expected, rtol=1e-6).item())
            except Exception as error:  # noqa: BLE001
                entry["readout_in_cuda_graph"] = f"{type(error).__name__}: {str(error)[:200]}"
            result[library] = entry
    finally:
        torch.backends.cuda.preferred_linalg_library(chosen)
    return result


class ThroughputWindow(L.Callback):
    """Times training steps between two step ends: after `warmup_s` (and a few steps), for `seconds`,
    synchronising the GPU at the two edges only; then profiles `profile_steps` more steps and
    stops the run. Probes syncs during warm-up."""

    def __init__(
        self, device: torch.device, warmup_s: float, seconds: float, probe_steps: int = 3, profile_steps: int = 3
    ) -> None:
        self.device, self.warmup_s, self.seconds = device, warmup_s, seconds
        self.probe, self.probe_steps = SyncProbe(device), probe_steps
        self.profile_steps = profile_steps
        self.started = self.window_start = 0.0
        self.first_step: int | None = None
        self.result: dict[str, Any] | None = None
        self.sync_probe: dict[str, Any] | None = None
        self.profiler: torch.profiler.profile | None = None
        self.profile_start, self.profile_from = 0.0, 0
        self.profile: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 2:  # past the first steps' one-off costs
            self.probe.start()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if step == 2 + self.probe_steps:
            self.sync_probe = self.probe.stop(steps=self.probe_steps)
        if self.first_step is None:
            if step > 3 + self.probe_steps and now - self.started >= self.warmup_s:
                synchronize(self.device)
                self.first_step, self.window_start = step, time.perf_counter()
        elif self.result is None:
            if step - self.first_step >= 3 and now - self.window_start >= self.seconds:
                synchronize(self.device)
                self.result = {"steps": step - self.first_step, "seconds": time.perf_counter() - self.window_start}
                self.profile_start, self.profile_from = time.perf_counter(), step
                self.profiler = start_profiler(self.device)
        elif step - self.profile_from >= self.profile_steps:
            synchronize(self.device)
            self.profiler.stop()
            seconds = time.perf_counter() - self.profile_start
            self.profile = attempt(lambda: summarise_profile(self.profiler, self.device, self.profile_steps, seconds))
            trainer.should_stop = True


def measure_end_to_end(config: Config, device: torch.device, warmup_s: float, seconds: float) -> dict[str, Any]:
    if config.data.prefetch and device.type != "cuda":
        return {"skipped": "CUDA only: data.prefetch draws batches on a CUDA side stream"}
    prior = build_prior(config.prior)
    module = build_module(config, prior, device)
    if module.speed.compile:
        compile_backbone(module)
    window = ThroughputWindow(device, warmup_s, seconds)
    trainer = make_trainer(config, callbacks=[window])
    trainer.fit(module, datamodule=PriorDataModule(config))
    if window.result is None:
        raise RuntimeError(f"training stopped after {trainer.global_step} steps, before the timing window ended")
    result = rates(window.result["steps"], window.result["seconds"], config)
    result["precision"] = str(trainer.precision)
    result["sync_probe"] = window.sync_probe
    result["profile"] = window.profile
    return result


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info.update(attempt(lambda: gpu_info(device)))
    return info


def gpu_info(device: torch.device) -> dict[str, Any]:
    properties = torch.cuda.get_device_properties(device)
    return dict(
        gpu=properties.name,
        gpu_memory_gib=round(properties.total_memory / 2**30, 1),
        compute_capability=f"{properties.major}.{properties.minor}",
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
        mem_efficient_sdp_enabled=torch.backends.cuda.mem_efficient_sdp_enabled(),
        cudnn_sdp_enabled=torch.backends.cuda.cudnn_sdp_enabled(),
    )


def guarded(measure: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Run one measurement; an exception becomes an error entry so the other measurements go on."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = measure()
    except Exception as error:  # noqa: BLE001 - recorded, and the benchmark continues
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def summarise(name: str, preset: dict[str, Any], on_gpu: bool) -> dict[str, Any]:
    """Shares of an end-to-end step, and the figures next to the reference and targets.

    `sampling_share`: time to draw a batch / end-to-end step time (the share if nothing overlaps);
    `overhead_share`: 1 - model step alone / end-to-end step, what the step waits for besides the
    model (sampling not hidden by prefetching, Lightning's own work).
    """
    summary: dict[str, Any] = {}
    model, prior = preset.get("model_step", {}), preset.get("prior", {})
    for key in ("end_to_end", "end_to_end_prefetch"):
        end_to_end = preset.get(key, {})
        suffix = "" if key == "end_to_end" else "_prefetch"
        if "ms_per_step" in end_to_end and "ms_per_step" in prior:
            summary[f"sampling_share{suffix}"] = prior["ms_per_step"] / end_to_end["ms_per_step"]
        if "ms_per_step" in end_to_end and "ms_per_step" in model:
            summary[f"overhead_share{suffix}"] = 1 - model["ms_per_step"] / end_to_end["ms_per_step"]
    if name in REFERENCE and not preset["quick"] and on_gpu:  # the reference figures are from an H100
        for key in ("end_to_end", "end_to_end_prefetch", "model_step"):
            if "datasets_per_s" in preset.get(key, {}):
                measured = preset[key]["datasets_per_s"]
                reference_key = "end_to_end" if key == "end_to_end_prefetch" else key
                summary[f"{key}_vs_reference"] = measured / REFERENCE[name][reference_key]
                summary[f"{key}_meets_target"] = measured >= TARGETS[name][reference_key]
    return summary


def run_throughput(
    presets: list[str],
    out: Path | None = None,
    quick: bool = False,
    speed: dict[str, Any] | None = None,
    measure: list[str] | None = None,
    warmup_s: float | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Measure each preset (end to end, model step, prior; or those in `measure`); print a table;
    write JSON to `out`."""
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)} or all, got {', '.join(unknown)}")
    unknown = [m for m in measure or [] if m not in MEASUREMENTS]
    if unknown:
        raise ValueError(f"measurements must be among {', '.join(MEASUREMENTS)}, got {', '.join(unknown)}")
    warmup_s = warmup_s if warmup_s is not None else (0.2 if quick else 2.5)
    seconds = seconds if seconds is not None else (0.5 if quick else 5.0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {
        "benchmark": "train_throughput",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "settings": {"quick": quick, **(speed or {}), "warmup_s": warmup_s, "seconds": seconds},
        "environment": environment(device),
        "reference": REFERENCE,
        "targets": TARGETS,
        "presets": {},
    }

    def save() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))

    def take(name: str, key: str, measurement: Callable[[], dict[str, Any]]) -> None:
        preset = result["presets"][name]
        if measure and key not in measure:
            preset[key] = {"skipped": "not asked for (--measure)"}
            return
        print(f"[{name}] {key} ...", flush=True)
        preset[key] = guarded(measurement, device)
        save()

    with tempfile.TemporaryDirectory() as output_dir:
        configs = {}
        for name in presets:
            config = configs[name] = preset_config(name, quick=quick, output_dir=f"{output_dir}/{name}", speed=speed)
            prefetched = preset_config(
                name, quick=quick, prefetch=True, output_dir=f"{output_dir}/{name}-prefetch", speed=speed
            )
            preset: dict[str, Any] = {
                "quick": quick,
                "config": {"model": vars(config.model), "data": vars(config.data)},
                # The speed options as they ran ("auto" made concrete for this device).
                "speed": dataclasses.asdict(resolve_speed(config.train, device.type)),
            }
            result["presets"][name] = preset
            # Shortest first, so a run cut short still has something; the prior gets half the window.
            measurements = [
                ("prior", functools.partial(measure_prior, config, device, warmup_s / 3, seconds / 2)),
                ("cholesky", functools.partial(cholesky_precision, config, device)),
                ("model_step", functools.partial(measure_model_step, config, device, warmup_s / 2, seconds)),
                ("end_to_end", functools.partial(measure_end_to_end, config, device, warmup_s, seconds)),
                ("end_to_end_prefetch", functools.partial(measure_end_to_end, prefetched, device, warmup_s, seconds)),
            ]
            for key, measurement in measurements:
                take(name, key, measurement)
            preset["summary"] = summarise(name, preset, on_gpu=device.type == "cuda")
            save()
        # After every preset's timings: a failed CUDA-graph capture may leave errors behind.
        for name in presets:
            take(name, "linalg", functools.partial(linalg_libraries, configs[name], device))
    print(table(result))
    if out is not None:
        print(f"results written to {out}")
    return result


def table(result: dict[str, Any]) -> str:
    def rate(entry: dict[str, Any]) -> str:
        return f"{entry['datasets_per_s']:,.0f}" if "datasets_per_s" in entry else entry.get("skipped", "error")[:4]

    lines = [
        "| preset | end to end datasets/s | tokens/s | with prefetch | model step datasets/s | prior datasets/s "
        "| sampling share | SDPA | syncs/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, preset in result["presets"].items():
        end_to_end, model, prior = preset["end_to_end"], preset["model_step"], preset["prior"]
        share = preset["summary"].get("sampling_share")
        probe = end_to_end.get("sync_probe") or {}
        lines.append(
            f"| {name} | {rate(end_to_end)} | {end_to_end.get('tokens_per_s', float('nan')):,.0f} "
            f"| {rate(preset['end_to_end_prefetch'])} | {rate(model)} | {rate(prior)} "
            f"| {'-' if share is None else f'{share:.0%}'} "
            f"| {', '.join(model.get('sdpa', {}).get('backends', [])) or '-'} | {probe.get('syncs_per_step', '-')} |"
        )
    environment = result["environment"]
    lines.append(f"\n{environment.get('gpu', environment['device'])}, torch {environment['torch']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pfn.benchmarks.throughput", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_from_args(args)


def run_from_args(args: argparse.Namespace) -> None:
    presets = list(PRESETS) if args.preset == "all" else args.preset.split(",")
    run_throughput(
        presets,
        out=Path(args.out) if args.out else None,
        quick=args.quick,
        speed=speed_options(args),
        measure=args.measure.split(",") if args.measure else None,
        warmup_s=args.warmup,
        seconds=args.seconds,
    )


if __name__ == "__main__":
    main()
