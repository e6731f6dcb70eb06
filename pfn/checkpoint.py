"""One-file model checkpoints (`.pfn`): config, prior spec, the head's state (e.g. bucket borders) and weights.

The file is a `torch.save` of plain data (strings, numbers, tensors), read back with
`torch.load(weights_only=True)`, so loading a checkpoint never unpickles arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

FORMAT = "pfn-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or from an incompatible version."""


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def file_sha256(path: str | Path) -> str:
    """Hex digest of a file: what a model card and a continued model's metadata record of it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(module, path: str | Path, weights_dtype: str = "float32", **metadata: Any) -> Path:
    """Write a trained `PFNModule` (or anything with .config, .backbone, .head) to one file.

    `weights_dtype="float16"` halves the file (loading casts the weights back to float32); the
    head's state (bucket borders) is always kept in full precision.
    """
    from pfn import __version__

    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    dtype = WEIGHT_DTYPES[weights_dtype]
    backbone = getattr(module.backbone, "_orig_mod", module.backbone)  # unwrap torch.compile
    metadata = {**metadata, "weights_dtype": weights_dtype}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pfn_version": __version__,
        "config": json.dumps(module.config.to_dict()),
        "prior": json.dumps(module.config.prior),
        "metadata": json.dumps(metadata),
        "head_state": {key: value.detach().cpu() for key, value in module.head.state_dict().items()},
        "state_dict": {
            key: value.detach().cpu().to(dtype) if value.is_floating_point() else value.detach().cpu()
            for key, value in backbone.state_dict().items()
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A path to an existing file, or the name of a shipped checkpoint ("gp" -> checkpoints/gp.pfn)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CHECKPOINT_DIR / f"{name_or_path}.pfn"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pfn"))
    raise FileNotFoundError(
        f"no checkpoint file or shipped model named {str(name_or_path)!r}; "
        f"shipped models: {', '.join(available) or 'none'}"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a `.pfn` file; JSON fields come back decoded."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path} is not a readable PFN checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a PFN checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, but this pfn version reads up to "
            f"{FORMAT_VERSION}; upgrade pfn to load it"
        )
    missing = {"config", "prior", "head_state", "state_dict"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} is missing {sorted(missing)}")
    try:
        for key in ("config", "prior", "metadata"):
            payload[key] = json.loads(payload.get(key, "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} has a corrupt '{key}' field: {error}") from error
    return payload
