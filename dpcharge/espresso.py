"""Quantum ESPRESSO's charge density: pw.x inputs, the dense FFT grid, ``charge-density.dat``.

A predicted density can start a pw.x SCF (``startingpot = 'file'``) instead of the
superposition of atomic densities. pw.x then reads ``<outdir>/<prefix>.save/charge-density.dat``.
Everything below was checked on files written by Debian's pw.x (QE 6.7, no HDF5), see
``tests/test_espresso.py`` and ``tests/data/qe/README.md``.

The file (Fortran unformatted, sequential: each record is framed by its length in bytes as a
little-endian int32 before and after)::

    record 1  gamma_only (int32 logical, 0 or 1), ngm_g (int32), nspin (int32)
    record 2  b1, b2, b3: the reciprocal vectors, 9 float64, in 1/bohr including 2 pi
              (b_i . a_j = 2 pi delta_ij)
    record 3  Miller indices (m1, m2, m3) of the ngm_g G vectors, int32, shape (ngm_g, 3)
    record 4  rho(G), complex128, ngm_g values, in e/bohr^3
    record 5  (nspin = 2 only) the magnetisation rho_up - rho_down, same layout

Conventions (checked against ``pp.x`` ``plot_num = 0`` cube files to their 5 digits)::

    rho(r) = sum_G rho(G) exp(i G.r),   G = m1 b1 + m2 b2 + m3 b3

so rho(G=0) is the number of electrons over the cell volume (bohr^3), and on an
(n1, n2, n3) grid, point (i, j, k) at fractional coordinates (i/n1, j/n2, k/n3),
``rho_grid = n1 n2 n3 * numpy.fft.ifftn(C)`` where ``C[m mod n] = rho(G_m)``; conversely
``rho(G_m) = numpy.fft.fftn(rho_grid)[m mod n] / (n1 n2 n3)``. With ``gamma_only`` the file
holds only half of the G vectors (m1 > 0, or m1 = 0 and m2 > 0, or m1 = m2 = 0 and m3 >= 0);
rho(-G) = conj(rho(G)).

The G vectors are those with |G|^2 <= ecutrho (|G| in 1/bohr, ecutrho in Ry), in pw.x's own
order: by increasing |G|^2 (ties within 1e-8 (2 pi/alat)^2), then by (m1, m2, m3) ascending.
pw.x 6.7 reads ``rho(G)`` by position, not by Miller index: the same file shuffled gives a
wrong start (8 SCF iterations instead of 1), and a file holding only the first half of the
G vectors still restarts in 1. The order does not depend on the number of MPI ranks (2 ranks
write the same Miller record as 1).

Units at the boundary: dpcharge holds densities in e/Å^3 and cells in Å; the file holds
e/bohr^3 and 1/bohr, converted with `QE_BOHR`.

With PAW datasets pw.x also reads the on-site occupations of every atom's projectors
(``becsum``) from ``paw.txt`` beside the density, and stops ("Error in routine read_scf:
Reading PAW becsum") without it. A model predicts the density only, so dpcharge writes the
occupations pw.x's atomic start uses (`atomic_paw_occupations`): the predicted density with
atomic on-site occupations, which the SCF then relaxes. The file is Fortran list-directed
text of ``becsum(nhm (nhm + 1) / 2, nat, nspin)``, ``nhm`` the most projector channels
(all m) of any species, each atom's upper triangle ``(ih <= jh)`` first in pw.x's channel
order (projector by projector, m within), zeros after it; as pw.x 6.7 writes it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from ase import Atoms
from ase.io import read
from ase.io.espresso import get_atomic_species, label_to_symbol, read_fortran_namelist

from dpcharge.errors import InputError
from dpcharge.grid import check_cell, check_grid_shape, fft_friendly
from dpcharge.output import write_atomically

QE_BOHR = 0.529177210903
"""Å per bohr in Quantum ESPRESSO 6.7 (CODATA 2018): reproduces the file's b1, b2, b3 to 1e-16."""

QE_FFT_FACTORS = (2, 3, 5)
"""Prime factors of QE's "good" FFT dimensions with FFTW (its ``good_fft_order``): 7 and 11 are
allowed only with IBM's ESSL."""

ORDER_TOLERANCE = 1e-8
"""Two |G|^2 closer than this, in (2 pi/alat)^2, are equal when pw.x orders its G vectors."""

