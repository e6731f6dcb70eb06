"""The README's complete example of a new prior works as written."""

import torch

from priors import build_prior
from tests.conftest import readme_blocks


def test_readme_prior_example_runs():
    code = readme_blocks("## Write a new prior")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    prior = build_prior({"name": "sine", "max_frequency": 5.0, "noise": 0.001})
    generator = torch.Generator().manual_seed(0)
    batch = prior.sample(3, 40, 2, generator)
    assert batch.x.shape == (3, 40, 2) and batch.y.shape == (3, 40)
    assert torch.allclose(batch.y, batch.y_noiseless, atol=0.2)
    assert prior.spec == {"name": "sine", "max_frequency": 5.0, "noise": 0.001}
