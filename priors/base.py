"""The prior interface: a prior draws whole batches of datasets, and is found by name.

A prior is a plain object whose constructor takes its hyperparameters as keyword arguments and
whose `sample` method draws a batch of datasets on a device from a `torch.Generator`. Configs
name priors through `spec`s such as ``{"name": "gp", "lengthscale": 0.6}``; `build_prior`
turns a spec into an instance and every prior can give its spec back (`prior.spec`), so a
checkpoint can carry the exact prior it was trained on.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PriorBatch:
    """A batch of datasets.

    x: [batch, points, features] inputs.
    y: [batch, points] noisy targets (what a model is trained to predict).
    y_noiseless: [batch, points] the latent function values, where the prior has them.
    hyperparameters: name -> [batch] the values each dataset was drawn with, where the prior has
        them (GP: lengthscale, outputscale, noise), so that what depends on them can be computed
        exactly (the GP posterior given them: `train.exact_targets` under hyperpriors).
    """

    x: torch.Tensor
    y: torch.Tensor
    y_noiseless: torch.Tensor | None = None
    hyperparameters: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"PriorBatch.x must be [batch, points, features], got {tuple(self.x.shape)}")
        if self.y.shape != self.x.shape[:2]:
            raise ValueError(
                f"PriorBatch.y must be [batch, points] = {tuple(self.x.shape[:2])}, got {tuple(self.y.shape)}"
            )
        if self.y_noiseless is not None and self.y_noiseless.shape != self.y.shape:
            raise ValueError("PriorBatch.y_noiseless must have the same shape as y")
        for name, values in (self.hyperparameters or {}).items():
            if values.shape != self.x.shape[:1]:
                raise ValueError(f"PriorBatch.hyperparameters[{name!r}] must be [batch], got {tuple(values.shape)}")


@dataclass(frozen=True)
class InputScaling:
    """How `PFN.predict` maps each feature of a real dataset into a prior's units, from the context alone.

    kind "range": an affine map per feature so the context spans [low, high]; for priors whose
        inputs fill a box (the default: the unit cube).
    kind "standardize": each feature centred on the context's mean and scaled so the context's
        standard deviation is `spread`; for priors whose inputs lie about the origin with a typical
        spread rather than in a box (the GMM prior). Squeezing such data into a box would show the
        network clusters far closer together than any it was trained on.
    """

    kind: str = "range"
    low: float = 0.0
    high: float = 1.0
    spread: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("range", "standardize"):
            raise ValueError(f"InputScaling.kind must be 'range' or 'standardize', got {self.kind!r}")
        if not self.low < self.high or not self.spread > 0:
            raise ValueError(f"InputScaling needs low < high and spread > 0, got {self}")


class Prior:
    """Base class of all priors. Subclasses set `name` and implement `sample`; one whose inputs
    are not spread over the unit cube also says how real inputs map into its units (`input_scaling`)."""

    name: str = ""

    def __init__(self, **hyperparameters: Any) -> None:
        self._hyperparameters = hyperparameters

    @property
    def spec(self) -> dict[str, Any]:
        """The JSON-serialisable spec that `build_prior` turns back into this prior."""
        return {"name": self.name, **self._hyperparameters}

    def sample(
        self,
        batch_size: int,
        num_points: int,
        num_features: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> PriorBatch:
        raise NotImplementedError

    def input_scaling(self) -> InputScaling:
        """How a real dataset's inputs are mapped into this prior's units before prediction."""
        return InputScaling()

    def output_scaling(
        self, x_context: torch.Tensor, y_context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """How a real dataset's targets are mapped into this prior's units: (loc, scale), each
        [batch, 1], with y -> (y - loc) / scale, from the context (x_context [batch, n, f], already
        in the prior's units, and y_context [batch, n], n >= 1). None, the default, leaves it to the
        predictor: standardise by the context's mean and standard deviation. A prior that fixes
        the scale of its targets (a GP with a fixed outputscale) can do far better."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self._hyperparameters.items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Prior]] = {}


def register_prior(name: str) -> Callable[[type[Prior]], type[Prior]]:
    """Class decorator that makes a prior available to configs under `name`."""

    def decorate(cls: type[Prior]) -> type[Prior]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a prior named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_priors() -> list[str]:
    return sorted(_REGISTRY)


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_prior(spec: dict[str, Any] | Prior) -> Prior:
    """Build a prior from a spec ``{"name": ..., **hyperparameters}``.

    Unknown names and unknown hyperparameters raise errors that list what is accepted.
    """
    if isinstance(spec, Prior):
        return spec
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a prior spec must be a mapping with a 'name' key, got {spec!r}")
    name = spec["name"]
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown prior {name!r}{_did_you_mean(str(name), available_priors())}; "
            f"available priors: {', '.join(available_priors())}"
        )
    cls = _REGISTRY[name]
    kwargs = {key: value for key, value in spec.items() if key != "name"}
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"prior {name!r} has no hyperparameter {key!r}{_did_you_mean(key, accepted)}; "
                f"accepted: {', '.join(accepted)}"
            )
    return cls(**kwargs)
