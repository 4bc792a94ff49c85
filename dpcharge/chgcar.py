"""Read and write VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG) and cube files.

A VASP volumetric file is a POSCAR header, a blank line, the grid ``NX NY NZ`` and
then rho(r)·V_cell (electrons) on the grid in Fortran order (x fastest). After
each grid VASP may write augmentation occupancies (CHGCAR); a spin-polarized file
(ISPIN=2) then holds the magnetic moments and the magnetisation grid, a
non-collinear one three magnetisation grids (m_x, m_y, m_z). Files may be
gzip-compressed. CHGCAR files write every value in one exponent format (11
significant digits); CHG files write 5 significant digits in Fortran's G format.

Inside dpcharge a density is a float64 array ``density[i, j, k]`` in e/Å^3, the
value at fractional coordinates ``(i/NX, j/NY, k/NZ)`` of the cell.

The reader streams the file: the header line by line, the grids in slabs of whole
lines parsed straight into the returned array, so its peak memory stays near the
size of that array. It checks what a reader can: the header's counts against its
lines, every grid's number of values, that only what VASP writes follows a grid
(augmentation occupancies, magnetic moments, another grid, the end), and that every
value of a grid is written like the grid's first (a number cut where the file ends,
or broken in two). Each problem is one `InputError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.io.cube import write_cube as ase_write_cube
from ase.io.vasp import write_vasp
from ase.units import Bohr

from dpcharge.conventions import COMPONENTS
from dpcharge.errors import InputError
from dpcharge.output import write_atomically

_SLAB_BYTES = 1 << 17
"""Bytes of grid text parsed at a time: bounds the reader's memory beyond the density."""

_LINE_BYTES = 1 << 16
"""Longest line accepted: a longer one means the file is not a VASP text file."""

_VALUES_PER_LINE = 5
"""Values per line when writing a CHGCAR, as VASP does."""

_CHG_DIGITS = 5
"""Significant digits of a CHG file, written in Fortran's G format (an exponent only below 0.1)."""

_BLOCKS = {"total": 0, "magnetization": 1, "mx": 1, "my": 2, "mz": 3}
"""Grid block holding each component (the block count then says whether the file has it)."""

_SIGN = np.zeros(256, dtype=bool)
_SIGN[[43, 45]] = True
_EXPONENT = np.zeros(256, dtype=bool)
_EXPONENT[[69, 101]] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True

_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_INTEGER = re.compile(r"[0-9]+")
_NUMBER = re.compile(rb"[+-]?([0-9]*)\.?([0-9]*)(?:[Ee][+-]?([0-9]*))?")


class NotVolumetricError(InputError):
    """The file holds no POSCAR header followed by a grid: some other structure file.

    Parameters
    ----------
    message
        What the file lacks, in one line.
    structure
        The structure of a valid POSCAR header that no grid follows (a POSCAR
        or CONTCAR), else None.
    """

    def __init__(self, message: str, structure: Atoms | None = None) -> None:
        super().__init__(message)
        self.structure = structure


def read_density(
    path: str | os.PathLike,
    species: Sequence[str] | None = None,
    component: str = "total",
) -> tuple[Atoms, np.ndarray]:
    """Read a VASP volumetric file into a structure and a density in e/Å^3.

    Parameters
    ----------
    path
        CHGCAR, CHG, AECCAR*, PARCHG (VASP 4, 5 or 6 header), plain or gzip.
    species
        Element names in the order of the file's species counts. Needed for a
        VASP 4 file, whose header names no species; for a VASP 5/6 file they
        must equal the names in the file.
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
        The file is missing, not a volumetric file, truncated, inconsistent with
        its own header, holds non-finite values or several images, or lacks the
        requested component.
    """
    if component not in COMPONENTS:
        raise InputError(
            f"unknown density component {component!r}; use one of {COMPONENTS}", "component"
        )
    wanted = _BLOCKS[component]
    with _opened(path) as text:
        atoms = _read_header(text, species)
        shape = _read_grid_line(text, atoms)
        density = None
        blocks = 0
        while True:
            values = _read_block(text, shape, keep=blocks == wanted)
            if values is not None:
                density = values
            blocks += 1
            if not _next_block_follows(text, shape, len(atoms), blocks):
                break
    _check_component(path, component, blocks)
    density /= atoms.get_volume()
    return atoms, density.reshape(shape, order="F")


