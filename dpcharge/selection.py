"""Concurrent learning: where an ensemble of models disagrees, learn next.

An ensemble (the same training input, other seeds) predicts the density at every
grid point; the standard deviation across its models estimates the error of
their mean. Two choices follow from it, as DP-GEN makes them for potentials:

- which grid points of a DFT density to train on next (`select_points`): drawn
  more often where the models disagree, with a share of the drawing spread
  uniformly so that no region is forgotten, and weighted so that training
  still minimises the error over the whole grid;
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
) -> tuple[np.ndarray, np.ndarray]:
    """Draw grid points more often where an ensemble disagrees, with importance weights.

    Point i is drawn with probability pi_i = min(1, c q_i), where
    q_i = uniform_share / N + (1 - uniform_share) d_i / sum(d) mixes a uniform
    draw over the N grid points with one in proportion to the deviation d_i, and
    c makes the probabilities sum to ``points``; systematic sampling in a random
    order draws exactly that many distinct points with exactly these
    probabilities. The weight of a drawn point, ``points / (N pi_i)``, undoes
    the bias: a weighted mean over the drawn points estimates the mean over
    the whole grid, so the training loss and the label statistics still target
    the error on a uniform grid (weights are 1 for a uniform draw).

    Parameters
    ----------
    deviation
        Standard deviation across an ensemble at every grid point, e/Å^3, any
        shape (flat C order gives the indices).
    points
        How many distinct points to draw.
    uniform_share
        Share of the drawing probability spread evenly over the grid, above 0
        (every point keeps a chance, so every weight is finite) and at most 1.
    rng
        The random generator (seeded by the caller).

    Returns
    -------
    index : numpy.ndarray
        Flat grid indices in random order (so that frames and a validation split
        mix both kinds).
    weight : numpy.ndarray
        Weight of each drawn point in the loss, in the order of ``index``.
    """
    deviation = np.ravel(deviation).astype(np.float64)
    check_uniform_share(uniform_share)
    if not 0 < points <= deviation.size:
        raise InputError(
            f"{points:,} requested but the grid has {deviation.size:,} points", "points"
        )
    if not np.all(np.isfinite(deviation)):
        raise InputError("the models' deviation is not finite everywhere: check the models")
    size = deviation.size
    share = np.full(size, uniform_share / size)
    if deviation.sum() > 0:
        share += (1 - uniform_share) * deviation / deviation.sum()
    else:
        share = np.full(size, 1 / size)
    inclusion = inclusion_probabilities(share, points)
    order = rng.permutation(size)
    ends = np.cumsum(inclusion[order])
    marks = rng.random() + np.arange(points)
    picked = np.minimum(np.searchsorted(ends, marks, side="right"), size - 1)
    index = order[picked]
    return index, points / (size * inclusion[index])


def check_uniform_share(uniform_share: float) -> None:
    """Refuse a uniform share outside (0, 1] (`select_points`), before any prediction."""
    if not 0 < uniform_share <= 1:
        raise InputError(f"must be above 0 and at most 1, got {uniform_share}", "uniform_share")


def inclusion_probabilities(share: np.ndarray, points: int) -> np.ndarray:
    """Scale drawing shares to inclusion probabilities that sum to ``points``, capped at 1.

    Parameters
    ----------
    share
        Positive shares summing to 1.
    points
        The sum wanted, at most the number of shares.

    Returns
    -------
    numpy.ndarray
        min(1, c share) with c such that they sum to ``points``.
    """
    descending = np.sort(share)[::-1]
    tails = np.cumsum(descending[::-1])[::-1]  # sum of the shares from position k on
    capped = np.arange(points)  # k of the largest shares capped at 1, the rest scaled
    scale = (points - capped) / tails[:points]
    first = int(np.argmax(scale * descending[:points] <= 1))
    return np.minimum(1.0, scale[first] * share)


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
