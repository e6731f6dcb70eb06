"""Hyperparameters that are either fixed numbers or drawn per dataset from a hyperprior.

In a config a hyperparameter is written either as a number (``lengthscale: 0.6``) or as a
distribution (``lengthscale: {distribution: gamma, concentration: 3.0, rate: 6.0}``).
All draws take an explicit `torch.Generator`, so the same seed gives the same values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

Hyperparameter = float | dict[str, Any]

_DISTRIBUTIONS = {
    "gamma": ("concentration", "rate"),
    "uniform": ("low", "high"),
    "lognormal": ("loc", "scale"),
}


def check_hyperparameter(name: str, value: Hyperparameter, positive: bool = True) -> None:
    """Raise a clear error for a malformed hyperparameter; called by priors' constructors."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or a hyperprior mapping, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(f"{name} must be a finite {'positive ' if positive else ''}number, got {value!r}")
        return
    if not isinstance(value, dict) or "distribution" not in value:
        raise ValueError(
            f"{name} must be a number or a mapping like "
            f"{{distribution: gamma, concentration: 3.0, rate: 6.0}}, got {value!r}"
        )
    kind = value["distribution"]
    if kind not in _DISTRIBUTIONS:
        raise ValueError(f"{name}: unknown distribution {kind!r}; known: {', '.join(_DISTRIBUTIONS)}")
    expected = set(_DISTRIBUTIONS[kind])
    given = set(value) - {"distribution"}
    if given != expected:
        raise ValueError(f"{name}: a {kind} hyperprior takes exactly {sorted(expected)}, got {sorted(given)}")
    for key in expected:
        if not isinstance(value[key], (int, float)) or not math.isfinite(value[key]):
            raise ValueError(f"{name}: {key} must be a finite number, got {value[key]!r}")
    if kind == "gamma" and (value["concentration"] <= 0 or value["rate"] <= 0):
        raise ValueError(f"{name}: gamma concentration and rate must be positive")
    if kind == "uniform" and not value["low"] < value["high"]:
        raise ValueError(f"{name}: uniform needs low < high")
    if kind == "uniform" and positive and value["low"] < 0:
        raise ValueError(f"{name}: uniform low must be >= 0 for a positive hyperparameter")
    if kind == "lognormal" and value["scale"] <= 0:
        raise ValueError(f"{name}: lognormal scale must be positive")


def sample_hyperparameter(
    value: Hyperparameter,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """One value per dataset: [batch_size]."""
    if isinstance(value, (int, float)):
        return torch.full((batch_size,), float(value), device=device, dtype=dtype)
    kind = value["distribution"]
    if kind == "gamma":
        concentration = torch.full((batch_size,), float(value["concentration"]), device=device, dtype=dtype)
        # torch.distributions cannot take a generator; the underlying gamma sampler can.
        return torch._standard_gamma(concentration, generator=generator) / value["rate"]
    if kind == "uniform":
        unit = torch.rand(batch_size, generator=generator, device=device, dtype=dtype)
        return value["low"] + (value["high"] - value["low"]) * unit
    if kind == "lognormal":
        normal = torch.randn(batch_size, generator=generator, device=device, dtype=dtype)
        return torch.exp(value["loc"] + value["scale"] * normal)
    raise ValueError(f"unknown hyperprior distribution {kind!r}")
