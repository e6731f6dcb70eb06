"""Training targets with the sampling noise integrated out, for priors whose posterior predictive
is closed form (`train.exact_targets`).

A PFN's loss is the NLL of a query's target y, drawn from the prior together with the context.
Given the context and the query's x, that y is a draw from the exact posterior predictive; where
that predictive is known, the loss can be averaged over it instead of evaluated at one draw:
-sum_k P_k log q_k over the buckets (or classes) k, with P the exact predictive's mass in each.
Its expectation and its gradient's expectation are those of the usual loss (the optimum is the
same: the posterior predictive), but the draw's noise is gone (Rao-Blackwellisation), so each
training dataset teaches more. Only for the priors with an exact answer, which `pfn bench` also
uses as ground truth: the GMM prior and the GP prior with fixed hyperparameters.

And for the GP prior with hyperpriors, where the predictive given the hyperparameters each dataset
was drawn with is closed form. Its average over their posterior given the context is the Bayes
predictive, so its expected loss is still the usual one's (the optimum unchanged): the target's
noise given the hyperparameters is integrated out, their own uncertainty is not.
"""

from __future__ import annotations

import torch

from pfn.baselines.gmm_exact import gmm_posterior_predictive
from priors import GMMPrior, GPPrior, Prior


def check_exact_targets(prior: Prior) -> None:
    """A clear error unless `prior`'s posterior predictive (given its drawn hyperparameters) is closed form."""
    closed_form = prior.label_noise == 0 if isinstance(prior, GMMPrior) else isinstance(prior, GPPrior)
    if not closed_form:
        raise ValueError(
            f"train.exact_targets needs a prior with a closed-form posterior predictive (gmm without label "
            f"noise, or gp); got {prior!r}"
        )


def exact_targets(
    prior: Prior,
    x_context: torch.Tensor,
    y_context: torch.Tensor,
    x_query: torch.Tensor,
    hyperparameters: dict[str, torch.Tensor] | None = None,
    standardization: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor | torch.distributions.Normal:
    """The exact posterior predictive of each query, in the form the head's `expected_loss` takes:
    a Normal of batch shape [b, q] for a GP (on the scale the head sees), or the probability of
    each class [b, q, num_classes] for a GMM classifier.

    Shapes: x_context [b, n, f], y_context [b, n] (as drawn from the prior), x_query [b, q, f].
    hyperparameters: the GP's drawn hyperparameters (`PriorBatch.hyperparameters`), which a GP
        prior with hyperpriors needs. standardization: (loc, scale), each [b, 1], when the head's
        buckets are for (y - loc) / scale (`data.standardize_y`).
    """
    check_exact_targets(prior)
    with torch.no_grad():
        if isinstance(prior, GMMPrior):
            return gmm_posterior_predictive(x_context, y_context, x_query, prior).float()
        # The prior's own predictive, not the GPyTorch baseline: the same numbers (tested) without
        # the host-device synchronisations that would stall every GPU step.
        predictive = prior.posterior_predictive(x_context, y_context, x_query, hyperparameters)
        if standardization is not None:
            loc, scale = (t.double() for t in standardization)
            predictive = torch.distributions.Normal((predictive.loc - loc) / scale, predictive.scale / scale)
        return predictive
