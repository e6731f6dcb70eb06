"""How much a shipped model would lose if its float32 matrix products ran in TF32, emulated on a CPU.

    python benchmarks/tf32_precision.py [MODELS...] > benchmarks/results/tf32-precision-DATE.md

On an NVIDIA GPU, `torch.set_float32_matmul_precision("high")` lets float32 matrix products
(Linear layers, attention) run on the tensor cores in TF32: the inputs of each product are
rounded to 11 significant bits (bfloat16 keeps 8, float32 24), the sums stay float32. That is
several times faster than full float32, which matters for models that must train in float32
(`train.precision: 32-true`, e.g. gp_hyper, whose bfloat16 forward pass costs ~0.1 nats/point).

No CPU has TF32, so this script emulates it: every float32 input of `F.linear`, `matmul`/`bmm`
and `scaled_dot_product_attention` is rounded to TF32 (round to nearest, ties away from zero, as
`cvt.rna.tf32.f32` does) before the product, which itself runs in float32. The model's own
datasets (64 per cell, 50 queries, seed 777, as in `bfloat16_precision.py`) are predicted in
float32, in emulated TF32 everywhere, and in emulated TF32 with the x/y encoders kept in float32
(the inputs themselves are then never rounded), and the mean NLL per query point is compared.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

# The cells of bfloat16_precision.py (this script's folder is on the path when it runs).
from bfloat16_precision import FEATURES, datasets, mean_nll
from torch.overrides import TorchFunctionMode

import pfn

MATRIX_PRODUCTS = {F.linear, torch.matmul, torch.bmm, torch.Tensor.__matmul__, F.scaled_dot_product_attention}
DROPPED_BITS = 13  # float32 keeps 23 stored mantissa bits, TF32 10


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32's 10 stored mantissa bits (nearest, ties away from zero)."""
    bits = x.view(torch.int32)
    # Adding half a unit of the last kept bit to the magnitude bits carries into the kept ones
    # exactly when the dropped part is at least half; the sign bit is untouched.
    rounded = (bits + (1 << (DROPPED_BITS - 1))) & ~((1 << DROPPED_BITS) - 1)
    return rounded.view(torch.float32)


class EmulatedTF32(TorchFunctionMode):
    """Within this mode, float32 matrix products see their inputs rounded to TF32; with
    `float32_encoders`, those of `model`'s x/y encoders keep theirs."""

    def __init__(self, model: pfn.PFN | None = None, float32_encoders: bool = False) -> None:
        super().__init__()
        self.backbone = model.backbone if float32_encoders else None
        self.paused = False

    def __enter__(self):
        if self.backbone is not None:
            encoders = self.backbone.encode_x, self.backbone.encode_y
            self.backbone.encode_x, self.backbone.encode_y = (self.unrounded(encode) for encode in encoders)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self.backbone is not None:
            del self.backbone.encode_x, self.backbone.encode_y  # back to the class's methods

    def unrounded(self, encode):
        def call(tensor: torch.Tensor) -> torch.Tensor:
            self.paused = True
            try:
                return encode(tensor)
            finally:
                self.paused = False

        return call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATRIX_PRODUCTS and not self.paused:
            # Boolean masks and other non-float32 arguments pass through unchanged.
            args = tuple(rounded_if_float32(a) for a in args)
            kwargs = {k: rounded_if_float32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def rounded_if_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return round_to_tf32(value)
    return value


def main(models: list[str]) -> None:
    torch.set_num_threads(1)
    print("| model | context | features | NLL float32 | TF32 - float32 | TF32 with float32 encoders - float32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in models:
        model = pfn.load(name)
        for context, features, args, y_query in datasets(name, model):
            full = mean_nll(model, args, y_query)
            with EmulatedTF32():
                everywhere = mean_nll(model, args, y_query)
            with EmulatedTF32(model, float32_encoders=True):
                exact_inputs = mean_nll(model, args, y_query)
            print(
                f"| {name} | {context} | {features} | {full:+.4f} | {everywhere - full:+.4f} | "
                f"{exact_inputs - full:+.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(FEATURES))
