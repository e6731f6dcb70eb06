"""Prior samplers: each draws whole batches of synthetic datasets on a device.

Importing this package registers the built-in priors, so `build_prior({"name": "gp", ...})`
finds them. This package never imports `pfn`.
"""

from priors.base import InputScaling, Prior, PriorBatch, available_priors, build_prior, register_prior
from priors.bnn import BNNPrior
from priors.gmm import GMMPrior
from priors.gp import GPPrior
from priors.lc import LearningCurvePrior
from priors.minmax import MinMaxPrior
from priors.mixture import MixturePrior

__all__ = [
    "BNNPrior",
    "GMMPrior",
    "GPPrior",
    "InputScaling",
    "LearningCurvePrior",
    "MinMaxPrior",
    "MixturePrior",
    "Prior",
    "PriorBatch",
    "available_priors",
    "build_prior",
    "register_prior",
]
