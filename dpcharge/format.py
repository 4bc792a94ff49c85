"""The dpdata format ``vasp/chgcar``: a density file as frames of atoms plus grid points.

Each frame holds every real atom of the structure and a set of grid points as
atoms of one extra virtual type, the last entry of the type map (a grid point
on a nucleus moves out to `dpcharge.conventions.MIN_DISTANCE`). The per-atom
label ``atom_ener`` is the density in e/Å^3 at grid points and 0 at real atoms,
so DeePMD-kit reads it as an atomic-energy-like label; points drawn by an ensemble
also carry their weight ``grid_weight`` (`dpcharge.selection`)::

    import dpdata
    system = dpdata.System("CHGCAR", fmt="vasp/chgcar", points=100_000, seed=0)
    system.to("deepmd/npy", "data/si64")

dpdata loads this module through the ``dpdata.plugins`` entry point.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from dpdata.data_type import Axis, DataType, register_data_type
from dpdata.format import Format

from dpcharge.chgcar import read_density
from dpcharge.conventions import (
    GRID_TYPE,
    LABEL,
    MIN_DISTANCE,
    POINTS,
    POINTS_PER_FRAME,
    WEIGHT,
    TypeMap,
)
from dpcharge.errors import InputError
from dpcharge.grid import (
    PeriodicImages,
    frame_size_for_all_points,
    grid_points,
    sample_grid_points,
)

for _name in (LABEL, WEIGHT):
    register_data_type(
        DataType(_name, np.ndarray, (Axis.NFRAMES, Axis.NATOMS), required=False),
        labeled=False,
    )


@Format.register("vasp/chgcar")
class ChgcarFormat(Format):
    """VASP CHGCAR, CHG, AECCAR* or PARCHG (plain or gzip) as grid-point frames."""

    def from_system(
        self,
        file_name: str | os.PathLike,
        type_map: Sequence[str] | None = None,
        points: int = POINTS,
        points_per_frame: int = POINTS_PER_FRAME,
        seed: int | Sequence[int] = 0,
        all_points: bool = False,
        virtual_type: str | None = None,
        component: str = "total",
        species: Sequence[str] | None = None,
        grid_index: np.ndarray | None = None,
        grid_weight: np.ndarray | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Read a density file and cut its grid points into frames.

        Parameters
        ----------
        file_name
            The density file.
        type_map
            The model's full type map: real elements, then the grid-point type
            last (as dpdata applies it after reading). Elements of the structure
            missing from it are an error. Default: the file's elements in order,
            then the grid-point type.
        points
            Number of grid points drawn at random, without replacement.
        points_per_frame
            Grid points per frame.
        seed
            Seed of the random generator (an int, or a sequence of ints such as
            ``(seed, file_number)`` for one stream per file); the same seed gives
            the same frames.
        all_points
            Take every grid point once instead of a random sample; frames then
            hold the largest divisor of the grid size not above
            ``points_per_frame``.
        virtual_type
            Name of the grid-point type; default the last entry of ``type_map``,
            or ``"X"`` without a type map.
        component
            ``"total"``, or a magnetisation component (see `read_density`).
        species
            Element names of a VASP 4 file (which names none), in the order of
            its species counts.
        grid_index
            Flat C-order indices of the grid points to take instead of a random
            sample (e.g. chosen by an ensemble, `dpcharge.selection`); their
            number replaces ``points``.
        grid_weight
            Weight of each point of ``grid_index`` in the loss and the label
            statistics (`dpcharge.selection.select_points`), written as the
            ``grid_weight`` label; none for a uniform sample.
        **kwargs
            Ignored (dpdata passes its own options).

        Returns
        -------
        dict
            dpdata system data with the ``atom_ener`` labels in e/Å^3 (and
            ``grid_weight`` with ``grid_weight`` given).
        """
        if np.min(seed) < 0:
            raise InputError(f"must be 0 or more, got {seed}", "seed")
        if grid_weight is not None and (
            grid_index is None
            or np.shape(grid_weight) != np.shape(grid_index)
            or not np.all(np.asarray(grid_weight) > 0)
        ):
            raise InputError("must be positive, one per point of grid_index", "grid_weight")
        atoms, density = read_density(file_name, species=species, component=component)
        symbols = atoms.get_chemical_symbols()
        if type_map is None:
            types = TypeMap.of_structures([symbols], virtual_type or GRID_TYPE)
        else:
            types = TypeMap.from_names(type_map)
            if virtual_type is not None and virtual_type != types.grid_type:
                raise InputError(
                    f"type map {list(type_map)} must end with the grid-point type {virtual_type!r}",
                    "type_map",
                )
        try:
            real_types = types.indices(symbols)
        except InputError as error:
            raise InputError(f"{file_name}: {error}", "type_map") from None

        grid_size = density.size
        if all_points:
            frame_size = frame_size_for_all_points(grid_size, points_per_frame)
            index = np.arange(grid_size)
        else:
            if grid_index is not None:
                points = len(grid_index)
            if points_per_frame < 1 or points % points_per_frame:
                raise InputError(
                    f"{points} points do not split into frames of {points_per_frame}: "
                    "choose the points as a multiple of the points per frame",
                    "points",
                )
            frame_size = points_per_frame
            if grid_index is None:
                index = sample_grid_points(grid_size, points, np.random.default_rng(seed))
            else:
                index = np.asarray(grid_index, dtype=np.int64)
                if (
                    len(np.unique(index)) != len(index)
                    or not 0 <= index.min() <= index.max() < grid_size
                ):
                    raise InputError(
                        f"must be distinct and within the grid of {grid_size:,} points",
                        "grid_index",
                    )
        index = index.reshape(-1, frame_size)
        frames = len(index)

        atom_types = np.concatenate([real_types, np.full(frame_size, types.grid_index)])
        cell = atoms.get_cell().array
        nuclei = PeriodicImages(atoms, MIN_DISTANCE)
        coords = np.concatenate(
            [
                np.broadcast_to(atoms.get_positions(), (frames, len(atoms), 3)),
                nuclei.push_out_of_nuclei(grid_points(cell, density.shape, index)),
            ],
            axis=1,
        )
        labels = np.concatenate([np.zeros((frames, len(atoms))), density.ravel()[index]], axis=1)
        data = {
            "atom_names": list(types.names),
            "atom_numbs": [int(np.sum(atom_types == t)) for t in range(len(types.names))],
            "atom_types": atom_types,
            "orig": np.zeros(3),
            "cells": np.broadcast_to(cell, (frames, 3, 3)).copy(),
            "coords": coords,
            LABEL: labels,
        }
        if grid_weight is not None:
            weights = np.reshape(grid_weight, (frames, frame_size))
            data[WEIGHT] = np.concatenate([np.ones((frames, len(atoms))), weights], axis=1)
        return data
