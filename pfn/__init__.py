"""Prior-data fitted networks: transformers trained on prior samples that do Bayesian inference."""

__version__ = "0.1.0"
