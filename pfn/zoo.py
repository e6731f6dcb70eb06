"""The model zoo: the checkpoints shipped in `checkpoints/`, each with a model card.

A card is built from two sources, both offline:
- the `.pfn` file itself: its training config (prior and hyperparameters, model size, data
  sizes) and metadata (steps trained), so those facts cannot drift from the weights;
- an optional `checkpoints/<name>.json` next to it with what the file cannot know: a one-line
  description, the machine it was trained on, the benchmark figures the model reaches and the
  command that trained it, plus the sha256 of the `.pfn` file those figures belong to. When the
  checkpoint is replaced and the card is not, the card says so instead of showing stale figures.

    import pfn
    for card in pfn.list_models():
        print(card)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pfn.checkpoint import CHECKPOINT_DIR, CheckpointError, file_sha256, read_checkpoint, resolve_checkpoint
from pfn.config import Config

CARD_KEYS = ("description", "trained_on", "benchmark", "command", "sha256")


@dataclass
class ModelCard:
    """What a shipped (or any) `.pfn` model is: read with `model_card` or `list_models`."""

    name: str
    path: Path
    task: str  # "regression" or "classification"
    prior: dict[str, Any]
    max_features: int
    max_context: int  # the longest context seen in training
    outputs: int  # buckets (regression) or classes (classification)
    parameters: int
    file_megabytes: float
    trained_steps: int | None
    batch_size: int
    layers: str  # e.g. "6 layers, emsize 256, 4 heads, hidden 512"
    config: dict[str, Any]  # the full training config stored in the file
    description: str = ""
    trained_on: str = ""  # the machine and time it took
    benchmark: str = ""
    command: str = ""
    stale: bool = False  # the card file was written for another version of the checkpoint
    extra: dict[str, Any] = field(default_factory=dict)  # other metadata in the file

    @property
    def datasets_seen(self) -> int | None:
        return None if self.trained_steps is None else self.trained_steps * self.batch_size

    @property
    def reproduce_command(self) -> str:
        """Commands that retrain this model from the exact config stored in its file."""
        source = self.name if self.path.parent == CHECKPOINT_DIR else str(self.path)
        return f"pfn models {source} --write-config {self.name}.yaml && pfn train --config {self.name}.yaml"

    def write_config(self, path: str | Path) -> Path:
        """Write the training config stored in the file as YAML, ready for `pfn train --config`.

        A wall-clock budget (`train.max_minutes`) is dropped: the stored `train.max_steps` is the
        number of steps actually taken, so the file reproduces the run step for step."""
        config = copy.deepcopy(self.config)
        config.get("train", {}).pop("max_minutes", None)
        header = f"# The training config stored in {self.path.name} (pfn models --write-config).\n"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/ on a fresh machine
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        return path

    def __str__(self) -> str:
        outputs = f"{self.outputs} classes" if self.task == "classification" else f"{self.outputs} buckets"
        if self.trained_steps is None:
            training = "steps not recorded"
        else:
            training = f"{self.trained_steps:,} steps x {self.batch_size} datasets = {self.datasets_seen:,} datasets"
            if "initialized_from" in self.extra:  # the file counts only the run that wrote it
                training += " in its last run, which continued another model (train.init_from)"
        features = "1 feature" if self.max_features == 1 else f"1-{self.max_features} features"
        lines = [
            f"{self.name}: {self.description or self.task}",
            f"  task       {self.task}, {features}, contexts up to {self.max_context} points",
            f"  prior      {json.dumps(self.prior)}",
            f"  model      {self.parameters / 1e6:.2f}M parameters ({self.layers}, {outputs}), "
            f"{self.file_megabytes:.1f} MB",
            f"  training   {training}" + (f", {self.trained_on}" if self.trained_on else ""),
        ]
        if self.extra:
            lines.append("  metadata   " + ", ".join(f"{key}={value}" for key, value in self.extra.items()))
        if self.benchmark:
            lines.append(f"  benchmark  {self.benchmark}")
        if self.stale:
            lines.append(f"  note       {self.path.with_suffix('.json').name} describes another version of this file")
        lines.append(f"  command    {self.command or self.reproduce_command}")
        lines.append(f"  file       {self.path}")
        return "\n".join(lines)


def _read_card_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from error
    unknown = set(values) - set(CARD_KEYS) if isinstance(values, dict) else {"<not a mapping>"}
    if unknown:
        raise CheckpointError(f"{path}: unknown model card keys {sorted(unknown)}; expected {', '.join(CARD_KEYS)}")
    return {key: str(value) for key, value in values.items()}


def model_card(name_or_path: str | Path) -> ModelCard:
    """The card of a shipped model (by name) or of any `.pfn` file (by path)."""
    path = resolve_checkpoint(name_or_path)
    payload = read_checkpoint(path)
    try:
        config = Config.from_dict(payload["config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} has a config this version of pfn cannot read: {error}") from error
    model, data = config.model, config.data
    metadata = dict(payload.get("metadata") or {})
    trained_steps = metadata.pop("trained_steps", None)
    card = _read_card_file(path.with_suffix(".json"))
    stale = "sha256" in card and card.pop("sha256") != file_sha256(path)
    if stale:  # keep only what does not depend on the weights
        card = {key: value for key, value in card.items() if key == "description"}
    classification = model.head == "categorical"
    return ModelCard(
        name=path.stem,
        path=path,
        task="classification" if classification else "regression",
        prior=config.prior,
        max_features=model.max_features,
        max_context=data.longest_context,
        outputs=model.num_classes if classification else model.num_buckets,
        parameters=sum(tensor.numel() for tensor in payload["state_dict"].values()),
        file_megabytes=path.stat().st_size / 1e6,
        trained_steps=trained_steps,
        batch_size=data.batch_size,
        layers=f"{model.nlayers} layers, emsize {model.emsize}, {model.nhead} heads, hidden {model.nhid}",
        config=payload["config"],
        extra=metadata,
        stale=stale,
        **card,
    )


def list_models(directory: str | Path = CHECKPOINT_DIR) -> list[ModelCard]:
    """Cards of the models shipped in `checkpoints/` (nothing is downloaded), sorted by name."""
    return [model_card(path) for path in sorted(Path(directory).glob("*.pfn"))]
