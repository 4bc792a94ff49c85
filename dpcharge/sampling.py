"""Grid points of a density: where they are, and which of them go into training frames.

Grid points are numbered by their flat index in C order of the (NX, NY, NZ) grid,
so ``density.ravel()[index]`` is the density at point ``index``, which sits at
fractional coordinates (i/NX, j/NY, k/NZ) with ``(i, j, k) = unravel_index(index)``.

A grid point on top of a nucleus would give DeePMD-kit's descriptor a zero
distance (1/r = inf, NaN in training and prediction), and ideal crystals put atoms
exactly on grid points. Such points are moved radially out to `MIN_DISTANCE` from
the atom, the same way for training data and for prediction; pseudo-densities are
smooth at that scale.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from dpcharge.errors import InputError

MIN_DISTANCE = 0.01
"""Closest a grid point may sit to a nucleus, in Å (see the module docstring)."""


def grid_points(cell: np.ndarray, shape: tuple[int, int, int], index: np.ndarray) -> np.ndarray:
    """Return the Cartesian coordinates (Å) of grid points given by flat index.

    Parameters
    ----------
    cell
        Cell vectors as rows, shape (3, 3), in Å.
    shape
        Grid counts (NX, NY, NZ).
    index
        Flat C-order indices into the grid, any shape.

    Returns
    -------
    numpy.ndarray
        Coordinates in Å, shape ``index.shape + (3,)``.
    """
    fractional = np.stack(np.unravel_index(index, shape), axis=-1) / np.asarray(shape)
    return fractional @ np.asarray(cell, dtype=float)


def sample_grid_points(grid_size: int, points: int, seed: int) -> np.ndarray:
    """Draw distinct grid points uniformly at random.

    Parameters
    ----------
    grid_size
        Number of points of the grid, NX·NY·NZ.
    points
        How many to draw, without replacement.
    seed
        Seed of the random generator: the same seed gives the same points.

    Returns
    -------
    numpy.ndarray
        Flat grid indices, in the random order they were drawn.
    """
    if points < 1:
        raise InputError(f"the number of points must be positive, got {points}")
    if points > grid_size:
        raise InputError(f"{points} points requested but the grid has only {grid_size}")
    return np.random.default_rng(seed).choice(grid_size, size=points, replace=False)


def frame_size_for_all_points(grid_size: int, points_per_frame: int) -> int:
    """Return the largest frame size not above ``points_per_frame`` that divides the grid.

    DeePMD-kit needs the same number of atoms in every frame of a system, so a
    whole grid is cut into equal frames: no point is lost or written twice. VASP
    and Quantum ESPRESSO grids have small prime factors, so the size found is
    close to the one asked for.
    """
    if points_per_frame < 1:
        raise InputError(f"points per frame must be positive, got {points_per_frame}")
    return max(
        size for size in range(1, min(points_per_frame, grid_size) + 1) if grid_size % size == 0
    )


def keep_away_from_atoms(points: np.ndarray, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Move grid points closer than `MIN_DISTANCE` to an atom out to that distance.

    Parameters
    ----------
    points
        Grid point coordinates in Å, shape (..., 3).
    positions
        Atomic positions in Å, shape (N, 3).
    cell
        Periodic cell vectors as rows, in Å.

    Returns
    -------
    numpy.ndarray
        The coordinates, with points near a nucleus (or its periodic images)
        pushed radially away from it to `MIN_DISTANCE`; a point exactly on a
        nucleus moves along (1, 1, 1).
    """
    cell = np.asarray(cell, dtype=float)
    shifts = np.stack(np.meshgrid(*[(-1, 0, 1)] * 3, indexing="ij"), -1).reshape(-1, 3) @ cell
    images = (np.asarray(positions)[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    return push_out_of_nuclei(points, cKDTree(images))


def push_out_of_nuclei(points: np.ndarray, nuclei: cKDTree) -> np.ndarray:
    """Move points closer than `MIN_DISTANCE` to a nucleus out to that distance.

    The work of `keep_away_from_atoms`, for callers that already hold a tree of
    the nuclei and every periodic image that can come near the points (the
    prediction engine builds one per structure, not one per chunk).

    Parameters
    ----------
    points
        Coordinates in Å, shape (..., 3).
    nuclei
        Tree of nuclear positions in Å, periodic images included.

    Returns
    -------
    numpy.ndarray
        The coordinates, points near a nucleus pushed radially away from it to
        `MIN_DISTANCE`; a point exactly on a nucleus moves along (1, 1, 1).
    """
    flat = np.array(points, dtype=float).reshape(-1, 3)
    distance, nearest = nuclei.query(flat, distance_upper_bound=MIN_DISTANCE)
    close = np.isfinite(distance)
    if close.any():
        centres = nuclei.data[nearest[close]]
        offset = flat[close] - centres
        norm = np.linalg.norm(offset, axis=1, keepdims=True)
        direction = np.where(norm > 0, offset / np.where(norm > 0, norm, 1), 1 / np.sqrt(3))
        flat[close] = centres + MIN_DISTANCE * direction
    return flat.reshape(np.shape(points))