def read_structure(path: str | os.PathLike, species: Sequence[str] | None = None) -> Atoms:
    """Read only the structure of a VASP volumetric file: its header and grid line.

    Parameters
    ----------
    path
        A file as for `read_density`.
    species
        Element names, as for `read_density`.

    Returns
    -------
    ase.Atoms
        The structure, positions in Å.

    Raises
    ------
    NotVolumetricError
        The file does not start with a POSCAR header, or no grid line follows it
        (a POSCAR, a CONTCAR).
    InputError
        The header is broken or inconsistent.
    """
    with _opened(path) as text:
        atoms = _read_header(text, species)
        _read_grid_line(text, atoms)
    return atoms


_SLAB_VALUES = 1 << 20
"""Values formatted at a time by `write_chgcar` (8 MB of float64): bounds its extra memory."""


def write_chgcar(
    path: str | os.PathLike,
    atoms: Atoms,
    density: np.ndarray,
    magnetization: np.ndarray | None = None,
) -> None:
    """Write a density as a VASP CHGCAR (rho·V_cell, Fortran order, 11 digits).

    The header holds the species, counts, cell and positions only (no
    velocities, no selective dynamics), so VASP's tools, ase, pymatgen and
    `read_density` read it back. A path ending in ``.gz`` is gzip-compressed.
    With a magnetisation the file is spin-polarised (ISPIN=2): the total block,
    the grid line again and the magnetisation block, as pymatgen writes it.
    VASP also writes augmentation occupancies and a line of initial moments
    between the blocks; with neither, ase and pymatgen read both blocks (ase
    reads the magnetisation only when the grid line follows the total block).

    Parameters
    ----------
    path
        Output file; written to a temporary file first and renamed, so it is
        never left half-written.
    atoms
        The structure written as the POSCAR header, positions in Å.
    density
        Array of shape (NX, NY, NZ) in e/Å^3, as returned by `read_density`.
    magnetization
        Magnetisation rho_up - rho_down in e/Å^3 on the same grid, or None for
        a file without spin.
    """
    density = _checked_density(density)
    structure = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell)
    blocks = [density]
    if magnetization is not None:
        blocks.append(_checked_density(magnetization))
        if blocks[1].shape != density.shape:
            raise InputError(
                f"grids differ: density {density.shape}, magnetisation {blocks[1].shape}",
                "magnetization",
            )
    volume = structure.get_volume()
    nx, ny, nz = density.shape
    planes = max(1, _SLAB_VALUES // (nx * ny))

    def write(stream: io.TextIOBase) -> None:
        write_vasp(stream, structure, direct=True, vasp5=True)
        stream.write("\n")
        for block in blocks:
            stream.write("{:5d}{:5d}{:5d}\n".format(*density.shape))
            carry = np.empty(0)  # the values of an unfinished line, fewer than _VALUES_PER_LINE
            for k in range(0, nz, planes):  # slabs of k-planes: Fortran order is k slowest
                slab = block[:, :, k : k + planes].ravel(order="F") * volume
                values = np.concatenate([carry, slab]) if len(carry) else slab
                rows = len(values) // _VALUES_PER_LINE
                full = values[: rows * _VALUES_PER_LINE].reshape(rows, _VALUES_PER_LINE)
                np.savetxt(stream, full, fmt="%18.10E", delimiter="")
                carry = values[rows * _VALUES_PER_LINE :]
            if len(carry):
                np.savetxt(stream, carry[None, :], fmt="%18.10E", delimiter="")

    if str(path).endswith(".gz"):
        write_atomically(path, lambda stream: _gzipped(stream, write), binary=True)
    else:
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


def _gzipped(stream: BinaryIO, write) -> None:
    """Run a text writer into a gzip member on a binary stream (no time stamp: same bytes)."""
    with gzip.GzipFile(fileobj=stream, mode="wb", mtime=0) as compressed:
        text = io.TextIOWrapper(compressed, encoding="ascii", newline="\n")
        write(text)
        text.flush()
        text.detach()


def _checked_density(density: np.ndarray) -> np.ndarray:
    """Check a density array is a finite 3-d grid with at least one point."""
    density = np.asarray(density, dtype=float)
    if density.ndim != 3 or density.size == 0:
        raise InputError(f"a density grid must be 3-d and non-empty, got shape {density.shape}")
    if not np.all(np.isfinite(density)):
        raise InputError("the density holds NaN or infinite values")
    return density


class _Text:
    """A plain or gzip file read as lines (the header) or slabs of whole lines (the grids).

    Parameters
    ----------
    path
        The file, for messages.
    stream
        The open binary stream.
    compressed
        Whether the stream decompresses gzip (read errors then mean a broken file).
    """

    def __init__(self, path: str | os.PathLike, stream: BinaryIO, compressed: bool) -> None:
        self.path = path
        self.line_number = 0
        self.first_line = ""
        self.line_ended = True
        self._stream = stream
        self._compressed = compressed
        self._pending = b""

    def line(self) -> str | None:
        """Return the next line as text without its end, None at the end of the file."""
        if self._pending:
            raw, newline, self._pending = self._pending.partition(b"\n")
            if not newline:
                raw += self._read(self._stream.readline, _LINE_BYTES)
        else:
            raw = self._read(self._stream.readline, _LINE_BYTES)
        if not raw:
            return None
        if len(raw) >= _LINE_BYTES and not raw.endswith(b"\n"):
            raise self.error(f"line {self.line_number + 1} is longer than {_LINE_BYTES} bytes")
        self.line_number += 1
        self.line_ended = raw.endswith(b"\n")
        try:
            line = raw.decode().rstrip("\r\n")
        except UnicodeDecodeError:
            line = None
        if line is None or _BINARY.search(line):
            # a binary first line may be another format (ase's .traj); later, a broken file
            error = NotVolumetricError if self.line_number == 1 else InputError
            raise error(f"{self.path}: not a text file (binary content on line {self.line_number})")
        if self.line_number == 1:
            self.first_line = line
        return line

    def slab(self) -> bytes:
        """Return the next whole lines, about `_SLAB_BYTES` of them; empty at the end."""
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self._read(self._stream.read, _SLAB_BYTES)
            if data and not data.endswith(b"\n"):
                data += self._read(self._stream.readline, _LINE_BYTES)
        self.line_number += data.count(b"\n")
        return data

    def push_back(self, data: bytes) -> None:
        """Return unread bytes (whole lines) to the front of the stream."""
        self.line_number -= data.count(b"\n")
        self._pending = data + self._pending

    def error(self, problem: str) -> InputError:
        """Return an error naming the file."""
        return InputError(f"{self.path}: {problem}")

    def _read(self, method, size: int) -> bytes:
        try:
            return method(size)
        except (OSError, EOFError, zlib.error) as error:
            kind = "broken gzip file" if self._compressed else "cannot read"
            raise self.error(f"{kind} ({error})") from None


@contextmanager
def _opened(path: str | os.PathLike) -> Iterator[_Text]:
    """Open a plain or gzip file (gzip recognised by content) as `_Text`.

    A gzip file is checked (CRC, length) only at its end, so when reading stops
    at a problem in the text, the rest is decompressed to see whether the cause
    is a broken gzip file, which is then the message.
    """
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            text = _Text(path, stream, compressed)
            try:
                yield text
            except InputError:
                while compressed and text.slab():  # raises if the gzip file is broken
                    pass
                raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a density file") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read (permission denied)") from None