CHARGE_DENSITY = "charge-density.dat"
"""The density file in ``<outdir>/<prefix>.save/``."""

PAW_OCCUPATIONS = "paw.txt"
"""The PAW on-site occupations (``becsum``) beside the density, for PAW datasets only."""


# ----------------------------------------------------------------------------- pw.x input


@dataclass(frozen=True)
class PwInput:
    """What a pw.x input says about its density file.

    Attributes
    ----------
    path
        The input file.
    atoms
        The structure (Å), as ase reads it.
    outdir
        pw.x's ``outdir``: relative to the folder pw.x runs in, not the input's folder;
        ``$ESPRESSO_TMPDIR`` or ``./`` when not set (checked with pw.x 6.7).
    prefix
        pw.x's ``prefix`` (default ``pwscf``).
    ecutwfc, ecutrho
        Cutoffs in Ry; ``ecutrho`` defaults to 4 * ``ecutwfc``.
    nspin
        1, or 2 for a spin-polarised run.
    startingpot
        ``atomic`` (default) or ``file``.
    gamma_only
        True for ``K_POINTS gamma`` (pw.x then stores half of the G vectors).
    pseudopotentials
        Element -> UPF file.
    z_valence
        Element -> valence charge (e) of its pseudopotential.
    tot_charge
        pw.x's ``tot_charge`` (e): the cell holds that many electrons fewer.
    fft_grid
        ``nr1, nr2, nr3`` when the input sets all three, else None.
    """

    path: Path
    atoms: Atoms
    outdir: Path
    prefix: str
    ecutwfc: float
    ecutrho: float
    nspin: int
    startingpot: str
    gamma_only: bool
    pseudopotentials: dict[str, Path]
    z_valence: dict[str, float]
    tot_charge: float
    fft_grid: tuple[int, int, int] | None = None

    @property
    def electrons(self) -> float:
        """Return the number of valence electrons in the cell (e)."""
        symbols = self.atoms.get_chemical_symbols()
        return sum(self.z_valence[symbol] for symbol in symbols) - self.tot_charge

    @property
    def charge_density_path(self) -> Path:
        """Return where pw.x reads and writes the density: ``<outdir>/<prefix>.save/``."""
        return self.outdir / f"{self.prefix}.save" / CHARGE_DENSITY

    @property
    def dense_grid(self) -> tuple[int, int, int]:
        """Return a dense FFT grid for this run: ``nr1, nr2, nr3`` if set, else `dense_grid`.

        pw.x 6.7 takes ``nr1, nr2, nr3`` as given (28, 21, 27 stay so, factor 7 included).

        For a crystal whose symmetry has fractional translations pw.x may take a finer
        grid (see `dense_grid`); this one holds the density file's G vectors all the same.
        """
        if self.fft_grid is not None:
            return self.fft_grid
        return dense_grid(self.atoms.cell.array, self.ecutrho)


