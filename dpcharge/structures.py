"""Read the structures to predict: any file ase reads, VASP volumetric files with their density.

A structure file may hold several frames (an MD trajectory in extxyz, XDATCAR,
OUTCAR, vasprun.xml ...). Such a file is never reduced to one frame silently:
the caller chooses frames with an index in ase's syntax (``"0"``, ``"-1"``,
``":"``, ``"10:20:2"``).

A file that starts with a POSCAR header and a grid line is a VASP volumetric
file and is read by `dpcharge.chgcar`, whose errors say what is wrong with it;
so is a file whose POSCAR header breaks. A POSCAR or CONTCAR (a valid header, no
grid) is the structure of its header, also when ase cannot name the file; any
other file goes to ase.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.io.formats import filetype

from dpcharge.chgcar import NotVolumetricError, read_density, read_structure
from dpcharge.errors import InputError


def read_structures(
    path: str | os.PathLike, frames: str | None = None
) -> tuple[list[Atoms], np.ndarray | None]:
    """Read the frames of a structure file; a VASP volumetric file also gives its density.

    Parameters
    ----------
    path
        POSCAR/CONTCAR, CHGCAR (plain or gzip), extxyz, cif, XDATCAR, ... .
    frames
        Which frames to take, in ase's index syntax. None takes the only frame
        and refuses a file that holds several.

    Returns
    -------
    structures
        The chosen frames (positions and cells in Å, finite), at least one.
    density
        The file's density in e/Å^3 when it is a VASP volumetric file (one
        frame), else None.

    Raises
    ------
    InputError
        The file is missing, unreadable, holds no atoms or non-finite
        positions, or ``frames`` does not fit it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a structure file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        read_structure(path)
    except NotVolumetricError as not_volumetric:
        structures = _read_other(path, frames, not_volumetric)
        density = None
    except InputError as error:  # a POSCAR or CHGCAR header that breaks, or no structure at all
        reason = str(error).removeprefix(f"{path}: ")
        raise InputError(
            f"{path}: unreadable structure (read as a POSCAR or CHGCAR: {reason})"
        ) from None
    else:
        if frames not in (None, "0", "-1", ":"):
            raise InputError(f"{path} holds one structure, not frames {frames}", "frames")
        atoms, density = read_density(path)
        structures = [atoms]
    return structures, density


def _read_other(path: Path, frames: str | None, not_volumetric: NotVolumetricError) -> list[Atoms]:
    """Read a file that is no VASP volumetric file: a POSCAR by its header, the rest by ase."""
    try:
        file_format = filetype(str(path))
    except Exception:  # ase raises several kinds when it cannot tell the format
        file_format = "vasp"  # a POSCAR whose name ase does not know, or no structure file
    if file_format == "vasp":  # ase's POSCAR reader would skip what ours refuses
        if not_volumetric.structure is None:
            raise InputError(f"{not_volumetric}; nor is it another format ase knows")
        if frames not in (None, "0", "-1", ":"):
            raise InputError(f"{path} holds one structure, not frames {frames}", "frames")
        return [not_volumetric.structure]
    try:
        structures = ase.io.read(path, index=":" if frames is None else frames, format=file_format)
    except (StopIteration, IndexError):
        raise InputError(f"{path}: no frame {frames} in the file", "frames") from None
    except Exception as error:  # ase raises many kinds on unreadable input
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"{path}: unreadable {file_format} file ({reason})") from None
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures or any(len(atoms) == 0 for atoms in structures):
        raise InputError(f"{path}: no atoms in the file")
    if frames is None and len(structures) > 1:
        raise InputError(
            f"{path} holds {len(structures)} structures: choose which ('0', '-1', ':' for all)",
            "frames",
        )
    for atoms in structures:
        if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell.array)):
            raise InputError(f"{path}: a structure holds NaN or infinite positions or cell")
    return list(structures)
