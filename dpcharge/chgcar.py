"""Read and write VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG) and cube files.

A VASP volumetric file is a POSCAR header, a blank line, the grid ``NX NY NZ`` and
then rho(r)·V_cell (electrons) on the grid in Fortran order (x fastest). A CHGCAR
may carry augmentation-occupancy blocks after each grid; a spin-polarized file
(ISPIN=2) holds the total density and then the magnetisation density, a
non-collinear one the total and then m_x, m_y, m_z. Files may be gzip-compressed.

Inside dpcharge a density is a float64 array ``density[i, j, k]`` in e/Å^3, the
value at fractional coordinates ``(i/NX, j/NY, k/NZ)`` of the cell. The header is
read by ase; the grid blocks are read here, with counts checked, because ase's
reader neither opens gzip files, nor reads non-collinear blocks, nor notices a
truncated grid.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io.cube import write_cube as ase_write_cube
from ase.io.vasp import read_vasp_configuration, write_vasp
from ase.units import Bohr

from dpcharge.errors import InputError

COMPONENTS = ("total", "magnetization", "mx", "my", "mz")
"""Density components a file can hold: the total density and the magnetisation."""

_HEADER_BYTES = 1 << 20
"""Bytes read for a header alone: room for a structure of ~15,000 atoms."""

_VALUES_PER_LINE = 5
"""Values per line when writing a CHGCAR, as VASP does."""


def read_density(
    path: str | os.PathLike,
    type_map: Sequence[str] | None = None,
    component: str = "total",
) -> tuple[Atoms, np.ndarray]:
    """Read a VASP volumetric file into a structure and a density in e/Å^3.

    Parameters
    ----------
    path
        CHGCAR, CHG, AECCAR*, PARCHG (VASP 4, 5 or 6 header), plain or gzip.
    type_map
        Element names, in the order of the file's species counts; only used for
        VASP 4 files, whose header has no species line.
    component
        ``"total"`` (default) for the total density; ``"magnetization"`` for the
        magnetisation density of a spin-polarized (ISPIN=2) file; ``"mx"``,
        ``"my"``, ``"mz"`` for a non-collinear file.

    Returns
    -------
    atoms
        The structure, positions in Å.
    density
        Array of shape (NX, NY, NZ) in e/Å^3; ``density[i, j, k]`` is the value at
        fractional coordinates (i/NX, j/NY, k/NZ).

    Raises
    ------
    InputError
        The file is missing, empty, truncated, not a volumetric file, holds
        non-finite values, or lacks the requested component.
    """
    if component not in COMPONENTS:
        raise InputError(f"unknown density component {component!r}; use one of {COMPONENTS}")
    lines = _read_lines(path)
    atoms, first_grid_line = _read_header(path, lines, type_map)
    volume = abs(np.linalg.det(atoms.get_cell().array))
    if not volume > 1e-8:
        raise InputError(f"{path}: the cell has zero volume ({volume:.3g} Å^3)")
    grid_shape, blocks = _read_blocks(path, lines, first_grid_line)
    values = blocks[_block_index(path, component, len(blocks))]
    density = values.reshape(grid_shape, order="F") / volume
    return atoms, density


def read_structure(path: str | os.PathLike, type_map: Sequence[str] | None = None) -> Atoms:
    """Read only the structure of a VASP volumetric file, not its grid.

    Parameters
    ----------
    path
        A file as for `read_density`.
    type_map
        Element names for a VASP 4 file, as for `read_density`.

    Returns
    -------
    ase.Atoms
        The structure, positions in Å.
    """
    lines = _read_lines(path, header_only=True)
    return _read_header(path, lines, type_map)[0]


_SLAB_VALUES = 1 << 20
"""Values formatted at a time by `write_chgcar` (8 MB of float64): bounds its extra memory."""


def write_chgcar(path: str | os.PathLike, atoms: Atoms, density: np.ndarray) -> None:
    """Write a density as a VASP CHGCAR (rho·V_cell, Fortran order, 11 digits).

    Parameters
    ----------
    path
        Output file; written to a temporary file first and renamed, so it is
        never left half-written.
    atoms
        The structure written as the POSCAR header.
    density
        Array of shape (NX, NY, NZ) in e/Å^3, as returned by `read_density`.
    """
    density = _checked_density(density)
    volume = atoms.get_volume()
    nx, ny, nz = density.shape
    planes = max(1, _SLAB_VALUES // (nx * ny))

    def write(stream: io.TextIOBase) -> None:
        write_vasp(stream, atoms, direct=True, vasp5=True)
        stream.write("\n{:5d}{:5d}{:5d}\n".format(*density.shape))
        carry = np.empty(0)  # the values of an unfinished line, fewer than _VALUES_PER_LINE
        for k in range(0, nz, planes):  # slabs of k-planes: Fortran order is k slowest
            slab = density[:, :, k : k + planes].ravel(order="F") * volume
            values = np.concatenate([carry, slab]) if len(carry) else slab
            rows = len(values) // _VALUES_PER_LINE
            full = values[: rows * _VALUES_PER_LINE].reshape(rows, _VALUES_PER_LINE)
            np.savetxt(stream, full, fmt="%18.10E", delimiter="")
            carry = values[rows * _VALUES_PER_LINE :]
        if len(carry):
            np.savetxt(stream, carry[None, :], fmt="%18.10E", delimiter="")

    write_atomically(path, write)


def write_cube(path: str | os.PathLike, atoms: Atoms, density: np.ndarray) -> None:
    """Write a density as a Gaussian cube file (e/bohr^3, coordinates in bohr).

    Parameters
    ----------
    path
        Output file; written to a temporary file first and renamed.
    atoms
        The structure; the cube's voxel vectors are its cell vectors / grid counts.
    density
        Array of shape (NX, NY, NZ) in e/Å^3.
    """
    density = _checked_density(density)
    write_atomically(path, lambda stream: ase_write_cube(stream, atoms, density * Bohr**3))


def _read_lines(path: str | os.PathLike, header_only: bool = False) -> list[str]:
    """Return the text lines of a plain or gzip file (gzip recognised by content).

    With ``header_only``, only the complete lines within the first
    ``_HEADER_BYTES`` are read: enough for the header of ~15,000 atoms.
    """
    try:
        if header_only:
            with open(path, "rb") as stream:
                magic = stream.read(2)
            opener = gzip.open if magic == b"\x1f\x8b" else open
            with opener(path, "rb") as stream:
                raw = stream.read(_HEADER_BYTES)
            return _decoded(path, raw).splitlines()[:-1] or [""]
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a density file") from None
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise InputError(f"{path}: broken gzip file ({error})") from None
    return _decoded(path, raw).splitlines()


def _decoded(path: str | os.PathLike, raw: bytes) -> str:
    """Decode a file's bytes as text, refusing empty and binary files."""
    if not raw.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (binary content)") from None


