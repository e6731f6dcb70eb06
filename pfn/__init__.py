"""Prior-data fitted networks: transformers trained on prior samples that do Bayesian inference.

import pfn
model = pfn.load("gp")
distribution = model.predict(x_context, y_context, x_query)
distribution.mean, distribution.icdf(0.95), distribution.log_prob(y_query)
"""

__version__ = "0.1.0"

from pfn.checkpoint import CheckpointError  # noqa: E402
from pfn.distributions import RiemannDistribution  # noqa: E402
from pfn.predictor import PFN, load  # noqa: E402

__all__ = ["PFN", "CheckpointError", "RiemannDistribution", "load", "__version__"]