def read_pw_input(path: str | os.PathLike, workdir: str | os.PathLike | None = None) -> PwInput:
    """Read a pw.x input file: the structure, and what its density file needs.

    Parameters
    ----------
    path
        The pw.x input (``ibrav = 0`` with ``CELL_PARAMETERS``, as ase reads them).
    workdir
        The folder pw.x runs in (default: the current folder): pw.x opens a relative
        ``outdir`` and ``pseudo_dir`` there.

    Returns
    -------
    PwInput
        The input's settings, with the valence charges read from the UPF files in
        ``pseudo_dir`` (default ``$ESPRESSO_PSEUDO``, else ``~/espresso/pseudo``).
    """
    path = Path(path)
    workdir = Path.cwd() if workdir is None else Path(workdir)
    try:
        with open(path) as stream:
            namelists, cards = read_fortran_namelist(stream)
        atoms = read(path, format="espresso-in")
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None
    except (KeyError, ValueError, IndexError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a pw.x input ase can read ({error})") from None
    settings = {
        key.lower(): value for section in namelists.values() for key, value in section.items()
    }
    if "ecutwfc" not in settings:
        raise InputError(f"{path}: &SYSTEM sets no ecutwfc")
    ecutwfc = float(settings["ecutwfc"])
    outdir = settings.get("outdir") or os.environ.get("ESPRESSO_TMPDIR") or "./"
    default_pseudo = os.environ.get("ESPRESSO_PSEUDO") or str(Path.home() / "espresso" / "pseudo")
    pseudo_dir = workdir / Path(settings.get("pseudo_dir") or default_pseudo).expanduser()
    pseudopotentials = _pseudopotentials(path, int(settings["ntyp"]), cards, pseudo_dir)
    gamma_only = any(re.match(r"K_POINTS\W*gamma", line, re.IGNORECASE) for line in cards)
    fft_grid = tuple(int(settings.get(f"nr{i}", 0)) for i in (1, 2, 3))
    return PwInput(
        path=path,
        atoms=atoms,
        outdir=workdir / Path(outdir).expanduser(),
        prefix=str(settings.get("prefix", "pwscf")),
        ecutwfc=ecutwfc,
        ecutrho=float(settings.get("ecutrho", 4 * ecutwfc)),
        nspin=int(settings.get("nspin", 1)),
        startingpot=str(settings.get("startingpot", "atomic")),
        gamma_only=gamma_only,
        pseudopotentials=pseudopotentials,
        z_valence={symbol: read_z_valence(upf) for symbol, upf in pseudopotentials.items()},
        tot_charge=float(settings.get("tot_charge", 0.0)),
        fft_grid=fft_grid if min(fft_grid) > 0 else None,  # type: ignore[arg-type]
    )


def _pseudopotentials(path: Path, ntyp: int, cards: list[str], pseudo_dir: Path) -> dict[str, Path]:
    """Return element -> UPF file from the ATOMIC_SPECIES card (labels such as Fe1 -> Fe)."""
    species = get_atomic_species(cards, n_species=ntyp)
    found: dict[str, Path] = {}
    for label, _mass, upf in species:
        symbol = label_to_symbol(label)
        file = pseudo_dir / upf
        if not file.is_file():
            raise InputError(f"{path}: the pseudopotential {upf} is not in {pseudo_dir}")
        if symbol in found and found[symbol].name != upf:
            z_first, z_this = read_z_valence(found[symbol]), read_z_valence(file)
            if z_first != z_this:
                raise InputError(f"{path}: two species of {symbol} with different valence")
        found.setdefault(symbol, file)
    return found


def paw_projectors(path: str | os.PathLike) -> list[tuple[int, float]]:
    """Return the angular momentum and atomic occupation (e) of each projector of a PAW dataset.

    Parameters
    ----------
    path
        A UPF file (PAW datasets are UPF 2).

    Returns
    -------
    list of (int, float)
        ``PP_BETA`` angular momenta with the ``PP_PAW`` ``PP_OCCUPATIONS``, in file order;
        empty for a pseudopotential that is not PAW.
    """
    text = Path(path).read_text(errors="replace")
    if not re.search(r'pseudo_type\s*=\s*"\s*PAW\s*"', text, re.IGNORECASE):
        return []
    momenta = [
        int(match.group(1))
        for match in re.finditer(r'<PP_BETA\.\d+[^>]*?angular_momentum\s*=\s*"\s*(\d+)', text)
    ]
    block = re.search(r"<PP_OCCUPATIONS[^>]*>(.*?)</PP_OCCUPATIONS>", text, re.DOTALL)
    occupations = [] if block is None else block.group(1).lower().replace("d", "e").split()
    if not momenta or len(occupations) != len(momenta):
        raise InputError(
            f"{path}: a PAW dataset whose {len(momenta)} projectors and {len(occupations)} "
            "occupations (PP_OCCUPATIONS) do not match"
        )
    return [(m, float(n)) for m, n in zip(momenta, occupations, strict=True)]


def atomic_paw_occupations(pw: PwInput) -> np.ndarray | None:
    """Return the PAW on-site occupations of pw.x's atomic start, or None without PAW.

    pw.x's ``PAW_atomic_becsum`` (without its random noise): each projector's occupation
    spread evenly over its 2l + 1 channels on the diagonal, 0 off it.

    Parameters
    ----------
    pw
        The pw.x input.

    Returns
    -------
    np.ndarray or None
        ``becsum`` (e), shape (nat, nhm (nhm + 1) / 2), atoms in the input's order.

    Raises
    ------
    InputError
        If PAW datasets come with ``nspin = 2`` or beside other kinds of pseudopotential.
    """
    projectors = {symbol: paw_projectors(upf) for symbol, upf in pw.pseudopotentials.items()}
    if not any(projectors.values()):
        return None
    if not all(projectors.values()):
        raise InputError(
            f"{pw.path}: PAW datasets beside other pseudopotentials: the start's PAW "
            "occupations are written for PAW runs only"
        )
    if pw.nspin != 1:
        raise InputError(
            f"{pw.path}: nspin = {pw.nspin} with PAW datasets: the spin-resolved PAW "
            "occupations of such a start are not written; start this run from atoms"
        )
    diagonals = {
        symbol: [n / (2 * m + 1) for m, n in channels for _ in range(2 * m + 1)]
        for symbol, channels in projectors.items()
    }
    most = max(len(diagonal) for diagonal in diagonals.values())
    rows = {}
    for symbol, diagonal in diagonals.items():
        size = len(diagonal)
        # (ih, jh) pairs with ih <= jh, jh running fastest: the diagonal (ih, ih) comes at
        # sum_{i < ih} (size - i)
        starts = np.concatenate([[0], np.cumsum(np.arange(size, 1, -1))])
        rows[symbol] = np.zeros(most * (most + 1) // 2)
        rows[symbol][starts] = diagonal
    return np.array([rows[symbol] for symbol in pw.atoms.get_chemical_symbols()])


def write_paw_occupations(path: str | os.PathLike, becsum: np.ndarray) -> None:
    """Write PAW on-site occupations as pw.x's ``paw.txt`` (list-directed text, 17 digits).

    Parameters
    ----------
    path
        The file to write (``<outdir>/<prefix>.save/paw.txt``).
    becsum
        Occupations (e), shape (nat, nhm (nhm + 1) / 2) (`atomic_paw_occupations`).
    """
    values = np.ravel(becsum)  # C order of (nat, ijh): Fortran order of becsum(ijh, nat)
    lines = (" ".join(f"{v:.16e}" for v in values[i : i + 4]) for i in range(0, values.size, 4))
    write_atomically(path, lambda stream: stream.write("\n".join(lines) + "\n"))


def read_z_valence(path: str | os.PathLike) -> float:
    """Return the valence charge (e) of a UPF pseudopotential (UPF 1 or 2)."""
    text = Path(path).read_text(errors="replace")
    match = re.search(r'z_valence\s*=\s*"\s*([^"\s]+)\s*"', text, re.IGNORECASE) or re.search(
        r"^\s*(\S+)\s+Z valence", text, re.MULTILINE | re.IGNORECASE
    )
    if match is None:
        raise InputError(f"{path}: no z_valence in this pseudopotential")
    return float(match.group(1).lower().replace("d", "e"))


# ----------------------------------------------------------------------------- G vectors


def _qe_reciprocal(cell: np.ndarray) -> tuple[np.ndarray, float]:
    """Return pw.x's reciprocal vectors (rows, in 2 pi/alat) and tpiba = 2 pi/alat (1/bohr).

    pw.x takes alat = |a1| for ``CELL_PARAMETERS angstrom`` or ``bohr``.
    """
    at = np.asarray(cell, dtype=float) / QE_BOHR
    alat = float(np.linalg.norm(at[0]))
    return np.linalg.inv(at / alat).T, 2 * math.pi / alat


def _sphere(cell: np.ndarray, ecutrho: float, gamma_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return the Miller indices with |G|^2 <= ecutrho in pw.x's loop order and their |G|^2.

    |G|^2 is in (2 pi/alat)^2, computed as pw.x's ``ggen`` does.
    """
    bg, tpiba = _qe_reciprocal(cell)
    gcut = ecutrho / tpiba**2
    at_lengths = np.linalg.norm(np.linalg.inv(bg).T, axis=1)
    limits = [int(math.sqrt(gcut) * length) + 1 for length in at_lengths]
    j, k = np.meshgrid(
        np.arange(-limits[1], limits[1] + 1), np.arange(-limits[2], limits[2] + 1), indexing="ij"
    )
    j, k = j.ravel(), k.ravel()
    planes, squares = [], []
    for i in range(0 if gamma_only else -limits[0], limits[0] + 1):
        keep = np.ones(j.shape, dtype=bool)
        if gamma_only and i == 0:
            keep = (j > 0) | ((j == 0) & (k >= 0))
        t = i * bg[0] + j[keep, None] * bg[1] + k[keep, None] * bg[2]
        tt = (t**2).sum(axis=1)
        inside = tt <= gcut
        planes.append(np.stack([np.full(inside.sum(), i), j[keep][inside], k[keep][inside]], 1))
        squares.append(tt[inside])
    return np.concatenate(planes).astype(np.int32), np.concatenate(squares)


def dense_grid(
    cell: np.ndarray, ecutrho: float, multiples: tuple[int, int, int] = (1, 1, 1)
) -> tuple[int, int, int]:
    """Return Quantum ESPRESSO's dense FFT grid for a cell and density cutoff.

    pw.x's rule (``realspace_grid_init``, ``grid_set``): n_i = 2 max|m_i| + 1 over the G
    vectors with |G|^2 < ecutrho, raised to QE's good FFT orders (`fft_friendly` with
    `QE_FFT_FACTORS`). Checked against the "Dense grid ... FFT dimensions" line of pw.x 6.7
    on four cells and 14 cutoffs.

    pw.x also makes n_i a multiple of the denominators of its symmetry operations'
    fractional translations along a_i: diamond Si in its 2-atom cell (translation
    (1/4, 1/4, 1/4)) gets 20, 32, 48 where a structure without that symmetry gets 18, 30,
    45. That depends on pw.x's symmetry search, so it is the caller's ``multiples``. Any
    grid at least this fine holds the density file's G vectors, whatever the symmetry.

    Parameters
    ----------
    cell
        Cell vectors as rows, in Å.
    ecutrho
        Density cutoff in Ry.
    multiples
        Each n_i is a multiple of this (pw.x's ``fft_fact``; 1 without fractional translations).

    Returns
    -------
    tuple of int
        (n1, n2, n3).
    """
    if not 0 < ecutrho < math.inf:
        raise InputError(f"must be a positive number of Ry, got {ecutrho}", "ecutrho")
    miller, _ = _sphere(cell, ecutrho, gamma_only=False)
    largest = np.abs(miller).max(axis=0)
    counts = (
        fft_friendly(2 * n + 1, QE_FFT_FACTORS, m) for n, m in zip(largest, multiples, strict=True)
    )
    return tuple(counts)  # type: ignore[return-value]


def g_vectors(cell: np.ndarray, ecutrho: float, gamma_only: bool = False) -> np.ndarray:
    """Return the Miller indices of pw.x's G vectors with |G|^2 <= ecutrho, in pw.x's order.

    Parameters
    ----------
    cell
        Cell vectors as rows, in Å.
    ecutrho
        Density cutoff in Ry (|G|^2 in 1/bohr^2).
    gamma_only
        Keep only half of the G vectors, as pw.x does with ``K_POINTS gamma``.

    Returns
    -------
    numpy.ndarray
        int32, shape (ngm, 3).
    """
    miller, squares = _sphere(cell, ecutrho, gamma_only)
    order = np.argsort(squares, kind="stable")
    steps = np.diff(squares[order]) >= ORDER_TOLERANCE
    shell = np.concatenate([[0], np.cumsum(steps)])[np.argsort(order)]
    return miller[np.lexsort((miller[:, 2], miller[:, 1], miller[:, 0], shell))]


# ----------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class ChargeDensityHeader:
    """The first two records of ``charge-density.dat``.

    Attributes
    ----------
    gamma_only
        The file holds half of the G vectors.
    nspin
        1 (rho), or 2 (rho, then the magnetisation).
    reciprocal
        b1, b2, b3 as rows, in 1/bohr including 2 pi.
    """

    gamma_only: bool
    nspin: int
    reciprocal: np.ndarray

    @classmethod
    def for_cell(cls, cell: np.ndarray, gamma_only: bool, nspin: int) -> ChargeDensityHeader:
        """Return the header of a density of the cell (rows, Å)."""
        bg, tpiba = _qe_reciprocal(cell)
        return cls(gamma_only, nspin, bg * tpiba)


def read_charge_density(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, ChargeDensityHeader]:
    """Read a pw.x ``charge-density.dat``.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    miller : numpy.ndarray
        int32 Miller indices, shape (ngm, 3).
    rho_g : numpy.ndarray
        complex128 coefficients in e/bohr^3, shape (nspin, ngm): rho, then the magnetisation.
    header : ChargeDensityHeader
    """
    with open(path, "rb") as stream:
        data = stream.read()
    records = _records(path, data)
    if len(records) < 4 or len(records[0]) != 12 or len(records[1]) != 72:
        raise InputError(f"{path}: not a Quantum ESPRESSO charge-density.dat")
    gamma_only, ngm, nspin = (int(v) for v in np.frombuffer(records[0], "<i4"))
    if gamma_only not in (0, 1) or nspin not in (1, 2) or ngm < 1:
        raise InputError(f"{path}: not a Quantum ESPRESSO charge-density.dat")
    sizes = [12, 72, 12 * ngm] + [16 * ngm] * nspin
    if [len(record) for record in records] != sizes:
        raise InputError(f"{path}: records do not hold {ngm} G vectors and {nspin} spin(s)")
    header = ChargeDensityHeader(
        bool(gamma_only), nspin, np.frombuffer(records[1], "<f8").reshape(3, 3).copy()
    )
    miller = np.frombuffer(records[2], "<i4").reshape(ngm, 3).copy()
    rho_g = np.stack([np.frombuffer(record, "<c16") for record in records[3:]])
    if not np.all(np.isfinite(rho_g.view(float))):
        raise InputError(f"{path}: the density holds non-finite values")
    return miller, rho_g, header


def _records(path: str | os.PathLike, data: bytes) -> list[bytes]:
    """Split Fortran unformatted sequential records (int32 length markers)."""
    records, position = [], 0
    while position < len(data):
        if position + 4 > len(data):
            raise InputError(f"{path}: cut inside a record marker")
        (size,) = np.frombuffer(data, "<i4", 1, position)
        end = position + 4 + int(size)
        if size < 0 or end + 4 > len(data) or np.frombuffer(data, "<i4", 1, end)[0] != size:
            raise InputError(f"{path}: broken Fortran record at byte {position}")
        records.append(data[position + 4 : end])
        position = end + 4
    return records


def write_charge_density_coefficients(
    path: str | os.PathLike,
    miller: np.ndarray,
    rho_g: np.ndarray,
    header: ChargeDensityHeader,
) -> None:
    """Write ``charge-density.dat`` from its G vectors and coefficients (as read, byte for byte).

    Parameters
    ----------
    path
        The file to write.
    miller
        Miller indices, shape (ngm, 3), in pw.x's order (see `g_vectors`).
    rho_g
        Coefficients in e/bohr^3, shape (nspin, ngm).
    header
        gamma_only, nspin and the reciprocal vectors (1/bohr).
    """
    miller = np.asarray(miller)
    rho_g = np.atleast_2d(np.asarray(rho_g))
    if miller.ndim != 2 or miller.shape[1] != 3 or rho_g.shape != (header.nspin, len(miller)):
        raise InputError(
            f"needs shape ({header.nspin}, {len(miller)}) for {len(miller)} G vectors, "
            f"got {rho_g.shape}",
            "rho_g",
        )
    head = np.array([int(header.gamma_only), len(miller), header.nspin], "<i4")
    arrays = [head, np.asarray(header.reciprocal, "<f8"), miller.astype("<i4")]
    arrays += [component.astype("<c16") for component in rho_g]

    def write(stream: BinaryIO) -> None:
        for array in arrays:
            size = np.array([array.nbytes], "<i4").tobytes()
            stream.write(size + np.ascontiguousarray(array).tobytes() + size)

    write_atomically(path, write, binary=True)


# ----------------------------------------------------------------------------- grids


def charge_density_to_grid(
    path: str | os.PathLike,
    atoms: Atoms,
    shape: tuple[int, int, int],
    component: str = "total",
) -> np.ndarray:
    """Read ``charge-density.dat`` onto a real-space grid of the structure's cell.

    Parameters
    ----------
    path
        The file.
    atoms
        The structure whose cell (Å) the file must be of.
    shape
        Grid counts (n1, n2, n3); each n_i must hold the file's Miller indices
        (n_i > 2 max|m_i|), e.g. `dense_grid`.
    component
        ``total``, or ``magnetization`` for a spin-polarised file.

    Returns
    -------
    numpy.ndarray
        float64, shape ``shape``, in e/Å^3, point (i, j, k) at (i/n1, j/n2, k/n3).
    """
    miller, rho_g, header = read_charge_density(path)
    cell = check_cell(atoms)
    expected = ChargeDensityHeader.for_cell(cell, header.gamma_only, header.nspin).reciprocal
    if not np.allclose(header.reciprocal, expected, rtol=1e-6, atol=1e-9):
        raise InputError(f"{path}: its reciprocal vectors are not those of the structure's cell")
    choices = {"total": 0, "magnetization": 1}
    if choices.get(component, header.nspin) >= header.nspin:
        raise InputError(f"{path} holds no {component!r} (nspin = {header.nspin})", "component")
    shape = check_grid_shape(shape)
    _check_holds(shape, miller, "shape")
    coefficients = np.zeros(shape, dtype=complex)
    coefficients[tuple((miller % shape).T)] = rho_g[choices[component]]
    if header.gamma_only:
        coefficients[tuple((-miller % shape).T)] = np.conj(rho_g[choices[component]])
    density = np.fft.ifftn(coefficients).real * math.prod(shape)
    return density / QE_BOHR**3


def _check_holds(shape: tuple[int, int, int], miller: np.ndarray, parameter: str) -> None:
    """Refuse a grid too coarse for the Miller indices (each n_i > 2 max|m_i|)."""
    needed = 2 * np.abs(miller).max(axis=0) + 1
    if np.any(np.asarray(shape) < needed):
        raise InputError(
            f"a grid {shape} cannot hold the G vectors of the cutoff: it needs at least "
            f"{tuple(int(n) for n in needed)} (pw.x's grid: see dense_grid)",
            parameter,
        )


def write_charge_density(
    path: str | os.PathLike,
    atoms: Atoms,
    density: np.ndarray,
    ecutrho: float,
    gamma_only: bool = False,
    magnetization: np.ndarray | None = None,
    electrons: float | None = None,
) -> None:
    """Write a density on a grid as pw.x's ``charge-density.dat``, for ``startingpot = 'file'``.

    The grid is Fourier transformed (numpy.fft), the coefficients of the G vectors with
    |G|^2 <= ``ecutrho`` are kept in pw.x's order (pw.x reads them by position).

    Parameters
    ----------
    path
        The file to write (``<outdir>/<prefix>.save/charge-density.dat``).
    atoms
        The structure; its cell (Å) must be the pw.x run's.
    density
        Density in e/Å^3, shape (n1, n2, n3), point (i, j, k) at (i/n1, j/n2, k/n3); each
        n_i must exceed 2 max|m_i| of the cutoff sphere (`dense_grid` does).
    ecutrho
        The run's density cutoff in Ry.
    gamma_only
        The run uses ``K_POINTS gamma``: write half of the G vectors.
    magnetization
        rho_up - rho_down in e/Å^3 on the same grid, for an ``nspin = 2`` run.
    electrons
        Scale the density (not the magnetisation) to hold this many electrons
        (`PwInput.electrons`); None keeps it as it is.
    """
    cell = check_cell(atoms)
    components = [np.asarray(density, dtype=float)]
    if magnetization is not None:
        components.append(np.asarray(magnetization, dtype=float))
    shape = components[0].shape
    if len(shape) != 3 or any(component.shape != shape for component in components):
        raise InputError(f"needs one 3-d grid for every component, got shape {shape}", "density")
    if not all(np.all(np.isfinite(component)) for component in components):
        raise InputError("holds non-finite values", "density")
    if not 0 < ecutrho < math.inf:
        raise InputError(f"must be a positive number of Ry, got {ecutrho}", "ecutrho")
    miller = g_vectors(cell, ecutrho, gamma_only)
    _check_holds(shape, miller, "density")
    index = tuple((miller % shape).T)
    rho_g = np.stack(
        [np.fft.fftn(component)[index] / component.size * QE_BOHR**3 for component in components]
    )
    if electrons is not None:
        held = rho_g[0, 0].real * abs(np.linalg.det(cell)) / QE_BOHR**3
        if not held > 0:
            raise InputError(f"integrates to {held:.6g} electrons: cannot be scaled", "density")
        rho_g[0] *= electrons / held
    header = ChargeDensityHeader.for_cell(cell, gamma_only, len(components))
    write_charge_density_coefficients(path, miller, rho_g, header)
