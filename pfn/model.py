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

    def forward(self, tokens: torch.Tensor, keys: int | torch.Tensor) -> torch.Tensor:
        # tokens: [batch, tokens, emsize]. `keys` says which tokens are the context: the first `keys`
        # of them, or the True entries of a boolean [tokens] mask (one shape for every context size).
        q = rearrange(self.query(tokens), "b n (h d) -> b h n d", h=self.nhead)
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

    def forward(self, tokens: torch.Tensor, keys: int | torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens), keys)
        return tokens + self.mlp(self.norm2(tokens))


TEMPERATURE_GAIN = 10.0
MAX_LOG_TEMPERATURE = 6.0  # inverse temperatures stay in [e^-6, e^6]


class PFNTransformer(nn.Module):
    """Maps (x_context, y_context, x_query) to `num_outputs` logits per query point.

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
        for block in self.blocks:
            tokens = block(tokens, num_keys)
        return self.decode(tokens[:, num_keys:])

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
        return self.decode(tokens[:, 1:])

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


def pad_features(x: torch.Tensor, max_features: int) -> torch.Tensor:
    """Zero-pad x's features to `max_features` and rescale by max_features / num_features (as in
    the PFN paper), so that one model serves 1..max_features features."""
    num_features = x.shape[-1]
    if num_features > max_features:
        raise ValueError(f"got {num_features} features; this model supports at most {max_features}")
    return F.pad(x, (0, max_features - num_features)) * (max_features / num_features)
