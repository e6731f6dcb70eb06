"""Build the backbone and the head that a model config describes (for training and loading alike)."""

from __future__ import annotations

import torch

from pfn.config import ModelConfig
from pfn.heads import CategoricalHead, LocationScaleHead, RiemannHead, readout_borders
from pfn.model import PFNTransformer


def build_backbone(model: ModelConfig) -> PFNTransformer:
    classification = model.head == "categorical"
    return PFNTransformer(
        max_features=model.max_features,
        num_outputs=model.num_classes if classification else model.num_buckets,
        emsize=model.emsize,
        nlayers=model.nlayers,
        nhead=model.nhead,
        nhid=model.nhid,
        dropout=model.dropout,
        num_classes=model.num_classes if classification else None,
        learned_temperature=model.learned_temperature,
        x_encoder=model.x_encoder,
        linear_readout=model.linear_readout,
        readout_evidence=model.readout_evidence,
        readout_input_scale=model.readout_input_scale,
    )


def build_head(
    model: ModelConfig, borders: torch.Tensor | None = None
) -> RiemannHead | LocationScaleHead | CategoricalHead:
    """The head; a Riemann head built without `borders` gets placeholders for a checkpoint to fill."""
    if model.head == "categorical":
        return CategoricalHead(model.num_classes)
    if model.linear_readout:
        # Buckets over z = (y - loc) / scale: fixed, not placed from the prior.
        if borders is None:
            borders = readout_borders(model.num_buckets, model.readout_tail_dof)
        return LocationScaleHead(borders)
    if borders is None:
        borders = torch.zeros(model.num_buckets + 1)
    return RiemannHead(borders)
