"""Bayesian-neural-network prior: each dataset is a random MLP plus Gaussian noise.

Per dataset:

    depth  ~ U{min_depth..max_depth}        hidden layers
    width  ~ U{min_width..max_width}        units in every hidden layer
    act    ~ U(activations)                 "tanh" or "relu"
    s_w    ~ weight_scale hyperprior,  s_b ~ bias_scale hyperprior,  sigma ~ noise_std hyperprior
    x      ~ U[0, 1]^features               (the range `predict` maps every context to)
    h_0 = sqrt(12) (x - 1/2)                (inputs of zero mean and unit variance)
    h_l = act(gain * s_w / sqrt(fan_in) * h_{l-1} W_l + s_b * b_l),  l = 1..depth
    f   = h_depth v / sqrt(width);          y = f + sigma * eps

with every raw weight W_l, b_l, v and eps standard normal (a non-centred parametrisation) and
gain = sqrt(2) for relu, 1 for tanh, so the hidden units keep roughly unit scale whatever the
depth and activation; with the 1/sqrt(width) read-out, f has roughly unit scale as well (the
median dataset's standard deviation is about 0.4; deep relu networks with a large s_w reach
|y| of 10 in about 1 draw in 1000).

Datasets of different depth and width are drawn together by padding every network to
`max_depth` layers of `max_width` units: units beyond a dataset's width are zeroed after the
activation, and layers beyond its depth pass their input through. The padded raw weights are
still drawn from the prior but never touch the output, so this is the same distribution as
drawing each network at its own size, and it is exactly the model that the NUTS baseline
(`pfn/baselines/nuts.py`) samples from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from priors.base import Prior, PriorBatch, register_prior
from priors.hyperpriors import Hyperparameter, check_hyperparameter, sample_hyperparameter

ACTIVATIONS = ("tanh", "relu")
# Weight gain per activation that keeps E[h^2] roughly constant through the layers.
GAINS = {"tanh": 1.0, "relu": math.sqrt(2.0)}
DEFAULT_WEIGHT_SCALE = {"distribution": "lognormal", "loc": 0.0, "scale": 0.3}
DEFAULT_NOISE_STD = {"distribution": "lognormal", "loc": -3.0, "scale": 1.0}


@dataclass
class BNNParameters:
    """One padded MLP per dataset (b datasets, F features, W = max_width, L = max_depth)."""

    depth: torch.Tensor  # [b] int, hidden layers in use
    width: torch.Tensor  # [b] int, units in use per hidden layer
    activation: torch.Tensor  # [b] int, index into the prior's `activations`
    weight_scale: torch.Tensor  # [b]
    bias_scale: torch.Tensor  # [b]
    noise_std: torch.Tensor  # [b]
    weights: list[torch.Tensor]  # L raw weights: [b, F, W], then [b, W, W]
    biases: list[torch.Tensor]  # L raw biases: [b, W]
    readout: torch.Tensor  # [b, W] raw output weights


@register_prior("bnn")
class BNNPrior(Prior):
    """Regression datasets from random MLPs with Gaussian weights (see the module docstring).

    Args:
        min_depth, max_depth: range of the number of hidden layers (min_depth >= 1).
        min_width, max_width: range of the number of units per hidden layer.
        activations: the activations drawn from uniformly, a subset of "tanh", "relu".
        weight_scale: s_w, a number or a hyperprior drawn per dataset; default lognormal(0, 0.3)
            (median 1, 95% in [0.55, 1.8]), wide enough for varied functions while deep relu
            networks, whose scale grows like s_w^depth, keep |y| mostly below 10.
        bias_scale: s_b, the standard deviation of the biases; number or hyperprior.
        noise_std: sigma, the standard deviation of the observation noise; number or hyperprior;
            default lognormal(-3, 1), median 0.05.
    """

    def __init__(
        self,
        min_depth: int = 1,
        max_depth: int = 3,
        min_width: int = 5,
        max_width: int = 64,
        activations: Sequence[str] = ACTIVATIONS,
        weight_scale: Hyperparameter | None = None,
        bias_scale: Hyperparameter = 1.0,
        noise_std: Hyperparameter | None = None,
    ) -> None:
        weight_scale = dict(DEFAULT_WEIGHT_SCALE) if weight_scale is None else weight_scale
        noise_std = dict(DEFAULT_NOISE_STD) if noise_std is None else noise_std
        for name, value in (("min_depth", min_depth), ("max_depth", max_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("min_width", min_width), ("max_width", max_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if min_depth > max_depth:
            raise ValueError(f"need min_depth <= max_depth, got {min_depth} > {max_depth}")
        if min_width > max_width:
            raise ValueError(f"need min_width <= max_width, got {min_width} > {max_width}")
        activations = [activations] if isinstance(activations, str) else list(activations)
        if (
            not activations
            or any(a not in ACTIVATIONS for a in activations)
            or len(set(activations)) < len(activations)
        ):
            raise ValueError(f"activations must be distinct names among {list(ACTIVATIONS)}, got {activations!r}")
        check_hyperparameter("weight_scale", weight_scale)
        check_hyperparameter("bias_scale", bias_scale)
        check_hyperparameter("noise_std", noise_std)
        super().__init__(
            min_depth=min_depth,
            max_depth=max_depth,
            min_width=min_width,
            max_width=max_width,
            activations=activations,
            weight_scale=weight_scale,
            bias_scale=bias_scale,
            noise_std=noise_std,
        )
        self.min_depth, self.max_depth = min_depth, max_depth
        self.min_width, self.max_width = min_width, max_width
        self.activations = activations
        self.weight_scale, self.bias_scale, self.noise_std = weight_scale, bias_scale, noise_std

    def sample_parameters(
        self,
        batch_size: int,
        num_features: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> BNNParameters:
        """Architecture, scales and raw weights of `batch_size` networks."""
        b, width = batch_size, self.max_width

        def integers(low: int, high: int) -> torch.Tensor:  # uniform on low..high inclusive, [b]
            return torch.randint(low, high + 1, (b,), generator=generator, device=device)

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(b, *shape, generator=generator, device=device)

        depth = integers(self.min_depth, self.max_depth)
        widths = integers(self.min_width, self.max_width)
        activation = integers(0, len(self.activations) - 1)
        scales = [
            sample_hyperparameter(value, b, generator, device, torch.float32)
            for value in (self.weight_scale, self.bias_scale, self.noise_std)
        ]
        weights = [normal(num_features if layer == 0 else width, width) for layer in range(self.max_depth)]
        biases = [normal(width) for _ in range(self.max_depth)]
        return BNNParameters(depth, widths, activation, *scales, weights=weights, biases=biases, readout=normal(width))

    def forward(self, x: torch.Tensor, params: BNNParameters) -> torch.Tensor:
        """The noiseless function values f(x) of each dataset's network: x [b, n, F] -> [b, n]."""
        units = torch.arange(self.max_width, device=x.device)
        in_use = (units < params.width[:, None]).to(x.dtype)[:, None, :]  # [b, 1, W]
        gain = torch.tensor([GAINS[a] for a in self.activations], device=x.device, dtype=x.dtype)[params.activation]
        is_relu = torch.tensor([a == "relu" for a in self.activations], device=x.device)[params.activation]
        h = math.sqrt(12.0) * (x - 0.5)
        for layer, (weight, bias) in enumerate(zip(params.weights, params.biases, strict=True)):
            fan_in = torch.full_like(params.weight_scale, x.shape[-1]) if layer == 0 else params.width.to(x.dtype)
            scale = gain * params.weight_scale / fan_in.sqrt()
            pre = scale[:, None, None] * (h @ weight.to(x.dtype)) + (params.bias_scale[:, None] * bias)[:, None, :]
            out = torch.where(is_relu[:, None, None], pre.relu(), pre.tanh()) * in_use
            # Layer 0 always runs (min_depth >= 1); deeper layers pass h through beyond `depth`.
            h = out if layer == 0 else torch.where((layer < params.depth)[:, None, None], out, h)
        readout = params.readout.to(x.dtype) / params.width.to(x.dtype).sqrt()[:, None]
        return (h * (readout[:, None, :] * in_use)).sum(-1)

    def sample(self, batch_size, num_points, num_features, generator, device="cpu") -> PriorBatch:
        params = self.sample_parameters(batch_size, num_features, generator, device)
        x = torch.rand(batch_size, num_points, num_features, generator=generator, device=device)
        f = self.forward(x, params)
        eps = torch.randn(batch_size, num_points, generator=generator, device=device)
        return PriorBatch(x=x, y=f + params.noise_std[:, None] * eps, y_noiseless=f)
