"""Can the angular baseline run in float32? Its contracted form in float32 against float64.

Fits si.json's angular baseline (16 Gaussians, rcut 5 Å, lmax 8, the 40 nearest Si) to 60,000
random grid points of the Si64 training density (seed 1), as the model's statistics do, then
evaluates it at 40,000 random points of the unseen seed 6 the way the graph does
(``sum_m c_lm^T W_l c_lm``, ``dpcharge.fitting.graph_baseline``): in float64 and in float32,
with the 16 radial channels as they are and whitened by their covariance over the training
points (the same function, coefficients transformed). Prints the MAE of the float64 features
against DFT and, per variant, the difference from the float64 features (mean and largest,
e/Å^3) and the largest |eigenvalue| of the ``W_l``.

Usage::

    python benchmarks/baseline_precision.py      # ~1 min, one thread, ~3 GB
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from dpcharge.chgcar import read_density
from dpcharge.fitting import Baseline, fit_baseline, neighbour_density, neighbour_features
from dpcharge.grid import grid_points

DENSITIES = Path(__file__).resolve().parent / "data" / "densities"
BASELINE = Baseline(basis=16, rcut=5.0, lmax=8, sel=[40])
SEL = [40, 0]


def sample(seed: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Radial basis and neighbour vectors (Å) at random grid points of one Si64, and rho."""
    atoms, density = read_density(DENSITIES / f"CHGCAR_si64_seed{seed}.gz")
    index = rng.choice(density.size, count, replace=False)
    cell = atoms.get_cell().array
    points = grid_points(cell, density.shape, index)
    shifts = np.array(list(product(range(-1, 2), repeat=3))) @ cell
    images = ((atoms.get_scaled_positions() % 1.0 @ cell)[None] + shifts[:, None]).reshape(-1, 3)
    distances, found = cKDTree(images).query(points, k=SEL[0], distance_upper_bound=BASELINE.rcut)
    listed = np.isfinite(distances)
    vectors = np.where(listed[..., None], images[np.where(listed, found, 0)] - points[:, None], 0)
    phi = BASELINE.radial(np.where(listed, distances, BASELINE.rcut) ** 2)
    return phi, vectors, density.reshape(-1)[index]


def contracted(phi, vectors, transform, radial, matrices, constant, dtype) -> np.ndarray:
    """The baseline from channels ``transform @ phi`` in ``dtype``, as the graph forms it."""
    phi = phi.astype(dtype) @ transform.T.astype(dtype)
    sums, density = neighbour_density(phi, vectors.astype(dtype), SEL, BASELINE, np)
    degrees = np.repeat(np.arange(BASELINE.lmax + 1), 2 * np.arange(BASELINE.lmax + 1) + 1)
    quadratic = np.einsum("nyc,ycd,nyd->n", density, matrices[degrees].astype(dtype), density)
    return sums @ radial.astype(dtype) + quadratic + constant


def main() -> None:
    rng = np.random.default_rng(0)
    phi, vectors, rho = sample(1, 60_000, rng)
    features = neighbour_features(phi, vectors, SEL, BASELINE)
    coefficients = fit_baseline(features, rho)
    constant = np.mean(rho - features @ coefficients)
    test_phi, test_vectors, test_rho = sample(6, 40_000, rng)
    reference = neighbour_features(test_phi, test_vectors, SEL, BASELINE) @ coefficients + constant
    print(f"float64 features, MAE against DFT: {np.mean(np.abs(reference - test_rho)):.3e} e/Å^3")
    channels = BASELINE.basis
    first, second = BASELINE.pairs(1)
    angular = coefficients[channels:].reshape(BASELINE.lmax + 1, len(first))
    matrices = np.zeros((BASELINE.lmax + 1, channels, channels))
    for degree in range(BASELINE.lmax + 1):
        matrices[degree][first, second] += 0.5 * angular[degree]
        matrices[degree][second, first] += 0.5 * angular[degree]
    _, density = neighbour_density(phi, vectors, SEL, BASELINE, np)
    covariance = np.einsum("nyc,nyd->cd", density, density) / len(density)
    print(f"condition number of the channels' covariance: {np.linalg.cond(covariance):.2e}")
    whitening = np.linalg.inv(np.linalg.cholesky(covariance))
    for name, transform in (("as they are", np.eye(channels)), ("whitened", whitening)):
        inverse = np.linalg.inv(transform)
        moved = np.einsum("ca,lcd,db->lab", inverse, matrices, inverse)
        radial = np.linalg.solve(transform.T, coefficients[:channels])
        largest = np.abs(np.linalg.eigvalsh(moved)).max()
        for dtype in (np.float64, np.float32):
            value = contracted(test_phi, test_vectors, transform, radial, moved, constant, dtype)
            error = np.abs(value - reference)
            print(
                f"channels {name}, {dtype.__name__}: mean {error.mean():.2e}, largest "
                f"{error.max():.2e} e/Å^3 from float64 features; largest |eigenvalue| of W_l "
                f"{largest:.2e}"
            )


if __name__ == "__main__":
    main()
