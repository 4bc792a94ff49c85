"""MPI-parallel whole-grid prediction (``mpirun -np N dpcharge reassemble ...``).

This module owns detecting an MPI launch, splitting a grid across ranks and
gathering the density on rank 0. The grid is cut into the same global chunks of
flat C-order indices as serial prediction, and each rank runs the same chunk
loop (`DeepDensity.predict_range`) over one contiguous block of chunks, so every
chunk is evaluated on exactly the same points by one TensorFlow thread whatever
the number of ranks: the output is byte-identical to the serial one; rank 0 receives the
blocks straight into the output array, so no rank holds more than its share
plus (rank 0) the output. ``mpi4py`` is optional (``pip install dpcharge[mpi]``)
and is imported only when the process was started by an MPI launcher.
"""

from __future__ import annotations

import math
import os

import numpy as np
from ase import Atoms

from dpcharge.errors import InputError
from dpcharge.grid import check_grid_shape
from dpcharge.inference import DeepDensity, Progress, check_chunk

LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
"""Environment variables by which Open MPI, MPICH/Intel MPI (and srun's PMI) announce ranks."""


def launched_size() -> int:
    """Return the number of ranks an MPI launcher announced in the environment (1 if none)."""
    for variable in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launched_rank() -> int:
    """Return this process's rank as an MPI launcher announced it (0 if none)."""
    for variable in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def world() -> object | None:
    """Return ``MPI.COMM_WORLD`` when started by an MPI launcher with 2+ ranks, else None.

    Raises
    ------
    InputError
        Started with several ranks but mpi4py is missing: every rank would
        otherwise compute and write the whole grid.
    """
    size = launched_size()
    if size < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise InputError(
            f"started by an MPI launcher with {size} ranks but mpi4py is not installed "
            "(pip install dpcharge[mpi])"
        ) from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def workers_per_rank(comm: object | None) -> int:
    """Return the cores of this machine shared among the ranks of ``comm`` (at least 1)."""
    ranks = 1 if comm is None else comm.Get_size()  # type: ignore[attr-defined]
    return max(1, len(os.sched_getaffinity(0)) // ranks)


def is_root(comm: object | None) -> bool:
    """Return True on the rank that prints and writes (rank 0, or a serial run)."""
    return comm is None or comm.Get_rank() == 0  # type: ignore[attr-defined]


def rank_block(size: int, chunk: int, ranks: int, rank: int) -> tuple[int, int]:
    """Return the flat index range ``start:stop`` of a rank's contiguous block of global chunks.

    Parameters
    ----------
    size
        Number of grid points.
    chunk
        Grid points per chunk; chunks start at multiples of ``chunk``.
    ranks, rank
        Number of ranks and this rank.

    Returns
    -------
    tuple of int
        ``start`` and ``stop``; the blocks of ranks 0..ranks-1 tile ``0:size`` in order,
        each starting on a chunk boundary, their chunk counts differing by at most one.
    """
    chunks = math.ceil(size / chunk)
    first = rank * chunks // ranks
    last = (rank + 1) * chunks // ranks
    return min(first * chunk, size), min(last * chunk, size)


def predict_grid(
    model: DeepDensity,
    atoms: Atoms,
    shape: tuple[int, int, int],
    chunk: int,
    comm: object,
    progress: Progress | None = None,
    deviation: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
    """Predict the density on a grid, split across the ranks of ``comm``.

    Parameters
    ----------
    model
        The density model (each rank has its own session).
    atoms
        The structure (positions and cell in Å), the same on every rank.
    shape
        Grid counts (NX, NY, NZ).
    chunk
        Grid points per graph evaluation (global chunk boundaries).
    comm
        An ``mpi4py`` communicator.
    progress
        Told on rank 0 how many of its points each finished chunk held.
    deviation
        Also return the standard deviation across the models (an ensemble).

    Returns
    -------
    numpy.ndarray, a pair of them, or None
        Density in e/Å^3, shape (NX, NY, NZ), and with ``deviation`` the models'
        standard deviation, on rank 0; None on the other ranks.

    Raises
    ------
    InputError
        On every rank when any rank refused its input (the first refusal's message).
    RuntimeError
        On the ranks that did not crash when another rank crashed; the crashed
        rank raises its own exception, traceback and all.
    """
    from mpi4py import MPI

    shape = check_grid_shape(shape)
    chunk = check_chunk(chunk)
    ranks, rank = comm.Get_size(), comm.Get_rank()  # type: ignore[attr-defined]
    size = math.prod(shape)
    blocks = [rank_block(size, chunk, ranks, r) for r in range(ranks)]
    start, stop = blocks[rank]
    root = rank == 0
    grids = [np.empty(size) if root else np.empty(stop - start) for _ in range(1 + deviation)]
    shares = [grid[start:stop] if root else grid for grid in grids]
    refusal, crash = "", None
    try:
        surroundings = model.surroundings(atoms)
        model.predict_range(
            surroundings,
            shape,
            shares[0],
            start,
            chunk,
            progress if root else None,
            shares[1] if deviation else None,
        )
    except InputError as error:
        refusal = str(error)
    except Exception as error:  # any rank's crash must end all ranks, not hang them
        crash = error
    reports = comm.allgather((refusal, None if crash is None else repr(crash)))  # type: ignore[attr-defined]
    if crash is not None:
        raise crash
    crashed = [(r, report) for r, (_, report) in enumerate(reports) if report]
    if crashed:
        raise RuntimeError(f"rank {crashed[0][0]} crashed: {crashed[0][1]}")
    refusals = [message for message, _ in reports if message]
    if refusals:
        raise InputError(refusals[0])
    counts = [b - a for a, b in blocks]
    offsets = [a for a, _ in blocks]
    for grid in grids:
        if root:  # rank 0's block is already in place: receive in place (MPI.IN_PLACE)
            comm.Gatherv(MPI.IN_PLACE, [grid, counts, offsets, MPI.DOUBLE], root=0)  # type: ignore[attr-defined]
        else:
            comm.Gatherv([grid, MPI.DOUBLE], None, root=0)  # type: ignore[attr-defined]
    if not root:
        return None
    if deviation:
        return grids[0].reshape(shape), grids[1].reshape(shape)
    return grids[0].reshape(shape)
