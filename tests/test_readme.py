"""The README's complete example of a new prior works as written."""

import re

import torch

from priors import build_prior
from tests.conftest import ROOT


def test_readme_prior_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write a new prior", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    prior = build_prior({"name": "sine", "max_frequency": 5.0, "noise": 0.001})
    generator = torch.Generator().manual_seed(0)
    batch = prior.sample(3, 40, 2, generator)
    assert batch.x.shape == (3, 40, 2) and batch.y.shape == (3, 40)
    assert torch.allclose(batch.y, batch.y_noiseless, atol=0.2)
    assert prior.spec == {"name": "sine", "max_frequency": 5.0, "noise": 0.001}
