"""`pfn bench`: a PFN side by side with the exact Bayesian answer on held-out prior datasets."""
