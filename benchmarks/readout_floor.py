"""How close can a Bayesian linear regression on D fixed basis functions get to the exact GP?

The best D functions for the RBF kernel on uniform inputs are its top D Mercer eigenfunctions,
estimated here by a Nystrom decomposition on 6,000 uniform points. On held-out datasets of the
`gp` prior (lengthscale 0.6, outputscale 1, noise variance 1e-4; 100 context and 20 query points)
this prints the regression's mean NLL per query point minus the exact GP's, for several D and
noise variances: the floor that `model.linear_readout: D` could reach with perfect features.

    python benchmarks/readout_floor.py   (a few minutes on 2 CPU cores)
    python benchmarks/readout_floor.py --lengthscale 0.2 --features 3 --nystrom 3000 --datasets 30

(a shorter lengthscale needs more basis functions: `gp_hyper`'s prior puts a fifth of its
datasets below 0.25).
"""

import argparse
import math

import torch

LENGTHSCALE, NOISE = 0.6, 1e-4
NUM_CONTEXT, NUM_QUERIES = 100, 20


def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * torch.cdist(a / LENGTHSCALE, b / LENGTHSCALE).square())


def gaussian_nll(y: torch.Tensor, covariance: torch.Tensor, noise: float) -> torch.Tensor:
    """Mean NLL of the queries' y under the GP posterior with this joint prior covariance."""
    c = NUM_CONTEXT
    factor = torch.linalg.cholesky(covariance[:c, :c] + noise * torch.eye(c))
    cross = covariance[c:, :c]
    mean = cross @ torch.cholesky_solve(y[:c, None], factor)[:, 0]
    whitened = torch.linalg.solve_triangular(factor, cross.T, upper=False)
    variance = (covariance[c:, c:].diagonal() + noise - whitened.square().sum(0)).clamp_min(1e-12)
    return (0.5 * (math.log(2 * math.pi) + variance.log() + (y[c:] - mean).square() / variance)).mean()


def main() -> None:
    global LENGTHSCALE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengthscale", type=float, default=LENGTHSCALE)
    parser.add_argument("--features", default="3,4,5", help="feature counts, e.g. 3,4,5")
    parser.add_argument("--nystrom", type=int, default=6000, help="points of the Nystrom decomposition")
    parser.add_argument("--datasets", type=int, default=100, help="datasets per feature count")
    args = parser.parse_args()
    LENGTHSCALE = args.lengthscale
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    print(f"lengthscale {LENGTHSCALE}, {args.datasets} datasets per feature count, {args.nystrom} Nystrom points")
    for num_features in (int(f) for f in args.features.split(",")):
        inducing = torch.rand(args.nystrom, num_features)
        eigenvalues, eigenvectors = torch.linalg.eigh(kernel(inducing, inducing))
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first
        gaps: dict[tuple[int, float], list[torch.Tensor]] = {}
        for _ in range(args.datasets):
            x = torch.rand(NUM_CONTEXT + NUM_QUERIES, num_features)
            covariance = kernel(x, x)
            noisy = covariance + NOISE * torch.eye(len(x))
            y = torch.distributions.MultivariateNormal(torch.zeros(len(x)), noisy).sample()
            exact = gaussian_nll(y, covariance, NOISE)
            to_inducing = kernel(x, inducing)
            for num_basis in (128, 256, 512, 1024):
                if num_basis > args.nystrom:
                    continue
                features = to_inducing @ eigenvectors[:, :num_basis] / eigenvalues[:num_basis].sqrt()
                for noise in (NOISE, 3 * NOISE, 10 * NOISE):
                    gap = gaussian_nll(y, features @ features.T, noise) - exact
                    gaps.setdefault((num_basis, noise), []).append(gap)
        print(f"{num_features} features: mean NLL of D eigenfunctions minus the exact GP's")
        for (num_basis, noise), values in gaps.items():
            print(f"  D = {num_basis:4d}, noise variance {noise:.0e}: {torch.stack(values).mean():+.4f}")


if __name__ == "__main__":
    main()
