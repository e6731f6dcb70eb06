"""Ground-truth and classical baselines, run on the same datasets as the PFN."""

from pfn.baselines.exact_gp import exact_gp_predictive

__all__ = ["exact_gp_predictive"]