def _read_header(text: _Text, species: Sequence[str] | None) -> Atoms:
    """Read the POSCAR header line by line; return the structure (positions in Å)."""
    if text.line() is None:
        raise text.error("the file is empty")
    scale = _numbers(text, "the scale factor", (1, 3), NotVolumetricError)
    cell = np.array(
        [_numbers(text, f"cell vector {n}", (3,), NotVolumetricError) for n in (1, 2, 3)]
    )
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(scale)):
        raise text.error("the cell holds NaN or infinite values")
    volume = abs(np.linalg.det(cell))
    if not volume > 1e-8:
        raise text.error(f"the cell has zero volume ({volume:.3g} Å^3)")
    if len(scale) == 1 and scale[0] < 0:  # a negative scale factor is the cell volume
        scale = np.full(3, (-scale[0] / volume) ** (1 / 3))
    elif not np.all(scale > 0):
        raise text.error(f"line 2: scale factor {' '.join(map(str, scale))} is not positive")
    cell = cell * scale[:, None] if len(scale) == 3 else cell * scale[0]
    names, counts = _read_species(text, species)
    mode = _required_line(text, "the coordinate mode (Direct or Cartesian)")
    if mode.strip()[:1] in ("S", "s"):  # selective dynamics
        mode = _required_line(text, "the coordinate mode (Direct or Cartesian)")
    rows = [_position(text, 1, sum(counts), None)]
    forms = {_decimals(token) for token in rows[0]}
    form = forms.pop() if len(forms) == 1 else None  # one number format: a written file
    rows += [_position(text, n, sum(counts), form) for n in range(2, sum(counts) + 1)]
    positions = np.array(rows, dtype=float)
    symbols = [name for name, count in zip(names, counts, strict=True) for _ in range(count)]
    if mode.strip()[:1] in ("C", "c", "K", "k"):
        return Atoms(symbols, positions=positions * scale, cell=cell, pbc=True)
    return Atoms(symbols, scaled_positions=positions, cell=cell, pbc=True)