def _read_header(
    path: str | os.PathLike, lines: list[str], type_map: Sequence[str] | None
) -> tuple[Atoms, int]:
    """Read the POSCAR header with ase; return the atoms and the grid line's index."""
    if len(lines) < 9:
        raise InputError(f"{path}: too short for a VASP volumetric file")
    lines = list(lines)
    if _is_vasp4(lines):
        if type_map is None:
            raise InputError(
                f"{path}: VASP 4 file without element names; give them with --type-map "
                "in the order of the file's species"
            )
        counts = lines[5].split()
        if len(type_map) != len(counts):
            raise InputError(
                f"{path}: VASP 4 file with {len(counts)} species but --type-map names "
                f"{len(type_map)}"
            )
        lines.insert(5, " ".join(type_map))
        inserted = 1
    else:
        inserted = 0
    stream = io.StringIO("\n".join(lines) + "\n")
    try:
        atoms = read_vasp_configuration(stream)
    except Exception as error:  # ase raises many kinds on a malformed header
        raise InputError(f"{path}: unreadable POSCAR header ({error})") from None
    header_lines = stream.getvalue()[: stream.tell()].count("\n")
    # the grid line follows a blank line (VASP 5/6) after the positions
    for index in range(header_lines, min(header_lines + 3, len(lines))):
        if _grid_shape(lines[index]) is not None:
            return atoms, index - inserted
    raise InputError(f"{path}: no grid line 'NX NY NZ' after the atomic positions")


