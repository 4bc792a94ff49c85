"""How many atoms of each element lie within a radius of a grid point: what a model's sel must hold.

A DeePMD-kit model keeps the nearest ``sel`` atoms of each element within its cutoff and drops
the others; ``dpcharge`` refuses a structure with a grid point that has more. This prints, for
every grid point of each density, the largest count of each element within each radius (Å),
periodic images included. ``--water SEEDS`` counts on the water32 structures that
``benchmarks/data/make_densities.py`` builds (on their 120^3 grid), without their DFT densities.

Usage::

    python benchmarks/neighbour_counts.py benchmarks/data/densities/CHGCAR_si64_seed1.gz \\
        --radii 6.5 5.0
    python benchmarks/neighbour_counts.py --water 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from dpcharge.chgcar import read_density
from dpcharge.grid import PeriodicImages, grid_points

WATER_GRID = (120, 120, 120)
"""Quantum ESPRESSO's FFT grid of the water32 densities (320 Ry)."""

BLOCK = 200_000
"""Grid points counted at once (bounds the memory)."""


def most_neighbours(atoms: Atoms, shape: tuple[int, int, int], radius: float) -> dict[str, int]:
    """Return the largest number of atoms of each element within ``radius`` (Å) of a grid point."""
    images = PeriodicImages(atoms, radius)
    symbols = np.array(atoms.get_chemical_symbols())[images.atom_index]
    size = int(np.prod(shape))
    most = {}
    for element in dict.fromkeys(atoms.get_chemical_symbols()):
        tree = cKDTree(images.positions[symbols == element])
        most[element] = max(
            int(tree.query_ball_point(points, radius, return_length=True).max())
            for points in (
                grid_points(images.cell, shape, np.arange(start, min(start + BLOCK, size)))
                for start in range(0, size, BLOCK)
            )
        )
    return most


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("densities", nargs="*", type=Path, help="CHGCAR files (plain or gzip)")
    parser.add_argument("--radii", type=float, nargs="+", default=[6.5, 5.0], help="Å")
    parser.add_argument("--water", type=int, nargs="+", default=[], help="water32 seeds")
    args = parser.parse_args(argv)
    cases = [(path.name, *_structure_and_grid(path)) for path in args.densities]
    if args.water:
        sys.path.insert(0, str(Path(__file__).parent / "data"))
        from make_densities import water_box

        cases += [
            (f"water32 seed {seed}", water_box(32, seed)[0], WATER_GRID) for seed in args.water
        ]
    for name, atoms, shape in cases:
        counts = "; ".join(
            f"{radius:g} Å: "
            + ", ".join(f"{el} {n}" for el, n in most_neighbours(atoms, shape, radius).items())
            for radius in args.radii
        )
        print(f"{name} ({'x'.join(map(str, shape))} grid): {counts}", flush=True)
    return 0


def _structure_and_grid(path: Path) -> tuple[Atoms, tuple[int, int, int]]:
    atoms, density = read_density(path)
    return atoms, density.shape


if __name__ == "__main__":
    raise SystemExit(main())
