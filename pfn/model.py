"""The PFN transformer: context points attend to each other, query points attend to the context.

Every token (context and query) computes a query vector, but keys and values come from the
context tokens alone, so one `scaled_dot_product_attention` call with no mask implements the
PFN attention pattern: a query's output never depends on other queries, and permuting the
context permutes nothing in the output. A learned "empty context" token is always present among
the keys, which makes a context of zero points (the prior predictive) well defined.

Training can instead run every batch at one shape (`forward_static`, `train.static_shapes`):
all points are tokens and a boolean mask over the keys marks the context. The answer is the
same; the point is that a compiled graph (`train.compile`) then serves every context size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN's attention builds a plan per sequence length, and training draws a new context size
# every step (measured on an H200: ~100 ms of planning per step); the flash and memory-efficient
# kernels take any length as it comes.
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

X_ENCODERS = ("linear", "mlp")  # how a point's features become a token (model.x_encoder)
MAX_PLAIN_ATTENTION_SCORES = 2**24  # a bigger scores matrix (32 MB in bfloat16) takes the fused kernel


class ContextAttention(nn.Module):
    def __init__(self, emsize: int, nhead: int, dropout: float) -> None:
        super().__init__()
        if emsize % nhead != 0:
            raise ValueError(f"emsize ({emsize}) must be divisible by nhead ({nhead})")
        self.nhead = nhead
        self.query = nn.Linear(emsize, emsize)
        self.key_value = nn.Linear(emsize, 2 * emsize)
        self.out = nn.Linear(emsize, emsize)
        self.dropout = dropout

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, keys: int | torch.Tensor) -> torch.Tensor:
        # queries: [batch, rows, emsize], the tokens that attend (all of `tokens`, or some of them);
        # tokens: [batch, tokens, emsize]. `keys` says which tokens are the context: the first `keys`
        # of them, or the True entries of a boolean [tokens] mask (one shape for every context size).
        q = rearrange(self.query(queries), "b n (h d) -> b h n d", h=self.nhead)
        if isinstance(keys, int):
            # The slice is a strided view; Linear on a non-contiguous 3-d input falls back to a batched
            # matmul against a weight copied once per dataset (30% of an LC forward pass on a CPU).
            context, mask = tokens[:, :keys].contiguous(), None
        else:
            context, mask = tokens, rearrange(keys, "n -> 1 1 1 n")  # the same for every dataset, head and query
        k, v = rearrange(self.key_value(context), "b n (two h d) -> two b h n d", two=2, h=self.nhead)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
            # Training in bfloat16 on a CPU: the CPU attention kernel's backward is 6x slower in
            # bfloat16 than in float32 (gp config, one thread), so attention alone runs in float32.
            with torch.autocast("cpu", enabled=False):
                attended = self.attend(q.float(), k.float(), v.float(), mask)
        else:
            attended = self.attend(q, k, v, mask)
        return self.out(rearrange(attended, "b h n d -> b n (h d)"))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        plain = not q.is_cuda and q.dtype == torch.bfloat16 and mask is None and not q.requires_grad
        if plain and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MAX_PLAIN_ATTENTION_SCORES:
            # bfloat16 inference on a CPU: the fused kernel takes twice as long as the three plain
            # operations at a PFN's sizes (8 datasets x 4 heads x 121 tokens x 101 keys: 3.3 ms
            # against 1.6 ms per layer on one thread), 10% of a bnn prediction.
            return torch.softmax((q @ k.mT) * q.shape[-1] ** -0.5, dim=-1) @ v
        if not q.is_cuda:
            # A CPU has no cuDNN kernel to avoid, and the context manager costs ~30 us a call, once
            # per layer: a few percent of a one-dataset prediction (measured on the shipped gp).
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        with sdpa_kernel(ATTENTION_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class Block(nn.Module):
    """Pre-norm transformer block with context-only attention."""

    def __init__(self, emsize: int, nhead: int, nhid: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(emsize)
        self.attention = ContextAttention(emsize, nhead, dropout)
        self.norm2 = nn.LayerNorm(emsize)
        self.mlp = nn.Sequential(nn.Linear(emsize, nhid), nn.GELU(), nn.Linear(nhid, emsize), nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor, keys: int | torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [b, n, e] -> [b, n, e], or with `rows` (indices into n) only those rows, [b, rows, e]:
        every token still serves as a key, but only the rows asked for are transformed."""
        normed = self.norm1(tokens)
        queries = normed if rows is None else normed[:, rows]
        tokens = tokens if rows is None else tokens[:, rows]
        tokens = tokens + self.attention(queries, normed, keys)
        return tokens + self.mlp(self.norm2(tokens))