def _read_species(text: _Text, species: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """Read the species names (VASP 5/6) or take ``species`` (VASP 4), and the counts."""
    line = _required_line(text, "the species names or counts")
    tokens = line.split()
    if tokens and all(_INTEGER.fullmatch(token) for token in tokens):  # VASP 4: counts only
        if species is None:
            raise InputError(
                f"{text.path}: VASP 4 file without element names; give them in the order "
                "of the file's species counts",
                "species",
            )
        names = list(species)
        for name in names:
            if name not in atomic_numbers:
                raise InputError(f"{name!r} is not an element", "species")
        if len(names) != len(tokens):
            raise InputError(
                f"{text.path}: VASP 4 file with {len(tokens)} species counts, but "
                f"{len(names)} names given",
                "species",
            )
    else:
        names = [re.split(r"[_/.]", token)[0] for token in tokens]
        unknown = [
            token for token, name in zip(tokens, names, strict=True) if name not in atomic_numbers
        ]
        if not tokens or unknown:
            found = " ".join(unknown) if unknown else "nothing"
            raise text.error(f"line {text.line_number}: species names expected, found {found}")
        if species is not None and list(species) != names:
            raise InputError(
                f"{text.path} names its species {names}, not {list(species)}", "species"
            )
        tokens = _required_line(text, "the species counts").split()
    if len(tokens) != len(names) or not all(_INTEGER.fullmatch(token) for token in tokens):
        raise text.error(
            f"line {text.line_number}: expected {len(names)} atom counts, "
            f"found {' '.join(tokens) or 'nothing'}"
        )
    counts = [int(token) for token in tokens]
    if sum(counts) == 0:
        raise text.error(f"line {text.line_number}: the species counts hold no atom")
    return names, counts


def _read_grid_line(text: _Text, atoms: Atoms) -> tuple[int, int, int]:
    """Read the blank line and the grid line ``NX NY NZ`` that follow the positions.

    A line of numbers right after the positions is one more position than the
    counts say: refused. The end of the file or velocities (three numbers after
    the blank line) make the file a POSCAR or CONTCAR, whose structure the
    `NotVolumetricError` carries; anything else, some other file.
    """
    line = text.line()
    if line is not None and line.strip() and _grid_shape(line) is None and _is_numbers(line):
        raise text.error(
            f"line {text.line_number}: one more position line than the header's atom count "
            f"({line.strip()!r})"
        )
    while line is not None and not line.strip():
        line = text.line()
    shape = None if line is None else _grid_shape(line)
    tokens = [] if line is None else line.split()
    if shape is None and len(tokens) == 3 and any(_INTEGER.fullmatch(t) for t in tokens):
        raise text.error(
            f"line {text.line_number}: grid line {line.strip()!r} is not three positive integers"
        )
    if shape is None:
        found = "the end of the file" if line is None else repr(line.strip()[:40])
        raise NotVolumetricError(
            f"{text.path}: no grid line 'NX NY NZ' after the atomic positions "
            f"(line {text.line_number}: {found})",
            atoms if line is None or _is_velocities(tokens) else None,
        )
    return shape


def _is_velocities(tokens: list[str]) -> bool:
    """Whether a line after the positions starts a CONTCAR's velocities (ase writes a mode)."""
    mode = len(tokens) == 1 and tokens[0].lower() in ("cartesian", "direct", "c", "k", "d")
    return mode or (len(tokens) == 3 and _is_numbers(" ".join(tokens)))


def _grid_shape(line: str) -> tuple[int, int, int] | None:
    """Return (NX, NY, NZ) if the line is a grid line of positive counts, else None."""
    tokens = line.split()
    if len(tokens) == 3 and all(_INTEGER.fullmatch(token) for token in tokens):
        shape = tuple(int(token) for token in tokens)
        return shape if min(shape) > 0 else None  # type: ignore[return-value]
    return None


def _required_line(text: _Text, what: str) -> str:
    """Return the next line; a file that ends here is truncated."""
    line = text.line()
    if line is None and text.line_number == 1 and not text.first_line.strip():
        raise text.error("the file is empty")
    if line is None:
        raise text.error(f"the file ends at line {text.line_number}, before {what}")
    return line


def _numbers(
    text: _Text, what: str, lengths: tuple[int, ...], error: type[InputError] = InputError
) -> np.ndarray:
    """Read a line of exactly one of ``lengths`` numbers."""
    line = _required_line(text, what)
    tokens = line.split()
    if len(tokens) in lengths and _is_numbers(line):
        return np.array(tokens, dtype=float)
    count = " or ".join(map(str, lengths))
    raise error(
        f"{text.path}: line {text.line_number}: {what} is not {count} numbers ({line.strip()!r})"
    )


def _position(text: _Text, number: int, atoms: int, form: int | None) -> list[str]:
    """Read position line ``number`` of ``atoms``: three numbers, then optional flags or names.

    When the first position line writes its numbers with the same decimals
    (``form``, a file written by a program), every position must be written so.
    """
    line = text.line()
    if line is None or not line.strip():
        end = "the file ends" if line is None else "a blank line comes"
        raise text.error(
            f"{end} at line {text.line_number}, at position {number} of the header's {atoms} atoms"
        )
    tokens = line.split()
    three = len(tokens) >= 3 and _is_numbers(" ".join(tokens[:3]))
    if not three or (len(tokens) > 3 and _is_numbers(tokens[3])):
        raise text.error(
            f"line {text.line_number}: position {number} of {atoms} is not three numbers "
            f"({line.strip()!r})"
        )
    if not np.all(np.isfinite(np.array(tokens[:3], dtype=float))):
        raise text.error(
            f"line {text.line_number}: an atomic position holds NaN or infinite values"
        )
    forms = {_decimals(token) for token in tokens[:3]}
    if form is not None and forms != {form}:
        raise text.error(
            f"line {text.line_number}: position {number} ({line.strip()!r}) is not written like "
            "the first: a cut or broken number"
        )
    if not text.line_ended and len(forms) > 1:  # the file ends inside this line
        raise text.error(
            f"line {text.line_number}: the file ends inside a position ({line.strip()!r}): "
            "a cut number"
        )
    return tokens[:3]


def _decimals(token: str) -> int:
    """Return the digits after the point of a fixed-point number; -1 for any other form."""
    match = _NUMBER.fullmatch(token.encode())
    return -1 if match is None or match[3] is not None else len(match[2])


def _is_numbers(line: str) -> bool:
    """Whether every token of a line is a number."""
    try:
        [float(token) for token in line.split()]
    except ValueError:
        return False
    return True


def _read_block(text: _Text, shape: tuple[int, int, int], keep: bool) -> np.ndarray | None:
    """Read one grid of NX·NY·NZ values (rho·V_cell, file order); None when not kept.

    The grid is read in slabs of whole lines. A block not kept is counted, not
    parsed. The block must end at the end of a line, its values must be finite
    and written in the number format of its first value.
    """
    count = shape[0] * shape[1] * shape[2]
    values = np.empty(count) if keep else None
    done = 0
    reference = None
    while done < count:
        slab = text.slab()
        raw = np.frombuffer(slab, dtype=np.uint8)
        blank = raw <= ord(" ")  # control bytes too: the parser then refuses them
        starts = np.flatnonzero(~blank & np.concatenate(([True], blank[:-1])))
        if len(starts) == 0:
            if not slab:
                raise text.error(
                    f"truncated file: a grid block has {done} values where the grid "
                    f"{'x'.join(map(str, shape))} needs {count}"
                )
            continue
        if done + len(starts) > count:  # the block ends inside this slab
            cut = starts[count - done]
            if b"\n" not in slab[starts[count - done - 1] : cut]:
                line = text.line_number - slab.count(b"\n", cut)
                raise text.error(
                    f"line {line}: more values than the grid {'x'.join(map(str, shape))} holds"
                )
            text.push_back(slab[cut:])
            slab, raw, blank, starts = slab[:cut], raw[:cut], blank[:cut], starts[: count - done]
        if reference is None:
            reference = _token(slab, starts[0])
        if values is not None:
            parsed = values[done : done + len(starts)] = _parsed(text, slab, len(starts))
            if not np.all(np.isfinite(parsed)):
                raise text.error("the density grid holds NaN or infinite values")
        _check_forms(text, raw, blank, starts, reference)
        done += len(starts)
    return values


def _token(slab: bytes, start: int) -> bytes:
    """Return the token that starts at ``start``."""
    return slab[start : start + 64].split(maxsplit=1)[0]


def _parsed(text: _Text, slab: bytes, count: int) -> np.ndarray:
    """Parse a slab of ``count`` whitespace-separated numbers."""
    try:
        values = np.fromstring(slab, sep=" ")
    except ValueError:
        values = None
    if values is None or len(values) != count:
        bad = next((token for token in slab.split() if not _parses(token)), slab.strip()[:20])
        raise text.error(f"non-numeric value {bad.decode('latin-1')!r} in the density grid")
    return values


def _parses(token: bytes) -> bool:
    """Whether numpy's text parser reads a token as one number."""
    try:
        return len(np.fromstring(token, sep=" ")) == 1
    except ValueError:
        return False


def _form(token: bytes) -> tuple[int, int] | None:
    """Return a number's written form: (significant digits, exponent digits), None if no number.

    In exponent form the significant digits are the digits after the point (VASP
    writes ``0.12345678901E+01``, others ``1.2345678901E+00``); without exponent
    they are the digits without leading zeros (all the digits of a zero).
    """
    match = _NUMBER.fullmatch(token)
    if match is None:
        return None
    whole, fraction, exponent = match.groups()
    if exponent is not None:
        return len(fraction), len(exponent)
    digits = whole + fraction
    return len(digits.lstrip(b"0")) or len(digits), 0


def _check_forms(
    text: _Text, raw: np.ndarray, blank: np.ndarray, starts: np.ndarray, reference: bytes
) -> None:
    """Refuse a value of a slab of grid text written otherwise than ``reference``.

    Every value of a CHGCAR has one point, an exponent of 2 or 3 digits and the
    reference's digits after the point; a CHG value (G format) has one point and
    the reference's significant digits, with an exponent below 0.1. A cut number
    (``1.6969212328`` for ``1.6969212328E+01``) or a number broken in two differs.

    Parameters
    ----------
    raw, blank
        A slab's bytes and which of them are whitespace.
    starts
        Where each value starts.
    """
    form = _form(reference)
    if form is None:
        return  # not a number: the parser names it
    digits, exponent = form
    ends = np.flatnonzero(~blank & np.append(blank[1:], True))
    exponent2 = _EXPONENT[raw[np.maximum(ends - 3, 0)]] & _SIGN[raw[np.maximum(ends - 2, 0)]]
    exponent3 = (
        _EXPONENT[raw[np.maximum(ends - 4, 0)]]
        & _SIGN[raw[np.maximum(ends - 3, 0)]]
        & _DIGIT[raw[np.maximum(ends - 2, 0)]]
    )
    has_exponent = exponent2 | exponent3
    mantissa_end = np.where(exponent3, ends - 4, np.where(exponent2, ends - 3, ends + 1))
    point = np.flatnonzero(raw == ord("."))
    marks = np.flatnonzero(raw | 32 == ord("e"))  # E or e
    if len(point) != len(starts) or not np.array_equal(marks, mantissa_end[has_exponent]):
        # some value has no point or two, or an E elsewhere than before its exponent
        valid = (np.add.reduceat(raw == ord("."), starts, dtype=np.int32) == 1) & (
            np.add.reduceat(_EXPONENT[raw], starts, dtype=np.int32) == has_exponent
        )
    else:  # one point per value, the E only before the exponent
        valid = (point > starts) & (point < mantissa_end)  # a digit or sign before the point
        after = mantissa_end - point - 1
        if exponent and digits != _CHG_DIGITS:  # CHGCAR: every value with an exponent
            valid &= has_exponent & (after == digits)
        else:  # CHG: significant digits; a zero is written 0.0000
            before = point - starts - _SIGN[raw[starts]]
            leading_zero = (before == 1) & (raw[np.maximum(point - 1, 0)] == ord("0"))
            significant = np.where(has_exponent, after, before + after - leading_zero)
            nonzero = np.add.reduceat(_DIGIT[raw] & (raw != ord("0")), starts, dtype=np.int32)
            zero = ~has_exponent & leading_zero & (after == digits - 1) & (nonzero == 0)
            valid &= (significant == digits) | zero
    if not valid.all():
        token = _token(raw.tobytes(), starts[np.argmin(valid)]).decode("latin-1")
        raise text.error(
            f"grid value {token!r} is not written like the grid's first, "
            f"{reference.decode('latin-1')!r}: a cut or broken number"
        )


def _check_last_value(text: _Text, first: bytes, last: bytes) -> None:
    """Refuse a section whose last value is written otherwise than its first: a cut number.

    Used for the augmentation occupancies, which are few; grids go through
    `_check_forms`, which checks every value.
    """
    reference, form = _form(first), _form(last)
    if reference is None or form is None:
        return  # not numbers: the parser names them
    digits, exponent = reference
    cut = form[0] != digits or (form[1] < 2 and (form[1] or (exponent and digits != _CHG_DIGITS)))
    if cut:
        raise text.error(
            f"line {text.line_number}: value {last.decode()!r} is not written like the "
            f"section's first, {first.decode()!r}: a cut number"
        )


def _next_block_follows(text: _Text, shape: tuple[int, int, int], atoms: int, blocks: int) -> bool:
    """Read what follows a grid block; return whether another grid block follows.

    VASP writes after a grid only augmentation occupancies, the magnetic moments
    (one or three per atom) before a magnetisation grid, another grid line, or
    nothing. Anything else (more values, another header) is refused.
    """
    grid = "x".join(map(str, shape))
    moments = 0
    while (line := text.line()) is not None:
        tokens = line.split()
        if not tokens:
            continue
        if _grid_shape(line) == shape and moments in (0, atoms, 3 * atoms):
            if blocks == 4:
                raise text.error(f"line {text.line_number}: a fifth grid; VASP writes at most 4")
            return True
        if line.lower().startswith("augmentation occupancies") and not moments:
            _skip_augmentation(text, tokens)
        elif _is_numbers(line) and moments + len(tokens) <= 3 * atoms:
            moments += len(tokens)  # the magnetic moments before a magnetisation grid
        elif _is_numbers(line):
            raise text.error(
                f"line {text.line_number}: more values after grid block {blocks} than the "
                f"grid {grid} holds: the grid line does not match the data"
            )
        elif line.strip() == text.first_line.strip():
            raise text.error(
                f"line {text.line_number}: a second header: the file holds the densities of "
                "several ionic steps (a CHG file); dpcharge reads one: split the file"
            )
        else:
            raise text.error(
                f"line {text.line_number}: {line.strip()[:40]!r} after grid block {blocks}, "
                "where VASP writes augmentation occupancies, magnetic moments or another grid"
            )
    if moments:
        raise text.error(
            f"the file ends {moments} values after grid block {blocks}: truncated before the "
            "next grid, or the grid line does not match the data"
        )
    return False


def _skip_augmentation(text: _Text, tokens: list[str]) -> None:
    """Count the values of one 'augmentation occupancies <atom> <count>' section."""
    header = text.line_number
    if not _INTEGER.fullmatch(tokens[-1]):
        raise text.error(f"line {header}: augmentation header without a value count")
    count = int(tokens[-1])
    values: list[str] = []
    while len(values) < count:
        line = text.line()
        if line is None or not _is_numbers(line) or not line.strip():
            raise text.error(
                f"line {text.line_number}: augmentation occupancies of line {header} hold "
                f"{len(values)} values where the header says {count}"
            )
        values += line.split()
    if len(values) != count:
        raise text.error(
            f"line {text.line_number}: augmentation occupancies of line {header} hold "
            f"{len(values)} values where the header says {count}"
        )
    if count:
        _check_last_value(text, values[0].encode(), values[-1].encode())


def _check_component(path: str | os.PathLike, component: str, blocks: int) -> None:
    """Check that a file of ``blocks`` grid blocks holds ``component``."""
    if component == "total":
        return
    if blocks == 1:
        raise InputError(f"{path}: not spin-polarized: no {component} density in the file")
    if blocks == 3:
        raise InputError(f"{path}: holds 3 grids: neither spin-polarized (2) nor non-collinear (4)")
    if component == "magnetization" and blocks == 4:
        raise InputError(
            f"{path}: non-collinear file: choose the magnetisation component mx, my or mz"
        )
    if component != "magnetization" and blocks == 2:
        raise InputError(f"{path}: collinear spin file: use 'magnetization', not {component}")
