"""Test-time ensembles over the symmetries of a prior.

Under the GMM prior (priors/gmm.py: class means ~ N(0, Sigma / kappa0), Sigma ~ InvWishart with an
isotropic scale, class ids permuted at random) the probability of a dataset does not change when
its inputs are rotated about the origin or its class ids are relabelled, so neither does the exact
posterior predictive: rotating the data and relabelling the classes, predicting, and mapping the
labels back is another estimate of the same distribution. A network is only approximately
invariant, and averaging its predictions over such views cancels part of its error (TabPFN averages
over feature orders and label ids the same way; a rotation contains those feature orders and more).

Under the GP prior (priors/gp.py: inputs uniform in a cube, an isotropic stationary kernel) the same
holds for the symmetries of the cube: permuting the features and reflecting any of them about the
cube's centre. (Every rigid motion leaves the GP's posterior alone, but only these keep the inputs
where the network saw them in training.) And under the BNN prior (priors/bnn.py: inputs uniform in
the unit cube, centred before the first layer, whose weights are independent standard normals):
a reordered and reflected input is the same network with the first layer's rows reordered and
negated, a weight matrix exactly as probable.
"""

from __future__ import annotations

import math

import einops
import torch

from pfn.distributions import CategoricalDistribution, RiemannDistribution, RiemannMixture
from pfn.predictor import PFN
from priors import BNNPrior, GMMPrior, GPPrior, MinMaxPrior, MixturePrior, Prior, build_prior


def has_cube_symmetries(prior: Prior) -> bool:
    """Whether reordering a dataset's features and reflecting any of them leaves its probability
    under `prior` alone (see the module docstring): true of the GP, BNN and GMM priors (for the
    GMM a reflection is one of its rotations), of mixtures of such priors, and of them min-max
    scaled (scaling commutes with reordering and reflecting); not of learning curves, whose one
    input is time."""
    if isinstance(prior, MixturePrior):
        return all(has_cube_symmetries(component) for component in prior.components)
    if isinstance(prior, MinMaxPrior):
        return has_cube_symmetries(prior.prior)
    return isinstance(prior, GPPrior | BNNPrior | GMMPrior)