def _is_vasp4(lines: list[str]) -> bool:
    """Whether line 6 holds counts (VASP 4) rather than element names."""
    tokens = lines[5].split()
    return bool(tokens) and all(token.isdigit() for token in tokens)


def _grid_shape(line: str) -> tuple[int, int, int] | None:
    """Return (NX, NY, NZ) if the line is a grid line, else None."""
    tokens = line.split()
    if len(tokens) == 3 and all(token.isdigit() for token in tokens):
        shape = tuple(int(token) for token in tokens)
        return shape  # type: ignore[return-value]
    return None


def _read_blocks(
    path: str | os.PathLike, lines: list[str], grid_line: int
) -> tuple[tuple[int, int, int], list[np.ndarray]]:
    """Read every grid block (total, then magnetisation ones), skipping the rest.

    Returns the grid shape and the blocks as flat arrays of rho·V_cell in file
    (Fortran) order.
    """
    grid_text = lines[grid_line].split()
    shape = _grid_shape(lines[grid_line])
    assert shape is not None
    if min(shape) < 1:
        raise InputError(f"{path}: grid {shape} has no points")
    count = shape[0] * shape[1] * shape[2]
    blocks = []
    index = grid_line
    while index < len(lines):
        if lines[index].split() != grid_text:
            index += 1  # augmentation occupancies, magnetic moments, blank lines
            continue
        values, index = _read_block(path, lines, index + 1, count)
        blocks.append(values)
        if len(blocks) == 4:
            break
    return shape, blocks


def _read_block(
    path: str | os.PathLike, lines: list[str], start: int, count: int
) -> tuple[np.ndarray, int]:
    """Read ``count`` values starting at line ``start``; return them and the next line."""
    per_line = len(lines[start].split()) if start < len(lines) else 0
    if per_line == 0:
        raise InputError(f"{path}: truncated file: a grid block has no values")
    end = start + -(-count // per_line)
    text = " ".join(lines[start:end])
    try:
        values = np.array(text.split(), dtype=float)
    except ValueError:
        bad = next(token for token in text.split() if not _is_number(token))
        raise InputError(f"{path}: non-numeric value {bad!r} in the density grid") from None
    if len(values) != count:
        raise InputError(
            f"{path}: truncated or malformed grid block: {len(values)} values "
            f"where the grid needs {count}"
        )
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: the density grid holds NaN or infinite values")
    return values, end


def _is_number(token: str) -> bool:
    """Whether a token parses as a float."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def _block_index(path: str | os.PathLike, component: str, blocks: int) -> int:
    """Map a component name to its block for a file with ``blocks`` grid blocks."""
    if component == "total":
        return 0
    if blocks == 1:
        raise InputError(f"{path}: not spin-polarized: no {component} density in the file")
    if component == "magnetization":
        if blocks == 2:
            return 1
        raise InputError(
            f"{path}: non-collinear file: choose the magnetisation component mx, my or mz"
        )
    if blocks != 4:
        raise InputError(f"{path}: collinear spin file: use 'magnetization', not {component}")
    return {"mx": 1, "my": 2, "mz": 3}[component]


def _checked_density(density: np.ndarray) -> np.ndarray:
    """Check a density array is a finite 3-d grid with at least one point."""
    density = np.asarray(density, dtype=float)
    if density.ndim != 3 or density.size == 0:
        raise InputError(f"a density grid must be 3-d and non-empty, got shape {density.shape}")
    if not np.all(np.isfinite(density)):
        raise InputError("the density holds NaN or infinite values")
    return density


def write_atomically(path: str | os.PathLike, write: Callable[[io.TextIOBase], None]) -> None:
    """Write a text file through a temporary file in the same folder, then rename."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            write(stream)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