TEMPERATURE_GAIN = 10.0
MAX_LOG_TEMPERATURE = 6.0  # inverse temperatures stay in [e^-6, e^6]

# The readout's log precisions move at the pace they need, as the temperature's do, and stay
# bounded: the weights' prior precision alpha in [e^-10, e^10], the noise precision beta in
# [e^-25, e^25] (standardised targets whose noise std is as small as ~1e-5 of their spread).
READOUT_GAIN = 10.0
MAX_LOG_ALPHA, MAX_LOG_BETA = 10.0, 25.0
INITIAL_LOG_BETA = math.log(100.0)  # noise std 0.1 of the context's spread, before any training
MIN_PRIOR_RATIO = 1e-9  # alpha / beta is at least this: A stays well conditioned in float64
# `readout_evidence` puts a posterior on log(alpha / beta) over this many points of
# [log MIN_PRIOR_RATIO, MAX_LOG_ALPHA + MAX_LOG_BETA] (steps of 0.11).
EVIDENCE_GRID_POINTS = 512
INITIAL_EVIDENCE_LOGIT = -2.0
MAX_LOG_INPUT_SCALE = 4.0  # the readout's per-dataset input scales stay in [e^-4, e^4]


def evidence_on_grid(
    phi_context: torch.Tensor, y_context: torch.Tensor, num_context: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log evidence of `evidence_precisions`, with beta integrated out, at each point of its
    grid over log(alpha / beta), up to a constant shared by every feature map of the same points:
    grid [G], log density [b, G], the residual Q [b, G] and the point count N (float64, []).
    Its softmax over the grid is the posterior over log(alpha / beta); its logsumexp compares
    feature maps. Shapes and arguments as in `evidence_precisions`."""
    phi_context, y_context = phi_context.double(), y_context.double()
    num_basis = phi_context.shape[-1]
    if phi_context.shape[1] < num_basis:
        eigenvalues, eigenvectors = torch.linalg.eigh(phi_context @ phi_context.mT)  # [b, c], [b, c, c]
        eigenvalues = eigenvalues.clamp_min(0)
        rotated = eigenvalues * (eigenvectors.mT @ rearrange(y_context, "b c -> b c 1"))[..., 0].square()
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(phi_context.mT @ phi_context)  # [b, D], [b, D, D]
        eigenvalues = eigenvalues.clamp_min(0)
        rotated = (eigenvectors.mT @ phi_context.mT @ rearrange(y_context, "b c -> b c 1"))[..., 0].square()
    grid = torch.linspace(
        math.log(MIN_PRIOR_RATIO),
        MAX_LOG_ALPHA + MAX_LOG_BETA,
        EVIDENCE_GRID_POINTS,
        dtype=torch.float64,
        device=phi_context.device,
    )  # [G]
    shifted = rearrange(grid.exp(), "g -> 1 g 1") + rearrange(eigenvalues, "b m -> b 1 m")  # [b, G, m]
    y_squared = rearrange(y_context.square().sum(-1), "b -> b 1")
    residual = y_squared - (rearrange(rotated, "b m -> b 1 m") / shifted).sum(-1)  # Q: [b, G]
    # Q is a difference of near-equal sums on (nearly) noiseless data: keep it positive.
    residual = torch.maximum(residual, 1e-13 * y_squared.clamp_min(1e-30))
    num_points = torch.as_tensor(num_context, dtype=torch.float64, device=phi_context.device).clamp_min(2)
    log_det = shifted.log().sum(-1) + (num_basis - eigenvalues.shape[-1]) * grid  # log det A: [b, G]
    log_density = 0.5 * num_basis * grid - 0.5 * num_points * residual.log() - 0.5 * log_det
    return grid, log_density, residual, num_points


def evidence_precisions(
    phi_context: torch.Tensor, y_context: torch.Tensor, num_context: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the context's y say about the readout's precisions, through a Bayesian linear
    regression's evidence (Bishop's PRML section 3.5): the posterior means of log(alpha / beta)
    and log beta, and the posterior std of log(alpha / beta), per dataset, under flat priors on
    both logs.

    phi_context: [b, c, D] (rows of zeros add nothing), y_context: [b, c], num_context: [] or an
    int, the points N >= 2 -> log_ratio, log_beta, log_ratio_std, each [b] (no gradient).

    With rho = alpha / beta and A = rho I + Phi^T Phi, the log evidence is
        D/2 log rho + N/2 log beta - beta/2 Q(rho) - 1/2 log det A + const,
        Q(rho) = y^T y - u^T A^-1 u  (the fit's residual plus rho |w|^2),  u = Phi^T y.
    Given rho, beta's posterior is Gamma(N/2, Q/2) (E log beta = digamma(N/2) - log(Q/2)), and
    integrating it out leaves rho's posterior
        log p(rho | y) = D/2 log rho - N/2 log Q(rho) - 1/2 sum_i log(rho + lambda_i) + const,
    which costs O(D) per rho in the eigenbasis of Phi^T Phi (eigenvalues lambda):
        Q(rho) = y^T y - sum_i u_i^2 / (rho + lambda_i).
    The nonzero eigenvalues are those of the smaller of Phi^T Phi and Phi Phi^T (then, with
    eigenvectors U, u_i^2 = lambda_i (U_i^T y)^2); the others are zero. Fewer points than basis
    functions can often be fitted exactly: then the evidence cannot tell small noise from none,
    rho's posterior spreads to the grid's floor, and its std says so.
    """
    with torch.no_grad():
        grid, log_density, residual, num_points = evidence_on_grid(phi_context, y_context, num_context)
        posterior = torch.softmax(log_density, -1)
        log_ratio = (posterior * grid).sum(-1)
        log_ratio_std = (posterior * (grid - rearrange(log_ratio, "b -> b 1")).square()).sum(-1).sqrt()
        log_beta = (posterior * (torch.digamma(num_points / 2) - (residual / 2).log())).sum(-1)
    return log_ratio, log_beta.clamp(-MAX_LOG_BETA, MAX_LOG_BETA), log_ratio_std


class BayesianLinearReadout(nn.Module):
    """The posterior predictive of a Bayesian linear regression of the context's y on learned basis
    functions of x, per query: a location, linear in the context's y, and a log scale.

    The basis functions phi are an MLP of a point's (padded) features and of a summary of the
    dataset (the empty-context token after the transformer, which has attended to the whole
    context), so context and query points share one feature map per dataset. With weights
    w ~ N(0, I / alpha) and noise precision beta (both read from the summary too):

        A = (alpha / beta) I + Phi_c^T Phi_c,   loc_q = phi_q^T A^-1 Phi_c^T y_c,
        variance_q = (1 + phi_q^T A^-1 phi_q) / beta.

    With `evidence`, alpha / beta and beta move from the network's guess towards what the
    regression's evidence says of them on this context (their posterior means,
    `evidence_precisions`), by a weight the network learns: on nearly noiseless data the evidence
    pins the noise down far more precisely than a guess from a summary token can.

    The solve runs in float64 on [num_basis, num_basis] matrices: nearly noiseless data drive
    alpha / beta, and with it A's conditioning, down by many orders of magnitude. Everything
    here runs in float32 or float64 under autocast too, so the features agree between the
    context and the queries to float32 precision.
    """

    def __init__(
        self, max_features: int, emsize: int, num_basis: int, evidence: bool = False, input_scale: bool = False
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(emsize)
        self.from_x = nn.Linear(max_features, emsize)
        # With `input_scale`, x is multiplied per dataset and feature by exp(s(summary)) before the
        # basis functions see it: an added summary can move where a GELU bends but not how fast the
        # features vary in x, and a GP's lengthscale varies 10x between datasets of one prior.
        # Zero-initialised (scale 1), so a model that gains it starts out unchanged.
        self.log_input_scale = nn.Linear(emsize, max_features) if input_scale else None
        if self.log_input_scale is not None:
            nn.init.zeros_(self.log_input_scale.weight)
            nn.init.zeros_(self.log_input_scale.bias)
        self.from_summary = nn.Linear(emsize, emsize)
        self.basis = nn.Sequential(nn.GELU(), nn.Linear(emsize, emsize), nn.GELU(), nn.Linear(emsize, num_basis))
        self.log_precisions = nn.Linear(emsize, 2)  # log alpha, log beta (divided by READOUT_GAIN)
        nn.init.zeros_(self.log_precisions.weight)
        with torch.no_grad():
            self.log_precisions.bias.copy_(torch.tensor([0.0, INITIAL_LOG_BETA / READOUT_GAIN]))
        # With `evidence`, how far each of log(alpha / beta) and log beta moves from the network's
        # own value towards the evidence's: a weight in (0, 1) per dataset, read from the summary
        # and four diagnostics of the evidence (its logit multiplied by READOUT_GAIN, so that one
        # weight can move it by several units in a few thousand steps). It starts at 0.12 for every
        # dataset, near the network's own values.
        self.evidence_weight = nn.Linear(emsize + 4, 2) if evidence else None
        if self.evidence_weight is not None:
            nn.init.zeros_(self.evidence_weight.weight)
            nn.init.constant_(self.evidence_weight.bias, INITIAL_EVIDENCE_LOGIT / READOUT_GAIN)

    def features(self, x: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        # x: [b, n, max_features] padded, summary: [b, e] normed -> phi [b, n, num_basis]
        if self.log_input_scale is not None:
            raw = READOUT_GAIN * self.log_input_scale(summary)  # [b, max_features]
            x = x * rearrange(torch.exp(MAX_LOG_INPUT_SCALE * torch.tanh(raw / MAX_LOG_INPUT_SCALE)), "b f -> b 1 f")
        return self.basis(self.from_x(x) + rearrange(self.from_summary(summary), "b e -> b 1 e"))

    def forward(
        self, summary: torch.Tensor, x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """summary: [b, e]; x_context: [b, c, max_features] (padded), y_context: [b, c]; x_query:
        [b, q, max_features] -> loc [b, q], log_scale [b, q] (float32)."""
        with torch.autocast(summary.device.type, enabled=False):
            summary = self.norm(summary.float())
            # One pass over all points: for one small dataset the MLP's cost is mostly per call.
            phi = self.features(torch.cat([x_context, x_query], dim=1).float(), summary)
            num_context = x_context.shape[1]
            return self.solve(
                summary,
                phi[:, :num_context],
                y_context.float(),
                phi[:, num_context:],
                torch.tensor(num_context, device=phi.device),
            )

    def forward_static(
        self, summary: torch.Tensor, x: torch.Tensor, y: torch.Tensor, is_context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` at one shape: x [b, n, max_features] (padded), y [b, n], is_context [n] bool
        -> loc, log_scale [b, n] for every point (the non-context points' equal `forward`'s)."""
        with torch.autocast(summary.device.type, enabled=False):
            summary = self.norm(summary.float())
            phi = self.features(x.float(), summary)  # [b, n, D]
            # A zero row of phi (and y) adds nothing to the Gram matrix or the projection.
            mask = is_context.float()
            phi_context = phi * rearrange(mask, "n -> 1 n 1")
            return self.solve(summary, phi_context, y.float() * mask, phi, mask.sum())

    def solve(
        self,
        summary: torch.Tensor,
        phi_context: torch.Tensor,
        y_context: torch.Tensor,
        phi_query: torch.Tensor,
        num_context: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # summary [b, e] normed, phi_context [b, c, D], y_context [b, c], phi_query [b, q, D],
        # num_context [] (the context's rows of phi that are not zero)
        raw = (READOUT_GAIN * self.log_precisions(summary)).double()  # [b, 2]
        log_alpha = MAX_LOG_ALPHA * torch.tanh(raw[:, 0] / MAX_LOG_ALPHA)
        log_beta = MAX_LOG_BETA * torch.tanh(raw[:, 1] / MAX_LOG_BETA)
        log_ratio = log_alpha - log_beta
        phi_context, phi_query, y_context = phi_context.double(), phi_query.double(), y_context.double()
        gram = phi_context.mT @ phi_context  # [b, D, D]
        projection = phi_context.mT @ rearrange(y_context, "b c -> b c 1")  # [b, D, 1]
        if self.evidence_weight is not None:
            fitted_ratio, fitted_beta, spread = evidence_precisions(phi_context, y_context, num_context)
            # The weight sees how sharply the evidence speaks (the posterior std of log(alpha /
            # beta), wide where the context can be fitted exactly), how many points it has, and
            # how far it is from the network's guess (a few points of a rough function can be
            # fitted exactly by smooth features: the evidence then finds no noise, wrongly).
            size = torch.log1p(torch.as_tensor(num_context, dtype=torch.float64, device=summary.device))
            distance = [(fitted_ratio - log_ratio.detach()) / 10, (fitted_beta - log_beta.detach()) / 10]
            diagnostics = torch.stack([spread, size.expand_as(spread), *distance], dim=-1).float()  # [b, 4]
            logit = READOUT_GAIN * self.evidence_weight(torch.cat([summary, diagnostics], -1)).double()
            weight = torch.sigmoid(logit)  # [b, 2]
            # Fewer than two points cannot tell noise from signal: the network's own values then.
            weight = torch.where(num_context >= 2, weight, torch.zeros_like(weight))
            log_ratio = log_ratio + weight[:, 0] * (fitted_ratio - log_ratio)
            log_beta = log_beta + weight[:, 1] * (fitted_beta - log_beta)
        ratio = torch.exp(log_ratio).clamp_min(MIN_PRIOR_RATIO)  # [b]
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        # `_ex`: no check of the factorisation on the host, which would stall every GPU step (and
        # break a CUDA graph); the ratio's floor keeps the matrix positive definite.
        cholesky, _ = torch.linalg.cholesky_ex(gram + rearrange(ratio, "b -> b 1 1") * eye)
        weights = torch.cholesky_solve(projection, cholesky)  # [b, D, 1]
        loc = rearrange(phi_query @ weights, "b q 1 -> b q")
        whitened = torch.linalg.solve_triangular(cholesky, phi_query.mT, upper=False)  # [b, D, q]
        variance = (1 + whitened.square().sum(-2)) * rearrange(torch.exp(-log_beta), "b -> b 1")
        return loc.float(), (0.5 * variance.log()).float()


class PFNTransformer(nn.Module):
    """Maps (x_context, y_context, x_query) to `num_outputs` logits per query point (plus a
    location and a log scale with `linear_readout`, see `BayesianLinearReadout`).

    Inputs with fewer than `max_features` features are zero-padded and rescaled by
    max_features / num_features, as in the PFN paper, so one model serves 1..max_features.
    Real-valued targets are encoded linearly; with `num_classes`, targets are labels
    0..num_classes-1 and are embedded.
    """

    def __init__(
        self,
        max_features: int,
        num_outputs: int,
        emsize: int = 256,
        nlayers: int = 6,
        nhead: int = 4,
        nhid: int = 512,
        dropout: float = 0.0,
        num_classes: int | None = None,
        learned_temperature: bool = False,
        x_encoder: str = "linear",
        linear_readout: int = 0,
        readout_evidence: bool = False,
        readout_input_scale: bool = False,
    ) -> None:
        super().__init__()
        self.max_features = max_features
        self.num_classes = num_classes
        if x_encoder == "linear":
            self.x_encoder = nn.Linear(max_features, emsize)
        elif x_encoder == "mlp":
            self.x_encoder = nn.Sequential(nn.Linear(max_features, emsize), nn.GELU(), nn.Linear(emsize, emsize))
        else:
            raise ValueError(f"x_encoder must be one of {', '.join(X_ENCODERS)}, got {x_encoder!r}")
        self.y_encoder = nn.Embedding(num_classes, emsize) if num_classes else nn.Linear(1, emsize)
        self.empty_context = nn.Parameter(torch.randn(emsize) * 0.02)
        self.blocks = nn.ModuleList(Block(emsize, nhead, nhid, dropout) for _ in range(nlayers))
        self.norm = nn.LayerNorm(emsize)
        self.decoder = nn.Sequential(nn.Linear(emsize, nhid), nn.GELU(), nn.Linear(nhid, num_outputs))
        # Log inverse temperature per query; zero-initialised, so a model that gains it (e.g. through
        # train.init_from) starts out predicting exactly what it did without it. Its output is
        # multiplied by TEMPERATURE_GAIN so that it moves at the pace it needs: at gain 1 (gp, one
        # CPU thread, 869-1,114 steps at lr 3e-5 or 1e-4) it had reached 1.3-1.4 in one feature where a
        # fixed post-hoc 3 was best.
        self.log_temperature = nn.Linear(emsize, 1) if learned_temperature else None
        if self.log_temperature is not None:
            nn.init.zeros_(self.log_temperature.weight)
            nn.init.zeros_(self.log_temperature.bias)
        # With a linear readout the logits are a bar distribution over z = (y - loc) / scale; a
        # zero output layer starts them uniform over the head's equal-mass buckets, so the
        # predictive starts as the readout's own Gaussian.
        self.linear_readout = (
            BayesianLinearReadout(max_features, emsize, linear_readout, readout_evidence, readout_input_scale)
            if linear_readout
            else None
        )
        if self.linear_readout is not None:
            nn.init.zeros_(self.decoder[-1].weight)
            nn.init.zeros_(self.decoder[-1].bias)

    # The encoders run in their weights' precision (float32) even under bfloat16 autocast, so
    # that the residual stream (the tokens) is float32 too. In bfloat16 (8 significant bits) the
    # inputs and every sum along the stream are rounded by 0.4-0.8% of their size, which throws
    # away what the sharpest predictions need: run under bfloat16 autocast that way, the shipped
    # gp model lost 0.025-0.038 nats/point at 50-100 points in 1-3 features and gp_hyper
    # 0.42-0.46; with a float32 stream 0.002-0.006 and 0.08-0.10 (same weights; the matrix
    # products still round each coordinate separately).
    def encode_x(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.x_encoder(pad_features(x.to(self.empty_context.dtype), self.max_features))

    def encode_y(self, y: torch.Tensor) -> torch.Tensor:
        if self.num_classes:
            return self.y_encoder(y.long())
        with torch.autocast(y.device.type, enabled=False):
            return self.y_encoder(y.to(self.y_encoder.weight.dtype).unsqueeze(-1))

    def forward(self, x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        # x_context: [b, c, f], y_context: [b, c], x_query: [b, q, f] -> logits [b, q, num_outputs]
        batch, num_context = y_context.shape
        context = self.encode_x(x_context) + self.encode_y(y_context)  # [b, c, e]
        queries = self.encode_x(x_query)  # [b, q, e]
        empty = self.empty_context.expand(batch, 1, -1).to(queries.dtype)
        tokens = torch.cat([empty, context, queries], dim=1)  # [b, 1 + c + q, e]
        num_keys = 1 + num_context
        for block in self.blocks[:-1]:
            tokens = block(tokens, num_keys)
        # Nothing reads the context tokens after the last block, only the summary (the empty token)
        # and the queries: the last block transforms just those, [b, 1 + q, e].
        rows = torch.arange(num_keys - 1, tokens.shape[1], device=tokens.device)
        rows[0] = 0  # the summary, then the queries
        tokens = self.blocks[-1](tokens, num_keys, rows)
        logits = self.decode(tokens[:, 1:])
        if self.linear_readout is None:
            return logits
        x_context, x_query = (pad_features(x, self.max_features) for x in (x_context, x_query))
        loc, log_scale = self.linear_readout(tokens[:, 0], x_context, y_context, x_query)  # [b, q] each
        return with_location_scale(logits, loc, log_scale)

    def forward_static(self, x: torch.Tensor, y: torch.Tensor, is_context: torch.Tensor) -> torch.Tensor:
        """`forward` for training at one fixed shape, whatever the context size: every point in one
        tensor, the context marked by `is_context`, so that a compiled graph serves every step.

        x: [b, n, max_features] (already `pad_features`-ed), y: [b, n], is_context: [n] bool
        -> logits [b, n, num_outputs]; those of the non-context points equal `forward`'s, as the
        targets of non-context points are never seen (only context points are attended to).
        """
        batch = x.shape[0]
        points = self.encode_x(x) + self.encode_y(y) * is_context[:, None]  # [b, n, e] (x is padded already)
        empty = self.empty_context.expand(batch, 1, -1).to(points.dtype)
        tokens = torch.cat([empty, points], dim=1)  # [b, 1 + n, e]
        keys = torch.cat([is_context.new_ones(1), is_context])  # [1 + n]: the empty token and the context
        for block in self.blocks:
            tokens = block(tokens, keys)
        logits = self.decode(tokens[:, 1:])
        if self.linear_readout is None:
            return logits
        loc, log_scale = self.linear_readout.forward_static(tokens[:, 0], x, y, is_context)  # [b, n] each
        return with_location_scale(logits, loc, log_scale)

    def decode(self, queries: torch.Tensor) -> torch.Tensor:
        # queries: [b, q, e] transformed query tokens -> logits [b, q, num_outputs]
        queries = self.norm(queries)
        logits = self.decoder(queries)
        if self.log_temperature is None:
            return logits
        # Float32 so that large sharpened logits keep their resolution under bf16 autocast;
        # the bounded log-scale keeps a step from blowing up.
        raw = TEMPERATURE_GAIN * self.log_temperature(queries).float()  # [b, q, 1]
        log_scale = MAX_LOG_TEMPERATURE * torch.tanh(raw / MAX_LOG_TEMPERATURE)
        return logits.float() * log_scale.exp()


def with_location_scale(logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """The backbone's output with a linear readout: [b, q, K] logits, then loc and log_scale
    ([b, q] each) as the last two of [b, q, K + 2] (`LocationScaleHead` takes them apart)."""
    return torch.cat([logits.float(), rearrange(loc, "b q -> b q 1"), rearrange(log_scale, "b q -> b q 1")], dim=-1)


def pad_features(x: torch.Tensor, max_features: int) -> torch.Tensor:
    """Zero-pad x's features to `max_features` and rescale by max_features / num_features (as in
    the PFN paper), so that one model serves 1..max_features features."""
    num_features = x.shape[-1]
    if num_features > max_features:
        raise ValueError(f"got {num_features} features; this model supports at most {max_features}")
    return F.pad(x, (0, max_features - num_features)) * (max_features / num_features)
