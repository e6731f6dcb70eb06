"""Prior-data fitted networks: transformers trained on prior samples that do Bayesian inference.

import pfn
model = pfn.load("gp")
distribution = model.predict(x_context, y_context, x_query)
distribution.mean, distribution.icdf(0.95), distribution.log_prob(y_query)

or, scikit-learn style: pfn.PFNRegressor().fit(X, y).predict(X_new); pfn.list_models()
"""

__version__ = "0.1.0"

from pfn.checkpoint import CheckpointError  # noqa: E402
from pfn.distributions import RiemannDistribution, RiemannMixture  # noqa: E402
from pfn.predictor import PFN, load  # noqa: E402
from pfn.zoo import ModelCard, list_models, model_card  # noqa: E402

__all__ = [
    "PFN",
    "CheckpointError",
    "ModelCard",
    "PFNClassifier",
    "PFNRegressor",
    "RiemannDistribution",
    "RiemannMixture",
    "list_models",
    "load",
    "model_card",
    "__version__",
]


def __getattr__(name: str):
    # The scikit-learn estimators are imported on first use: scikit-learn adds over a second
    # to `import pfn`, which the command line and the training workers do not need.
    if name in ("PFNRegressor", "PFNClassifier"):
        from pfn import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'pfn' has no attribute {name!r}")