def random_rotations(batch_size: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, f, f] orthogonal matrices, uniform (Haar) on O(f): QR of a Gaussian matrix with the
    signs of R's diagonal moved into Q (without that fix Q is not uniform)."""
    gaussian = torch.randn(batch_size, num_features, num_features, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.diagonal(r, dim1=-2, dim2=-1).sign()[:, None, :]


def cube_symmetries(
    batch_size: int, num_features: int, generator: torch.Generator, exclude_identity: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random symmetries of a cube, uniform over its 2^f f! of them (or over all but the identity):
    a feature order [batch, f] and which features to reflect [batch, f] (bool)."""
    order = torch.rand(batch_size, num_features, generator=generator).argsort(-1)
    reflect = torch.rand(batch_size, num_features, generator=generator) < 0.5
    while exclude_identity:
        identity = (order == torch.arange(num_features)).all(-1) & ~reflect.any(-1)
        if not identity.any():
            break
        redrawn = cube_symmetries(int(identity.sum()), num_features, generator)
        order[identity], reflect[identity] = redrawn
    return order, reflect


def cube_view_plan(
    batch_size: int, num_features: int, num_views: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`num_views` symmetries of the cube per dataset (each as `cube_symmetries` gives them), the
    identity first: each dataset runs through all 2^f f! of them in its own random order before
    any repeats, so an ensemble over the views weighs every distinct one equally where it can.
    (Drawn independently, 8 views of one feature would be the data once and its reflection 7 times.)"""
    group_size = 2**num_features * math.factorial(num_features)
    identity = (
        torch.arange(num_features).expand(batch_size, -1),
        torch.zeros(batch_size, num_features, dtype=torch.bool),
    )
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index in range(num_views):
        if index % group_size == 0:
            views.append(identity)
            continue
        order, reflect = cube_symmetries(batch_size, num_features, generator, exclude_identity=True)
        this_round = views[index - index % group_size + 1 :]  # the identity is never drawn
        while True:
            seen = torch.zeros(batch_size, dtype=torch.bool)
            for earlier_order, earlier_reflect in this_round:
                seen |= (order == earlier_order).all(-1) & (reflect == earlier_reflect).all(-1)
            if not seen.any():
                break
            order[seen], reflect[seen] = cube_symmetries(
                int(seen.sum()), num_features, generator, exclude_identity=True
            )
        views.append((order, reflect))
    return views


def cube_view(
    x: torch.Tensor, order: torch.Tensor, reflect: torch.Tensor, x_range: tuple[float, float]
) -> torch.Tensor:
    """x [batch, n, f] with its features in `order` [batch, f] and those marked in `reflect`
    [batch, f] reflected about the centre of the cube [low, high]^f."""
    low, high = x_range
    reordered = x.gather(-1, einops.repeat(order, "b f -> b n f", n=x.shape[1]))
    return torch.where(reflect[:, None, :], low + high - reordered, reordered)


def symmetry_ensemble(
    model: PFN,
    x_context: torch.Tensor,
    y_context: torch.Tensor,
    x_query: torch.Tensor,
    num_members: int,
    generator: torch.Generator,
) -> CategoricalDistribution | RiemannDistribution | RiemannMixture:
    """The model's predictive averaged over `num_members` views of each dataset (an equal-weight
    mixture); member 0 is the data as given, every other one a random symmetry of the prior: for
    a GMM classifier a rotation of the inputs with random class ids, for a GP or BNN regressor a
    symmetry of the input cube (features reordered and reflected; all 2^f f! of them, in a random
    order per dataset, before any repeats: `cube_view_plan`). A regressor with a linear
    readout places each view's buckets around that view's location and scale, so its ensemble
    is a `RiemannMixture`; any other's members share their borders and mix into one bar
    distribution.

    Args:
        x_context, y_context, x_query: [batch, n, f], [batch, n], [batch, q, f], in the prior's
            units (as drawn from it: the symmetries are the prior's, not the data's).
        num_members: ensemble size, >= 1.
        generator: the source of the views.
    """
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    prior = build_prior(model.prior_spec)
    if model.is_classifier and isinstance(prior, GMMPrior):
        return _gmm_ensemble(model, prior, x_context, y_context, x_query, num_members, generator)
    scaling = prior.input_scaling() if not model.is_classifier and has_cube_symmetries(prior) else None
    if scaling is not None and scaling.kind == "range":
        return _cube_ensemble(model, (scaling.low, scaling.high), x_context, y_context, x_query, num_members, generator)
    raise ValueError(
        "symmetry ensembles need a classifier of a GMM prior or a regressor of a GP or BNN prior (or a "
        f"mixture of them: the priors here whose symmetries are known); this model's prior is {model.prior_spec}"
    )


def _cube_ensemble(
    model: PFN,
    x_range: tuple[float, float],
    x_context: torch.Tensor,
    y_context: torch.Tensor,
    x_query: torch.Tensor,
    num_members: int,
    generator: torch.Generator,
) -> RiemannDistribution | RiemannMixture:
    members = [model.predict(x_context, y_context, x_query, normalize=False)]
    for symmetries in cube_view_plan(x_context.shape[0], x_context.shape[-1], num_members, generator)[1:]:
        order, reflect = (t.to(x_context.device) for t in symmetries)
        x_context_view, x_query_view = (cube_view(x, order, reflect, x_range) for x in (x_context, x_query))
        members.append(model.predict(x_context_view, y_context, x_query_view, normalize=False))
    # y is the same in every view, and so is its standardisation (data.standardize_y): without a
    # linear readout the members share their borders.
    return RiemannDistribution.mixture(members)


def _gmm_ensemble(
    model: PFN,
    prior: GMMPrior,
    x_context: torch.Tensor,
    y_context: torch.Tensor,
    x_query: torch.Tensor,
    num_members: int,
    generator: torch.Generator,
) -> CategoricalDistribution:
    if not prior.permute_classes:
        raise ValueError(
            "this model's prior keeps class ids in order (permute_classes: false), so relabelling is no symmetry"
        )
    batch_size, num_features = x_context.shape[0], x_context.shape[-1]
    # The prior's ids are 0..max_classes-1; a head with more outputs keeps the others where they are.
    num_ids, num_outputs = prior.max_classes, model.config.model.num_classes
    unused_ids = einops.repeat(torch.arange(num_ids, num_outputs), "c -> b c", b=batch_size)
    members = [model.predict(x_context, y_context, x_query, normalize=False)]
    for _ in range(num_members - 1):
        rotation = random_rotations(batch_size, num_features, generator).to(x_context)
        relabelling = torch.rand(batch_size, num_ids, generator=generator).argsort(-1)
        new_id = torch.cat([relabelling, unused_ids], dim=1).to(y_context.device)  # [batch, outputs]: old -> new id
        predictive = model.predict(
            x_context @ rotation, new_id.gather(1, y_context.long()), x_query @ rotation, normalize=False
        )
        # Class k of the original labelling is class new_id[k] of this view.
        lookup = einops.repeat(new_id, "b c -> b q c", q=x_query.shape[1]).to(predictive.logits.device)
        members.append(CategoricalDistribution(predictive.log_probs.gather(-1, lookup)))
    return CategoricalDistribution.mixture(members)
