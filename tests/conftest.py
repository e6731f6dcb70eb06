import re
from pathlib import Path

import pytest
import torch

from pfn.config import load_config
from pfn.training import train

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks(heading: str) -> list[str]:
    """The ```python and plain ``` blocks of the README section that starts at `heading`, in order."""
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return re.findall(r"```(?:python)?\n(.*?)```", section, re.S)


def tiny_config(output_dir: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "tiny.yaml",
        ["--train.output_dir", str(output_dir), "--train.progress_bar", "false", "--logger", "none", *overrides],
    )


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny GP PFN trained once per test session (about a second of CPU training)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return train(tiny_config(tmp_path_factory.mktemp("tiny")))
