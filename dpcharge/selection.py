"""Concurrent learning: where an ensemble of models disagrees, learn next.

An ensemble (the same training input, other seeds) predicts the density at every
grid point; the standard deviation across its models estimates the error of
their mean. Two choices follow from it, as DP-GEN makes them for potentials:

- which grid points of a DFT density to train on next (`select_points`): the
  points where the models disagree most, plus a share of uniform points so that
  no region is forgotten;
- which candidate structures (an MD trajectory without DFT) to compute next
  (`rank_structures`): those whose deviation is largest, on a coarse grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from dpcharge.conventions import RANKING_SPACING
from dpcharge.errors import InputError
from dpcharge.grid import grid_for_spacing
from dpcharge.inference import DeepDensity


def select_points(
    deviation: np.ndarray, points: int, uniform_share: float, rng: np.random.Generator
) -> np.ndarray:
    """Choose grid points to train on: the largest deviations and a uniform share.

    Parameters
    ----------
    deviation
        Standard deviation across an ensemble at every grid point, e/Å^3, any
        shape (flat C order gives the indices).
    points
        How many distinct points to choose.
    uniform_share
        Share of them drawn uniformly at random; the rest are the points of
        largest deviation among those not drawn.
    rng
        The random generator (seeded by the caller).

    Returns
    -------
    numpy.ndarray
        Flat grid indices in random order (so that frames and a validation split
        mix both kinds).
    """
    deviation = np.ravel(deviation)
    if not 0 <= uniform_share <= 1:
        raise InputError(f"must be between 0 and 1, got {uniform_share}", "uniform_share")
    if not 0 < points <= deviation.size:
        raise InputError(
            f"{points:,} requested but the grid has {deviation.size:,} points", "points"
        )
    uniform = rng.choice(deviation.size, size=round(points * uniform_share), replace=False)
    rest = np.ones(deviation.size, dtype=bool)
    rest[uniform] = False
    candidates = np.flatnonzero(rest)
    order = np.argsort(-deviation[candidates], kind="stable")
    return rng.permutation(np.concatenate([uniform, candidates[order[: points - len(uniform)]]]))


@dataclass(frozen=True)
class Disagreement:
    """An ensemble's deviation over one structure's coarse grid.

    Attributes
    ----------
    frame
        Index of the structure among the candidates.
    largest
        Largest standard deviation across the models, e/Å^3.
    mean
        Mean standard deviation, e/Å^3.
    """

    frame: int
    largest: float
    mean: float


def rank_structures(
    ensemble: DeepDensity, structures: list[Atoms], spacing: float = RANKING_SPACING
) -> list[Disagreement]:
    """Rank candidate structures by how much the ensemble disagrees on them, largest first.

    Parameters
    ----------
    ensemble
        Two models or more.
    structures
        The candidates (Å).
    spacing
        Grid spacing in Å of the coarse grid the deviation is evaluated on.

    Returns
    -------
    list of Disagreement
        One per structure, sorted by decreasing largest deviation.
    """
    found = []
    for frame, atoms in enumerate(structures):
        shape = grid_for_spacing(atoms.cell.array, spacing)
        _, deviation = ensemble.predict_grid(atoms, shape, deviation=True)
        found.append(Disagreement(frame, float(deviation.max()), float(deviation.mean())))
    return sorted(found, key=lambda d: (-d.largest, d.frame))
