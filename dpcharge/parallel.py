"""MPI-parallel whole-grid prediction (``mpirun -np N dpcharge reassemble ...``).

This module owns detecting an MPI launch, splitting a grid across ranks and
gathering the density on rank 0. The grid is cut into the same global chunks of
flat C-order indices as serial prediction (`DensityModel.predict_grid`), so every
chunk is evaluated on exactly the same points whatever the number of ranks, and
the output is byte-identical to the serial one. Each rank evaluates one
contiguous block of chunks with its own TensorFlow session; rank 0 receives the
blocks straight into the output array, so no rank holds more than its share
plus (rank 0) the output. ``mpi4py`` is optional (``pip install dpcharge[mpi]``)
and is imported only when the process was started by an MPI launcher.
"""

from __future__ import annotations

import math
import os

import numpy as np
from ase import Atoms
from tqdm import tqdm

from dpcharge.errors import InputError
from dpcharge.predict import DensityModel, RealAtoms, check_grid_shape

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
    model: DensityModel,
    atoms: Atoms,
    shape: tuple[int, int, int],
    chunk: int,
    comm: object,
    progress: bool = False,
) -> np.ndarray | None:
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
        Show rank 0's progress bar on standard error.

    Returns
    -------
    numpy.ndarray or None
        Density in e/Å^3, shape (NX, NY, NZ), on rank 0; None on the other ranks.

    Raises
    ------
    InputError
        On every rank when any rank failed (the first failure's message).
    """
    from mpi4py import MPI

    shape = check_grid_shape(shape)
    if chunk < 1:
        raise InputError(f"--chunk must be positive, got {chunk}")
    ranks, rank = comm.Get_size(), comm.Get_rank()  # type: ignore[attr-defined]
    size = math.prod(shape)
    blocks = [rank_block(size, chunk, ranks, r) for r in range(ranks)]
    start, stop = blocks[rank]
    root = rank == 0
    density = np.empty(size) if root else None
    share = density[start:stop] if root else np.empty(stop - start)  # type: ignore[index]
    failure = ""
    try:
        real = RealAtoms(atoms, model)
        with tqdm(
            total=stop - start,
            desc=f"predict (rank 0 of {ranks})",
            unit="point",
            unit_scale=True,
            disable=not (progress and root),
        ) as bar:
            for begin in range(start, stop, chunk):
                end = min(begin + chunk, stop)
                share[begin - start : end - start] = model.predict_indices(real, shape, begin, end)
                bar.update(end - begin)
    except InputError as error:
        failure = f"{error}"
    except Exception as error:  # any rank's crash must end all ranks, not hang them
        failure = f"rank {rank}: {type(error).__name__}: {error}"
    failures = [message for message in comm.allgather(failure) if message]  # type: ignore[attr-defined]
    if failures:
        raise InputError(failures[0])
    counts = [b - a for a, b in blocks]
    offsets = [a for a, _ in blocks]
    if root:
        # rank 0's block is already in place: receive in place (MPI.IN_PLACE)
        comm.Gatherv(MPI.IN_PLACE, [density, counts, offsets, MPI.DOUBLE], root=0)  # type: ignore[attr-defined]
        return density.reshape(shape)  # type: ignore[union-attr]
    comm.Gatherv([share, MPI.DOUBLE], None, root=0)  # type: ignore[attr-defined]
    return None
