"""Where a density model errs: test error against the distance of grid points to the nearest atom.

Predicts every grid point of a reference density with a frozen model and prints, per shell of
nearest-nucleus distance (Å): the share of the grid points, the MAE there (e/Å^3), the mean
reference density (e/Å^3) and the share of the total absolute error that the shell carries.
A shell with a large MAE matters only if it also carries a large share of the error.

Usage::

    python benchmarks/error_by_distance.py MODEL.pb CHGCAR [--shells 0 0.5 1 1.5 2 2.5 10]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from dpcharge.chgcar import read_density
from dpcharge.grid import PeriodicImages, grid_points
from dpcharge.inference import DeepDensity


def nearest_nucleus_distance(atoms, shape: tuple[int, int, int]) -> np.ndarray:
    """Return the distance (Å) of every grid point to its nearest nucleus, images included."""
    nuclei = PeriodicImages(atoms, reach=max(atoms.cell.lengths()))
    points = grid_points(nuclei.cell, shape, np.arange(np.prod(shape)))
    distance, _ = nuclei.tree.query(points)
    return distance.reshape(shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="frozen density model")
    parser.add_argument("density", help="reference CHGCAR (plain or gzip)")
    parser.add_argument(
        "--shells", type=float, nargs="+", default=[0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 100.0]
    )
    parser.add_argument("--threads", type=int, default=0, help="chunks evaluated at once")
    args = parser.parse_args(argv)
    atoms, reference = read_density(args.density)
    prediction = DeepDensity(args.model, workers=args.threads).predict_grid(atoms, reference.shape)
    distance = nearest_nucleus_distance(atoms, reference.shape)
    error = np.abs(prediction - reference)
    print(
        f"{'shell Å':>12} {'points %':>9} {'MAE e/Å^3':>10} {'mean rho':>9} {'error share %':>13}"
    )
    for low, high in itertools.pairwise(args.shells):
        inside = (distance >= low) & (distance < high)
        if not inside.any():
            continue
        print(
            f"{low:5.2f}-{high:<6.2f} {100 * inside.mean():9.2f} {error[inside].mean():10.2e} "
            f"{reference[inside].mean():9.4f} {100 * error[inside].sum() / error.sum():13.1f}"
        )
    print(f"{'all':>12} {100.0:9.2f} {error.mean():10.2e} {reference.mean():9.4f} {100.0:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
