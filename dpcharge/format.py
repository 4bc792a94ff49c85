"""The dpdata format ``vasp/chgcar``: a density file as frames of atoms plus grid points.

Each frame holds every real atom of the structure and a set of grid points as
atoms of one extra virtual type, the last entry of the type map (a grid point
on a nucleus moves out to `dpcharge.sampling.MIN_DISTANCE`). The per-atom
label ``atom_ener`` is the density in e/Å^3 at grid points and 0 at real atoms,
so DeePMD-kit reads it as an atomic-energy-like label::

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
from dpcharge.errors import InputError
from dpcharge.sampling import (
    frame_size_for_all_points,
    grid_points,
    keep_away_from_atoms,
    sample_grid_points,
)

VIRTUAL_TYPE = "X"
"""Default name of the grid-point type: ase's dummy atom, which is no element."""

DENSITY_LABEL = "atom_ener"
"""Per-atom label holding the density (e/Å^3) at grid points, 0 at real atoms."""

register_data_type(
    DataType(DENSITY_LABEL, np.ndarray, (Axis.NFRAMES, Axis.NATOMS), required=False),
    labeled=False,
)


@Format.register("vasp/chgcar")
class ChgcarFormat(Format):
    """VASP CHGCAR, CHG, AECCAR* or PARCHG (plain or gzip) as grid-point frames."""

    def from_system(
        self,
        file_name: str | os.PathLike,
        type_map: Sequence[str] | None = None,
        points: int = 100_000,
        points_per_frame: int = 200,
        seed: int = 0,
        all_points: bool = False,
        virtual_type: str | None = None,
        component: str = "total",
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
            missing from it are an error. For a VASP 4 file (no species line) the
            real elements must be the file's species in order.
        points
            Number of grid points drawn at random, without replacement.
        points_per_frame
            Grid points per frame.
        seed
            Random seed; the same seed gives the same frames.
        all_points
            Take every grid point once instead of a random sample; frames then
            hold the largest divisor of the grid size not above
            ``points_per_frame``.
        virtual_type
            Name of the grid-point type; default the last entry of ``type_map``,
            or ``"X"`` without a type map.
        component
            ``"total"``, or a magnetisation component (see `read_density`).
        **kwargs
            Ignored (dpdata passes its own options).

        Returns
        -------
        dict
            dpdata system data with the ``atom_ener`` labels in e/Å^3.
        """
        real_elements, virtual_type = _split_type_map(type_map, virtual_type)
        atoms, density = read_density(file_name, type_map=real_elements, component=component)
        symbols = atoms.get_chemical_symbols()
        if virtual_type in symbols:
            raise InputError(
                f"{file_name}: the grid-point type {virtual_type!r} is also an element "
                "of the structure; choose another name"
            )
        if real_elements is None:
            real_elements = list(dict.fromkeys(symbols))
        unknown = sorted(set(symbols) - set(real_elements))
        if unknown:
            raise InputError(
                f"{file_name}: elements {unknown} are not in the type map {list(real_elements)}"
            )

        grid_size = density.size
        if all_points:
            frame_size = frame_size_for_all_points(grid_size, points_per_frame)
            index = np.arange(grid_size)
        else:
            if points_per_frame < 1 or points % points_per_frame:
                raise InputError(
                    f"{points} points do not split into frames of {points_per_frame}: "
                    "choose --points as a multiple of --points-per-frame"
                )
            frame_size = points_per_frame
            index = sample_grid_points(grid_size, points, seed)
        index = index.reshape(-1, frame_size)
        frames = len(index)

        atom_names = [*real_elements, virtual_type]
        real_types = np.array([atom_names.index(symbol) for symbol in symbols])
        atom_types = np.concatenate([real_types, np.full(frame_size, len(real_elements))])
        cell = atoms.get_cell().array
        coords = np.concatenate(
            [
                np.broadcast_to(atoms.get_positions(), (frames, len(atoms), 3)),
                keep_away_from_atoms(
                    grid_points(cell, density.shape, index), atoms.positions, cell
                ),
            ],
            axis=1,
        )
        labels = np.concatenate([np.zeros((frames, len(atoms))), density.ravel()[index]], axis=1)
        return {
            "atom_names": atom_names,
            "atom_numbs": [int(np.sum(atom_types == t)) for t in range(len(atom_names))],
            "atom_types": atom_types,
            "orig": np.zeros(3),
            "cells": np.broadcast_to(cell, (frames, 3, 3)).copy(),
            "coords": coords,
            DENSITY_LABEL: labels,
        }


def _split_type_map(
    type_map: Sequence[str] | None, virtual_type: str | None
) -> tuple[list[str] | None, str]:
    """Split a full type map into the real elements and the grid-point type."""
    if type_map is None:
        return None, virtual_type or VIRTUAL_TYPE
    type_map = list(type_map)
    if virtual_type is None:
        virtual_type = type_map[-1]
    if len(type_map) < 2 or type_map[-1] != virtual_type:
        raise InputError(
            f"type map {type_map} must list the real elements, then the grid-point "
            f"type {virtual_type!r} last"
        )
    if len(set(type_map)) != len(type_map):
        raise InputError(f"type map {type_map} names a type twice")
    return type_map[:-1], virtual_type
