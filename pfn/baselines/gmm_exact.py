"""The exact posterior predictive of the GMM classification prior (`priors.gmm.GMMPrior`).

Given the context, p(y = c | x, D) is proportional to p(y = c | labels of D) * t_c(x):
- t_c is the Normal-Inverse-Wishart posterior predictive of class c, a multivariate Student-t
  (the prior predictive for a class not seen in the context);
- p(y = c | labels) is the Dirichlet-multinomial predictive, averaged over the posterior of the
  number of classes K (and, with permuted class ids, over which ids are active).
Everything is closed form; computed in float64.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from priors.gmm import GMMPrior


def class_statistics(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per class: counts [b, C], means [b, C, d] and scatter matrices [b, C, d, d]."""
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(x.dtype)  # [b, n, C]
    counts = one_hot.sum(1)
    means = (rearrange(one_hot, "b n c -> b c n") @ x) / counts.clamp_min(1)[..., None]
    outer = torch.einsum("bnc,bni,bnj->bcij", one_hot, x, x)
    scatter = outer - counts[..., None, None] * means[..., :, None] * means[..., None, :]
    return counts, means, scatter


def student_t_log_density(
    x_query: torch.Tensor, x_context: torch.Tensor, labels: torch.Tensor, prior: GMMPrior
) -> torch.Tensor:
    """log t_c(x) for every query and class id: [b, q, C]."""
    d = x_context.shape[-1]
    counts, means, scatter = class_statistics(x_context, labels, prior.max_classes)
    kappa_n = prior.kappa0 + counts  # [b, C]
    nu_n = d + prior.dof_offset + counts
    mu_n = counts[..., None] * means / kappa_n[..., None]  # prior mean is 0
    shrink = (prior.kappa0 * counts / kappa_n)[..., None, None]
    eye = torch.eye(d, dtype=x_context.dtype, device=x_context.device)
    psi_n = prior.psi0 * eye + scatter + shrink * means[..., :, None] * means[..., None, :]
    dof = nu_n - d + 1
    shape = psi_n * ((kappa_n + 1) / (kappa_n * dof))[..., None, None]
    tril = torch.linalg.cholesky(shape)  # [b, C, d, d]
    diff = x_query[:, :, None, :] - mu_n[:, None]  # [b, q, C, d]
    solved = torch.linalg.solve_triangular(tril[:, None], diff[..., None], upper=False).squeeze(-1)
    mahalanobis = (solved**2).sum(-1)  # [b, q, C]
    log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)[:, None]  # [b, 1, C]
    dof = dof[:, None]
    return (
        torch.lgamma((dof + d) / 2)
        - torch.lgamma(dof / 2)
        - d / 2 * torch.log(dof * math.pi)
        - log_det / 2
        - (dof + d) / 2 * torch.log1p(mahalanobis / dof)
    )


def _log_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def label_log_predictive(labels: torch.Tensor, prior: GMMPrior) -> torch.Tensor:
    """log p(y = c | context labels) for each class id, averaged over K: [b, C]."""
    C, alpha = prior.max_classes, prior.concentration
    batch, n = labels.shape
    counts = torch.nn.functional.one_hot(labels.long(), C).sum(1).to(torch.float64)  # [b, C]
    seen = counts > 0
    num_seen = seen.sum(-1, keepdim=True).double()  # m
    K = torch.arange(prior.min_classes, C + 1, dtype=torch.float64, device=labels.device)  # [k]
    log_weight = torch.lgamma(K * alpha) - torch.lgamma(n + K * alpha)  # uniform p(K)
    if prior.permute_classes:
        # P(the m seen ids are among the K active ids) = C(C-m, K-m) / C(C, K)
        total = torch.tensor(float(C), dtype=torch.float64)
        within = _log_binomial(total - num_seen, (K - num_seen).clamp_min(0)) - _log_binomial(total, K)
        log_weight = torch.where(K >= num_seen, log_weight + within, -math.inf)
    else:
        largest = torch.where(seen, torch.arange(C, device=labels.device), -1).amax(-1, keepdim=True)
        log_weight = torch.where(K > largest, log_weight, -math.inf)
    posterior_K = torch.softmax(log_weight, dim=-1)  # [b, k]
    per_K = (counts[:, None, :] + alpha) / (n + K[None, :, None] * alpha)  # [b, k, C] for seen or active ids
    if prior.permute_classes:
        unseen = alpha / (n + K * alpha) * (K - num_seen).clamp_min(0) / (C - num_seen).clamp_min(1)  # [b, k]
        per_K = torch.where(seen[:, None, :], per_K, unseen[..., None])
    else:
        active = torch.arange(C, device=labels.device)[None, None, :] < K[None, :, None]
        per_K = torch.where(active, per_K, torch.zeros_like(per_K))
    return torch.log((posterior_K[..., None] * per_K).sum(1))


def gmm_posterior_predictive(
    x_context: torch.Tensor, labels: torch.Tensor, x_query: torch.Tensor, prior: GMMPrior
) -> torch.Tensor:
    """Class probabilities of each query point under the exact posterior: [b, q, C].

    Shapes: x_context [b, n, d], labels [b, n] (ids 0..max_classes-1), x_query [b, q, d].
    """
    if not isinstance(prior, GMMPrior):
        raise ValueError(f"the exact GMM posterior needs a GMMPrior, got {type(prior).__name__}")
    if prior.label_noise > 0:
        raise ValueError("the exact GMM posterior is only closed form without label noise (label_noise = 0)")
    x_context, x_query = x_context.double(), x_query.double()
    joint = label_log_predictive(labels, prior)[:, None, :] + student_t_log_density(x_query, x_context, labels, prior)
    return torch.softmax(joint, dim=-1)
