"""Per-dataset standardisation of targets by the context alone, shared by training and prediction.

A query's prediction may depend only on the context and itself, so the location and scale of
each dataset come from its context points: their mean and standard deviation. Where the context
cannot define a scale (fewer than two points, or all equal) the scale is 1; an empty context
leaves y as it is.
"""

from __future__ import annotations

import torch


def context_standardization(y_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale), each [batch, 1], such that (y - loc) / scale standardises every dataset of
    `y_context` [batch, n] by its own context."""
    batch, num_context = y_context.shape
    loc = y_context.new_zeros(batch, 1)
    scale = y_context.new_ones(batch, 1)
    if num_context > 0:
        loc = y_context.mean(1, keepdim=True)
    if num_context > 1:
        std = y_context.std(1, keepdim=True)
        scale = torch.where(std > 0, std, scale)
    return loc, scale
