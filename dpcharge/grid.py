"""Grids of a density: point positions, grid counts, sampling, and the atoms around points.

Grid points are numbered by their flat index in C order of the (NX, NY, NZ) grid,
so ``density.ravel()[index]`` is the density at point ``index``, which sits at
fractional coordinates (i/NX, j/NY, k/NZ) with ``(i, j, k) = unravel_index(index)``.

A grid point on top of a nucleus would give DeePMD-kit's descriptor a zero
distance (1/r = inf, NaN in training and prediction), and ideal crystals put atoms
exactly on grid points. Such points are moved radially out to
`~dpcharge.conventions.MIN_DISTANCE` from the atom, the same way for training data
and for prediction; pseudo-densities are smooth at that scale.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from dpcharge.conventions import MIN_DISTANCE, SPACING
from dpcharge.errors import InputError

FFT_PRIMES = (2, 3, 5, 7)
"""Prime factors allowed in grid counts, as in VASP and Quantum ESPRESSO FFT grids."""

GRID_BYTES = 8
"""Bytes per grid point of a density held in memory (float64)."""


def check_grid_shape(shape: tuple[int, ...], parameter: str = "shape") -> tuple[int, int, int]:
    """Return the grid counts as three ints, refusing a grid without points."""
    counts = tuple(int(n) for n in shape)
    if len(counts) != 3 or min(counts) < 1:
        raise InputError(f"a grid needs three positive counts NX NY NZ, got {counts}", parameter)
    return counts  # type: ignore[return-value]


def fft_friendly(count: int, primes: tuple[int, ...] = FFT_PRIMES, multiple: int = 1) -> int:
    """Return the smallest integer >= ``count`` with only ``primes`` as factors.

    Parameters
    ----------
    count
        The least grid count.
    primes
        Allowed prime factors: `FFT_PRIMES` as VASP; Quantum ESPRESSO allows
        fewer (`dpcharge.espresso.QE_FFT_FACTORS`).
    multiple
        The count must also be a multiple of this.

    Returns
    -------
    int
        The grid count.
    """
    candidate = max(int(count), 1)
    while True:
        if candidate % multiple:
            candidate += 1
            continue
        rest = candidate
        for prime in primes:
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return candidate
        candidate += 1


def grid_for_spacing(cell: np.ndarray, spacing: float) -> tuple[int, int, int]:
    """Return the smallest FFT-friendly grid whose spacing along each cell vector is <= ``spacing``.

    Parameters
    ----------
    cell
        Cell vectors as rows, in Å.
    spacing
        Largest distance between neighbouring grid points along a cell vector, in Å.

    Returns
    -------
    tuple of int
        Grid counts (NX, NY, NZ).
    """
    if not 0 < spacing < math.inf:
        raise InputError(f"must be a positive number of Å, got {spacing}", "spacing")
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    counts = [fft_friendly(math.ceil(length / spacing - 1e-9)) for length in lengths]
    return check_grid_shape(counts, "spacing")


def check_cell(atoms: Atoms) -> np.ndarray:
    """Return the cell vectors (rows, Å), refusing a structure without a finite 3-d cell."""
    cell = np.array(atoms.get_cell().array, dtype=float)
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(atoms.positions)):
        raise InputError("the structure has non-finite cell vectors or positions")
    if not abs(np.linalg.det(cell)) > 1e-8:
        raise InputError("the structure has no 3-d cell: a density grid needs one")
    return cell


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


def sample_grid_points(grid_size: int, points: int, rng: np.random.Generator) -> np.ndarray:
    """Draw distinct grid points uniformly at random.

    Parameters
    ----------
    grid_size
        Number of points of the grid, NX·NY·NZ.
    points
        How many to draw, without replacement.
    rng
        The random generator (seeded by the caller: the same seed, the same points).

    Returns
    -------
    numpy.ndarray
        Flat grid indices, in the random order they were drawn.
    """
    if points < 1:
        raise InputError(f"must be positive, got {points}", "points")
    if points > grid_size:
        raise InputError(
            f"{points:,} requested but the grid has only {grid_size:,} points", "points"
        )
    return rng.choice(grid_size, size=points, replace=False)


def frame_size_for_all_points(grid_size: int, points_per_frame: int) -> int:
    """Return the largest frame size not above ``points_per_frame`` that divides the grid.

    DeePMD-kit needs the same number of atoms in every frame of a system, so a
    whole grid is cut into equal frames: no point is lost or written twice. VASP
    and Quantum ESPRESSO grids have small prime factors, so the size found is
    close to the one asked for.
    """
    if points_per_frame < 1:
        raise InputError(f"must be positive, got {points_per_frame}", "points_per_frame")
    return max(
        size for size in range(1, min(points_per_frame, grid_size) + 1) if grid_size % size == 0
    )


class PeriodicImages:
    """The atoms of a structure and their periodic images within a reach of the cell.

    Positions are wrapped into the cell; along each periodic direction, images
    are shifted by up to ceil(reach / plane spacing) cells, enough to find every
    atom within ``reach`` of any point wrapped into the cell (`wrap`), also for
    cells smaller than the reach. Non-periodic directions get no images (vacuum).

    Parameters
    ----------
    atoms
        The structure (Å).
    reach
        Distance in Å within which atoms around points in the cell must be found
        (a model's cutoff).

    Attributes
    ----------
    cell
        Cell vectors as rows (Å).
    positions
        Image positions (Å), the atoms of the cell first.
    atom_index
        Index of the cell atom each image is a copy of.
    tree
        A k-d tree of the image positions.
    """

    def __init__(self, atoms: Atoms, reach: float) -> None:
        self.cell = check_cell(atoms)
        self.periodic = np.asarray(atoms.get_pbc(), dtype=bool)
        inside = self.wrap(atoms.get_positions())
        plane_spacing = 1 / np.linalg.norm(np.linalg.inv(self.cell), axis=0)
        counts = np.where(self.periodic, np.ceil(reach / plane_spacing), 0).astype(int)
        shifts = np.stack(
            np.meshgrid(*[np.arange(-n, n + 1) for n in counts], indexing="ij"), axis=-1
        ).reshape(-1, 3)
        shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")]  # (0,0,0) first
        self.positions = (inside[None] + (shifts @ self.cell)[:, None]).reshape(-1, 3)
        self.atom_index = np.tile(np.arange(len(atoms)), len(shifts))
        self.tree = cKDTree(self.positions)

    def wrap(self, positions: np.ndarray) -> np.ndarray:
        """Return positions (Å) moved into the cell along its periodic directions."""
        fractional = np.linalg.solve(self.cell.T, np.asarray(positions, dtype=float).T).T
        fractional[:, self.periodic] %= 1.0
        return fractional @ self.cell

    def push_out_of_nuclei(self, points: np.ndarray) -> np.ndarray:
        """Move points closer than `MIN_DISTANCE` to a nucleus out to that distance.

        Parameters
        ----------
        points
            Coordinates in Å, shape (..., 3), within the cell.

        Returns
        -------
        numpy.ndarray
            The coordinates, points near a nucleus (or an image) pushed radially
            away from it to `MIN_DISTANCE`; a point exactly on a nucleus moves
            along (1, 1, 1).
        """
        flat = np.array(points, dtype=float).reshape(-1, 3)
        distance, nearest = self.tree.query(flat, distance_upper_bound=MIN_DISTANCE)
        close = np.isfinite(distance)
        if close.any():
            centres = self.positions[nearest[close]]
            offset = flat[close] - centres
            norm = np.linalg.norm(offset, axis=1, keepdims=True)
            direction = np.where(norm > 0, offset / np.where(norm > 0, norm, 1), 1 / np.sqrt(3))
            flat[close] = centres + MIN_DISTANCE * direction
        return flat.reshape(np.shape(points))


def choose_grid(
    cell: np.ndarray,
    shape: tuple[int, ...] | None = None,
    spacing: float | None = None,
    reference_shape: tuple[int, ...] | None = None,
    default_spacing: float = SPACING,
) -> tuple[tuple[int, int, int], str]:
    """Choose the prediction grid: given counts, a spacing, a reference's grid, or a default.

    Parameters
    ----------
    cell
        Cell vectors as rows, in Å.
    shape
        Grid counts asked for, if any.
    spacing
        Largest grid spacing asked for in Å, if any.
    reference_shape
        Grid of a reference density of the same cell, if there is one.
    default_spacing
        Spacing in Å when nothing else sets the grid.

    Returns
    -------
    shape
        Grid counts (NX, NY, NZ).
    source
        What set them: ``"shape"``, ``"spacing"``, ``"reference"`` or ``"default"``.
    """
    if sum(choice is not None for choice in (shape, spacing)) > 1:
        raise InputError("give grid counts or a spacing, not both", "shape")
    if shape is not None:
        return check_grid_shape(shape), "shape"
    if spacing is not None:
        return grid_for_spacing(cell, spacing), "spacing"
    if reference_shape is not None:
        return check_grid_shape(reference_shape), "reference"
    return grid_for_spacing(cell, default_spacing), "default"
