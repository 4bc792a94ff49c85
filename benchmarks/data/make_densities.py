"""Compute reference charge densities with Quantum ESPRESSO for the dpcharge benchmarks.

Each output is a gzip CHGCAR written by `dpcharge.chgcar.write_chgcar` (VASP layout: POSCAR
header, blank line, ``NX NY NZ``, then rho*V_cell in electrons, Fortran order, 5 values per
line) plus a JSON file beside it that records every setting: code version (from the pw.x
output), the pw.x and pp.x inputs, pseudopotentials, cutoffs, k-points, smearing, convergence
threshold, FFT grid, how the structure was made and its random seed, total energy, wall times
and machine load.

Units: lengths in Å (structures, displacements, grid spacings), energies in Ry (QE input),
densities in e/Å^3 (the CHGCAR holds rho*V_cell, the VASP convention). QE writes the pp.x cube
file in e/bohr^3; it is converted here.

The FFT grid of a system is ``dpcharge.grid.grid_for_spacing(cell, grid_spacing)`` (the
smallest counts with prime factors 2, 3, 5, 7 whose spacing along each cell vector is at most
``grid_spacing``), passed to pw.x as ``nr1, nr2, nr3``; pw.x takes such counts as given and
the script checks that it reports the same dense grid. The pw.x input is written by
``ase.io.write(..., format="espresso-in")``.

Requires ``pw.x``, ``pp.x`` and ``mpirun`` (Debian: ``apt-get install quantum-espresso
quantum-espresso-data``), ase and dpcharge. Examples::

    python benchmarks/data/make_densities.py --dry-run
    python benchmarks/data/make_densities.py --systems si64 --snapshots 5
    python benchmarks/data/make_densities.py --systems si64 --seeds 101 102 --out examples/si64
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111
from ase.io import write
from ase.io.cube import read_cube_data
from ase.units import Bohr
from scipy.spatial.transform import Rotation

from dpcharge.chgcar import read_density, write_chgcar
from dpcharge.grid import grid_for_spacing

PSEUDO_DIR = os.environ.get("ESPRESSO_PSEUDO", "/usr/share/espresso/pseudo")
VALENCE = {"Si": 4, "Al": 3, "Mg": 2, "H": 1, "O": 6, "Fe": 8}

PSEUDO_DENSITY = (
    "pp.x plot_num=0 valence pseudo-density, cube e/bohr^3 converted to e/Å^3; "
    "CHGCAR holds rho*V_cell"
)


@dataclass
class QESettings:
    """Quantum ESPRESSO settings of one material (the same for all its snapshots and cells).

    K-points are not here: they belong to a `System`, scaled to its cell.

    Attributes
    ----------
    pseudopotentials : dict
        Element -> UPF file name in the pseudopotential directory.
    ecutwfc : float
        Plane-wave cutoff of the wavefunctions (Ry).
    ecutrho : float or None
        Plane-wave cutoff of the density (Ry); None = 4 * ecutwfc (norm-conserving).
    smearing : str
        QE smearing name.
    degauss : float
        Smearing width (Ry).
    conv_thr_per_8_atoms : float
        SCF threshold (Ry) per 8 atoms; the input gets this times natoms / 8.
    grid_spacing : float
        Largest FFT grid spacing along each cell vector (Å); the grid is
        ``dpcharge.grid.grid_for_spacing(cell, grid_spacing)``. It must hold the ``ecutrho``
        sphere (checked, see `min_dense_grid`).
    functional : str
        Exchange-correlation functional (from the pseudopotentials; recorded only).
    mixing_beta : float
        SCF charge-mixing factor.
    density : str
        What the written density is (recorded in the JSON).
    starting_magnetization : float or None
        None: a spin-unpolarised run. Otherwise ``nspin = 2`` with this starting
        magnetisation (QE's fraction of the valence, -1 to 1) on every species; pp.x then also
        writes the magnetisation (``plot_num = 6``, rho_up - rho_down) and the CHGCAR is an
        ISPIN=2 file (total block, then magnetisation block).
    """

    pseudopotentials: dict[str, str]
    ecutwfc: float
    ecutrho: float | None = None
    smearing: str = "gaussian"
    degauss: float = 0.005
    conv_thr_per_8_atoms: float = 1e-8
    grid_spacing: float = 0.151
    functional: str = "PBE"
    mixing_beta: float = 0.4
    density: str = PSEUDO_DENSITY
    starting_magnetization: float | None = None

    @property
    def density_cutoff(self) -> float:
        """Return the density cutoff ``ecutrho`` in Ry (4 * ecutwfc when not set)."""
        return self.ecutrho if self.ecutrho is not None else 4 * self.ecutwfc


# ----------------------------------------------------------------------------- structures


def rattled(atoms: Atoms, sigma: float, seed: int) -> Atoms:
    """Displace every atom by independent Gaussian noise.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure (not modified).
    sigma : float
        Standard deviation of each Cartesian displacement component (Å).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    ase.Atoms
        Displaced copy.
    """
    out = atoms.copy()
    rng = np.random.default_rng(seed)
    out.positions += rng.normal(0.0, sigma, size=out.positions.shape)
    out.wrap()
    return out


def si_crystal(repeat: int, seed: int) -> tuple[Atoms, str]:
    """Diamond Si (a = 5.43 Å, cubic cell repeated), Gaussian displacements sigma 0.05 Å."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    recipe = (
        f"ase.build.bulk('Si', 'diamond', a=5.43, cubic=True).repeat({repeat}); every Cartesian "
        f"component displaced by numpy.random.default_rng({seed}).normal(0, 0.05 Å); wrapped"
    )
    return rattled(atoms, 0.05, seed), recipe


HOT_SIGMA = 0.125
"""Gaussian displacement (Å) of the hot Si64: 2.5 times the thermal snapshots' 0.05 Å."""


def si64_hot(seed: int) -> tuple[Atoms, str]:
    """Diamond Si64 (a = 5.43 Å) with larger displacements, sigma `HOT_SIGMA` Å."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    recipe = (
        "ase.build.bulk('Si', 'diamond', a=5.43, cubic=True).repeat(2); every Cartesian "
        f"component displaced by numpy.random.default_rng({seed}).normal(0, {HOT_SIGMA} Å); "
        "wrapped"
    )
    return rattled(atoms, HOT_SIGMA, seed), recipe


def fe_crystal(repeat: int, seed: int) -> tuple[Atoms, str]:
    """Ferromagnetic bcc Fe (a = 2.83 Å, cubic cell repeated), displacements sigma 0.06 Å."""
    atoms = bulk("Fe", "bcc", a=2.83, cubic=True).repeat(repeat)
    recipe = (
        f"ase.build.bulk('Fe', 'bcc', a=2.83, cubic=True).repeat({repeat}); every Cartesian "
        f"component displaced by numpy.random.default_rng({seed}).normal(0, 0.06 Å) (about the "
        "room-temperature RMS displacement of Fe); wrapped; ferromagnetic start"
    )
    return rattled(atoms, 0.06, seed), recipe


def al_slab(seed: int) -> tuple[Atoms, str]:
    """Al(111) 2x2x4 slab, a = 4.05 Å, 12 Å vacuum, Gaussian displacements sigma 0.08 Å."""
    atoms = fcc111("Al", size=(2, 2, 4), a=4.05, vacuum=6.0, orthogonal=False)
    atoms.pbc = True
    recipe = (
        "ase.build.fcc111('Al', (2, 2, 4), a=4.05, vacuum=6.0) (12 Å vacuum in total); every "
        f"Cartesian component displaced by numpy.random.default_rng({seed}).normal(0, 0.08 Å) "
        "(about the room-temperature RMS displacement of Al)"
    )
    return rattled(atoms, 0.08, seed), recipe


def almg_alloy(repeat: int, seed: int, mg_fraction: float = 0.1875) -> tuple[Atoms, str]:
    """Random Al-Mg fcc solid solution (a = 4.10 Å) with Gaussian displacements sigma 0.08 Å."""
    atoms = bulk("Al", "fcc", a=4.10, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    n_mg = round(mg_fraction * len(atoms))
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.choice(len(atoms), n_mg, replace=False)] = "Mg"
    atoms.set_chemical_symbols(list(symbols))
    atoms.positions += rng.normal(0.0, 0.08, size=atoms.positions.shape)
    atoms.wrap()
    recipe = (
        f"ase.build.bulk('Al', 'fcc', a=4.10, cubic=True).repeat({repeat}); {n_mg} random sites "
        f"set to Mg, then every Cartesian component displaced by normal(0, 0.08 Å), both from "
        f"numpy.random.default_rng({seed}) in that order"
    )
    return atoms, recipe


def amorphous_si(seed: int, steps_melt: int = 1500, steps_quench: int = 3000) -> tuple[Atoms, str]:
    """Amorphous Si64 by melt-and-quench with ase's Tersoff potential (Si, Tersoff 1988).

    Diamond Si64 at the experimental amorphous density (2.28 g/cm^3, cubic box 11.1 Å), Langevin
    MD (2 fs, friction 0.02 /fs): ``steps_melt`` steps at 4000 K, then a linear quench to 300 K
    over ``steps_quench`` steps, then a BFGS relaxation (fmax 0.05 eV/Å).
    """
    from ase import units
    from ase.calculators.tersoff import Tersoff
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.optimize import BFGS

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    length = _amorphous_si_length()
    atoms.set_cell([length] * 3, scale_atoms=True)
    atoms.calc = Tersoff(_tersoff_si())
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=4000, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=4000, friction=0.02 / units.fs, rng=rng)
    dyn.run(steps_melt)
    chunk = 100
    for i in range(steps_quench // chunk):
        dyn.set_temperature(temperature_K=4000 - (4000 - 300) * (i + 1) / (steps_quench // chunk))
        dyn.run(chunk)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=500)
    atoms.calc = None
    atoms.wrap()
    recipe = (
        f"Si64 diamond scaled to 2.28 g/cm^3 (cubic {length:.4f} Å); ase Tersoff (Si, 1988 "
        f"parameters) Langevin MD, 2 fs, friction 0.02/fs: {steps_melt} steps at 4000 K, linear "
        f"quench to 300 K over {steps_quench} steps, BFGS to fmax 0.05 eV/Å; "
        f"numpy.random.default_rng({seed}) for velocities and noise"
    )
    return atoms, recipe


def _amorphous_si_length() -> float:
    """Return the edge (Å) of the cubic Si64 cell at the amorphous density 2.28 g/cm^3."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    mass = atoms.get_masses().sum() * 1.66053907e-24  # g
    return (mass / 2.28) ** (1 / 3) * 1e8


def _tersoff_si() -> dict:
    """Return Tersoff (Phys. Rev. B 38, 9902, 1988) Si parameters for ase's Tersoff calculator."""
    from ase.calculators.tersoff import TersoffParameters

    p = TersoffParameters(
        m=3.0,
        gamma=1.0,
        lambda3=0.0,
        c=100390.0,
        d=16.217,
        h=-0.59825,
        n=0.78734,
        beta=1.1e-6,
        lambda2=1.7322,
        B=471.18,
        R=2.85,
        D=0.15,
        lambda1=2.4799,
        A=1830.8,
    )
    return {("Si", "Si", "Si"): p}


def water_box(n_molecules: int, seed: int) -> tuple[Atoms, str]:
    """Water at 1.0 g/cm^3: rigid molecules, random orientations, thermal noise.

    Molecules (O-H 0.9572 Å, H-O-H 104.52°) are inserted one by one at uniform random positions
    with random orientations (random sequential addition); placements with an intermolecular
    O-O < 2.5 Å, O-H < 1.5 Å or H-H < 1.5 Å are redrawn. Then every atom gets Gaussian displacements
    (sigma 0.03 Å for O, 0.08 Å for H).
    """
    rng = np.random.default_rng(seed)
    mass = n_molecules * 18.015 * 1.66053907e-24
    length = (mass / 1.0) ** (1 / 3) * 1e8
    angle = np.deg2rad(104.52) / 2
    oh_x, oh_z = 0.9572 * np.sin(angle), 0.9572 * np.cos(angle)
    local = np.array([[0.0, 0.0, 0.0], [oh_x, 0.0, oh_z], [-oh_x, 0.0, oh_z]])
    cell = np.eye(3) * length
    placed: list[np.ndarray] = []
    for _ in range(n_molecules):
        for _ in range(10000):
            # The four normals Rotation.random draws, read scalar-first as in the committed
            # structures (Rotation.random reads them scalar-last: another rotation).
            rotation = Rotation.from_quat(rng.normal(size=4), scalar_first=True)
            mol = rotation.apply(local) + rng.uniform(0.0, length, 3)
            if all(_far_enough(mol, other, length) for other in placed):
                placed.append(mol)
                break
        else:
            raise RuntimeError("could not place a water molecule; try another seed")
    positions = np.concatenate(placed)
    symbols = ["O", "H", "H"] * n_molecules
    sigma = np.array([0.03, 0.08, 0.08] * n_molecules)[:, None]
    positions = positions + rng.normal(size=positions.shape) * sigma
    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    recipe = (
        f"{n_molecules} rigid H2O (0.9572 Å, 104.52°) at 1.0 g/cm^3 (cubic {length:.4f} Å) "
        "by random sequential addition (uniform position, uniform random rotation; redrawn if "
        "an intermolecular O-O < 2.5 Å or O-H, H-H < 1.5 Å), then Gaussian displacements "
        "sigma 0.03 Å (O) / 0.08 Å (H); "
        f"numpy.random.default_rng({seed}). Not an equilibrated liquid: a disordered packing."
    )
    return atoms, recipe


def _far_enough(a: np.ndarray, b: np.ndarray, length: float) -> bool:
    """Check minimum-image O-O (>= 2.5 Å), O-H and H-H (>= 1.5 Å) distances of two molecules."""
    d = a[:, None, :] - b[None, :, :]
    d -= length * np.round(d / length)
    r = np.linalg.norm(d, axis=-1)
    return bool(
        r[0, 0] >= 2.5
        and r[0, 1:].min() >= 1.5
        and r[1:, 0].min() >= 1.5
        and r[1:, 1:].min() >= 1.5
    )


# ----------------------------------------------------------------------------- systems

SI = QESettings({"Si": "Si.pbe-rrkj.UPF"}, ecutwfc=24.0, grid_spacing=0.151)
SI_US = QESettings(
    {"Si": "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"},
    ecutwfc=44.0,
    ecutrho=352.0,
    grid_spacing=0.087,
    functional="PBE (ultrasoft pslibrary 1.0.0; the UPF suggests at least 44 Ry / 175 Ry)",
    density=(
        "pp.x plot_num=0 valence density INCLUDING the ultrasoft augmentation charges (peaked "
        "at the nuclei, like a VASP CHGCAR), cube e/bohr^3 converted to e/Å^3; CHGCAR holds "
        "rho*V_cell"
    ),
)
AL = QESettings(
    {"Al": "Al.pz-vbc.UPF", "Mg": "Mg.pz-n-vbc.UPF"},
    ecutwfc=20.0,
    degauss=0.02,
    functional="LDA (Perdew-Zunger); Debian ships only LDA pseudopotentials for Al and Mg",
    grid_spacing=0.18,
)
FE = QESettings(
    {"Fe": "Fe.pbe-nd-rrkjus.UPF"},
    ecutwfc=30.0,
    ecutrho=240.0,
    smearing="mv",
    degauss=0.02,
    grid_spacing=0.095,
    mixing_beta=0.2,
    conv_thr_per_8_atoms=1e-6,
    functional=(
        "PBE (ultrasoft, 3d7 4s1: 8 valence electrons, nonlinear core correction; the cutoffs "
        "of QE's own Fe examples). The PAW set with 3s3p semicore (Fe.pbesol-spn-kjpaw_psl, 16 "
        "electrons, 45/360 Ry) took 400 s of CPU per SCF iteration here, and was not used. "
        "Four earlier attempts stalled because pw.x had too few states for the majority spin "
        "(see `bands`); with more (104 in a test run, 0.8 N + 4 = 106 for seeds 1 and 2) the "
        "SCF converged in 33-36 iterations"
    ),
    density=(
        "pp.x plot_num=0 valence density INCLUDING the ultrasoft augmentation charges and "
        "plot_num=6 magnetisation rho_up - rho_down (with its augmentation), cube e/bohr^3 "
        "converted to e/Å^3; the CHGCAR (ISPIN=2) holds rho*V_cell, then the magnetisation*V_cell"
    ),
    starting_magnetization=0.3,
)
WATER = QESettings(
    {"H": "H.pbe-kjpaw.UPF", "O": "O.pbe-kjpaw.UPF"},
    ecutwfc=40.0,
    ecutrho=320.0,
    functional="PBE (PAW datasets; pp.x plot_num=0 gives the pseudo-valence density)",
    grid_spacing=0.0863,
)


@dataclass
class System:
    """A benchmark system: structure builder, QE settings, default seeds, cost estimate.

    Attributes
    ----------
    name : str
        Name used in file names and on the command line.
    build : callable
        Seed -> (structure in Å, text recipe of how it was made).
    settings : QESettings
        DFT settings.
    seeds : list of int
        Default seeds (``--snapshots N`` takes the first N).
    estimate : str
        Cost of one calculation, for ``--dry-run``.
    kpoints : tuple of int or None
        Monkhorst-Pack grid; None = Gamma point only (``K_POINTS gamma``).
    kpoint_shift : bool
        Shift the Monkhorst-Pack grid by half a step (fewer irreducible points).
    """

    name: str
    build: Callable[[int], tuple[Atoms, str]]
    settings: QESettings
    seeds: list[int]
    estimate: str
    kpoints: tuple[int, int, int] | None = None
    kpoint_shift: bool = False


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in [
        System(
            "si64", lambda seed: si_crystal(2, seed), SI, list(range(1, 11)), "~20-60 s each, 72^3"
        ),
        System(
            "si64k",
            lambda seed: si_crystal(2, seed),
            SI,
            list(range(1, 11)),
            "si64 with k 2x2x2 shifted (si64 samples the 8-atom cell like a 2x2x2 grid at Gamma, "
            "this like a 4x4x4), 72^3",
            kpoints=(2, 2, 2),
            kpoint_shift=True,
        ),
        System(
            "si64k3",
            lambda seed: si_crystal(2, seed),
            SI,
            [1],
            "si64 with k 3x3x3 shifted: is si64k's 2x2x2 converged? (~35 min on 2 ranks)",
            kpoints=(3, 3, 3),
            kpoint_shift=True,
        ),
        System("si64hot", si64_hot, SI, [7], "~20-60 s, 72^3 (out of distribution for si64)"),
        System(
            "si216",
            lambda seed: si_crystal(3, seed),
            SI,
            [1001],
            "~2 h on 1 rank beside other jobs (measured), 108^3",
        ),
        System(
            "si64us",
            lambda seed: si_crystal(2, seed),
            SI_US,
            list(range(1, 11)),
            "a few minutes each on 1 rank, 125^3",
        ),
        System(
            "si216us",
            lambda seed: si_crystal(3, seed),
            SI_US,
            [1001],
            "hours (estimate; not run), 189^3",
        ),
        System(
            "fe16",
            lambda seed: fe_crystal(2, seed),
            FE,
            list(range(1, 11)),
            "spin-polarised ultrasoft, k 2x2x2 shifted, 60^3 (estimate 10-20 min on 1 rank)",
            kpoints=(2, 2, 2),
            kpoint_shift=True,
        ),
        System(
            "alslab", al_slab, AL, list(range(1, 11)), "~10-30 s each, k 4x4x1", kpoints=(4, 4, 1)
        ),
        System(
            "almg32",
            lambda seed: almg_alloy(2, seed),
            AL,
            list(range(1, 11)),
            "~1 min each, k 3x3x3",
            kpoints=(3, 3, 3),
        ),
        System(
            "almg108",
            lambda seed: almg_alloy(3, seed),
            AL,
            [1001],
            "1-2 h (estimate; 10 min before the first SCF step on 1 rank), k 2x2x2",
            kpoints=(2, 2, 2),
        ),
        System("asi64", amorphous_si, SI, list(range(1, 11)), "MD ~5 min + ~30 s DFT each"),
        System(
            "water32", lambda seed: water_box(32, seed), WATER, list(range(1, 11)), "~5-10 min each"
        ),
        System(
            "water64",
            lambda seed: water_box(64, seed),
            WATER,
            [1001],
            "1-3 h (estimate), 144^3 grid",
        ),
    ]
}


# ----------------------------------------------------------------------------- QE


def fft_grid(atoms: Atoms, settings: QESettings) -> tuple[int, int, int]:
    """Return the FFT grid (NX, NY, NZ) of a structure: `grid_for_spacing` at the spacing.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (cell in Å).
    settings : QESettings
        Its settings (``grid_spacing`` in Å, ``ecutrho`` in Ry).

    Returns
    -------
    tuple of int
        Grid counts, passed to pw.x as ``nr1, nr2, nr3``.

    Raises
    ------
    ValueError
        The grid is too coarse to hold the density's plane waves up to ``ecutrho``.
    """
    grid = grid_for_spacing(atoms.cell[:], settings.grid_spacing)
    needed = min_dense_grid(atoms, settings.density_cutoff)
    if any(n < m for n, m in zip(grid, needed, strict=True)):
        raise ValueError(
            f"grid {grid} at {settings.grid_spacing} Å cannot hold ecutrho "
            f"{settings.density_cutoff} Ry (needs at least {needed})"
        )
    return grid


def min_dense_grid(atoms: Atoms, ecutrho: float) -> tuple[int, int, int]:
    """Return the smallest counts that hold every plane wave of the density up to ``ecutrho``.

    A reciprocal vector G = sum_j n_j b_j has n_i = G . a_i / (2 pi) <= |G| |a_i| / (2 pi), so
    the grid needs 2 n_max + 1 points along a_i, with |G| <= sqrt(ecutrho) (bohr^-1, ecutrho
    in Ry). pw.x starts its own grid from the same bound.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (cell in Å).
    ecutrho : float
        Density cutoff (Ry).

    Returns
    -------
    tuple of int
        Minimum counts along the three cell vectors.
    """
    lengths = atoms.cell.lengths() / Bohr  # bohr
    return tuple(  # type: ignore[return-value]
        2 * math.floor(math.sqrt(ecutrho) * length / (2 * math.pi)) + 1 for length in lengths
    )


def bands(valence_electrons: int, spin_polarised: bool) -> int:
    """Return the Kohn-Sham states per spin channel pw.x computes (``nbnd``).

    pw.x's default, ``1.2 * N / 2`` (N valence electrons), is too few for a strong ferromagnet
    in a large cell: the majority channel of Fe16 (128 e, about 32 Bohr magnetons) holds about
    80 electrons, so 80 states would all be full, occupations could not move, and the SCF
    stalled (four attempts on 23 Nov 2026). Spin-polarised runs get ``0.8 N + 4``.
    """
    if spin_polarised:
        return int(valence_electrons * 0.8) + 4
    return int(valence_electrons / 2 * 1.2) + 4


def kpoints_label(kpoints: tuple[int, int, int] | None, kpoint_shift: bool) -> str:
    """Return how a run samples the Brillouin zone, as the result files record it."""
    if kpoints is None:
        return "gamma"
    return f"MP {kpoints} {'shifted' if kpoint_shift else 'unshifted'}"


def pw_input(
    atoms: Atoms,
    settings: QESettings,
    kpoints: tuple[int, int, int] | None,
    grid: tuple[int, int, int],
    kpoint_shift: bool = False,
) -> str:
    """Return the pw.x SCF input for ``atoms``, written by ase (cell and positions in Å).

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (Å).
    settings : QESettings
        Cutoffs (Ry), smearing, convergence and mixing settings, pseudopotentials.
    kpoints : tuple of int or None
        Unshifted Monkhorst-Pack grid; None = Gamma point (``K_POINTS gamma``).
    grid : tuple of int
        Dense FFT grid, ``nr1, nr2, nr3``.
    kpoint_shift : bool
        Shift the Monkhorst-Pack grid by half a step.

    Returns
    -------
    str
        The input text (the pseudopotential directory is `PSEUDO_DIR`).
    """
    nelec = sum(VALENCE[x] for x in atoms.get_chemical_symbols())
    input_data = {
        "control": {
            "calculation": "scf",
            "prefix": "pw",
            "outdir": "./tmp",
            "pseudo_dir": PSEUDO_DIR,
        },
        "system": {
            "ecutwfc": settings.ecutwfc,
            "ecutrho": settings.density_cutoff,
            "occupations": "smearing",
            "smearing": settings.smearing,
            "degauss": settings.degauss,
            "nbnd": bands(nelec, settings.starting_magnetization is not None),
            "nr1": grid[0],
            "nr2": grid[1],
            "nr3": grid[2],
        },
        "electrons": {
            "conv_thr": settings.conv_thr_per_8_atoms * len(atoms) / 8,
            "mixing_beta": settings.mixing_beta,
            "electron_maxstep": 200,
        },
    }
    moments = np.zeros(len(atoms))
    if settings.starting_magnetization is not None:
        input_data["system"]["nspin"] = 2
        moments += settings.starting_magnetization  # ase writes it as starting_magnetization
    buf = io.StringIO()
    write(
        buf,
        Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True, magmoms=moments),
        format="espresso-in",
        input_data=input_data,
        pseudopotentials=settings.pseudopotentials,
        kpts=kpoints,
        koffset=(1, 1, 1) if kpoint_shift else (0, 0, 0),
    )
    return buf.getvalue()


PP_INPUT = """&inputpp
  prefix = 'pw'
  outdir = './tmp'
  filplot = '{name}.dat'
  plot_num = {plot_num}
/
&plot
  iflag = 3
  output_format = 6
  fileout = '{name}.cube'
/
"""
"""pp.x input writing one quantity (``plot_num``: 0 density, 6 magnetisation) as a cube file."""


def mpirun(nproc: int) -> list[str]:
    """Return the mpirun prefix (adds ``--allow-run-as-root`` when running as root)."""
    cmd = ["mpirun", "-np", str(nproc)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def run_qe(
    atoms: Atoms,
    settings: QESettings,
    kpoints: tuple[int, int, int] | None,
    nproc: int,
    kpoint_shift: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, object]]:
    """Run pw.x and pp.x for ``atoms`` and return the density (e/Å^3, (NX, NY, NZ)) and metadata.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (Å).
    settings : QESettings
        QE settings.
    kpoints : tuple of int or None
        Monkhorst-Pack grid, None = Gamma.
    nproc : int
        MPI ranks.
    kpoint_shift : bool
        Shift the Monkhorst-Pack grid by half a step.

    Returns
    -------
    density : numpy.ndarray
        Valence density from pp.x ``plot_num=0`` in e/Å^3; ``density[i, j, k]`` at fractional
        (i/NX, j/NY, k/NZ).
    magnetization : numpy.ndarray or None
        For a spin-polarised run, pp.x ``plot_num=6`` (rho_up - rho_down) in e/Å^3, same grid.
    meta : dict
        Code version, inputs, wall times, load, total energy (Ry), SCF iterations.
    """
    grid = fft_grid(atoms, settings)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    with tempfile.TemporaryDirectory(prefix="dpcharge_qe_") as work:
        wd = Path(work)
        (wd / "pw.in").write_text(pw_input(atoms, settings, kpoints, grid, kpoint_shift))
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        with open(wd / "pw.in") as fin, open(wd / "pw.out", "w") as fout:
            subprocess.run(
                [*mpirun(nproc), "pw.x"], stdin=fin, stdout=fout, cwd=wd, env=env, check=True
            )
        t_pw = time.perf_counter() - t0
        out = (wd / "pw.out").read_text()
        if "convergence has been achieved" not in out:
            raise RuntimeError("pw.x SCF did not converge:\n" + out[-3000:])
        dense = re.search(r"Dense\s+grid:.*FFT dimensions:\s*\(\s*(\d+),\s*(\d+),\s*(\d+)\)", out)
        if dense is None or tuple(int(n) for n in dense.groups()) != grid:
            raise RuntimeError(f"pw.x dense grid {dense and dense.groups()} is not {grid}")
        t0 = time.perf_counter()
        quantities = {"rho": 0} if settings.starting_magnetization is None else {"rho": 0, "mag": 6}
        volumes = {}
        for name, plot_num in quantities.items():
            (wd / f"{name}.in").write_text(PP_INPUT.format(name=name, plot_num=plot_num))
            with open(wd / f"{name}.in") as fin, open(wd / f"{name}.out", "w") as fout:
                subprocess.run(
                    [*mpirun(nproc), "pp.x"], stdin=fin, stdout=fout, cwd=wd, env=env, check=True
                )
            data, _ = read_cube_data(str(wd / f"{name}.cube"))
            volumes[name] = np.asarray(data, dtype=np.float64) / Bohr**3  # e/bohr^3 -> e/Å^3
            if volumes[name].shape != grid:
                raise RuntimeError(f"pp.x grid {volumes[name].shape} is not the requested {grid}")
        t_pp = time.perf_counter() - t0
        density, magnetization = volumes["rho"], volumes.get("mag")
        version = re.search(r"Program PWSCF (v\.\S+)", out)
        energy = re.findall(r"!\s+total energy\s+=\s+(-?\d+\.\d+) Ry", out)
        iters = re.search(r"convergence has been achieved in\s+(\d+) iterations", out)
        meta: dict[str, object] = {
            "code": "Quantum ESPRESSO pw.x " + (version.group(1) if version else "unknown"),
            "pw_input": (wd / "pw.in").read_text().replace(PSEUDO_DIR, "$ESPRESSO_PSEUDO"),
            "pp_inputs": [PP_INPUT.format(name=n, plot_num=k) for n, k in quantities.items()],
            "total_energy_Ry": float(energy[-1]) if energy else None,
            "scf_iterations": int(iters.group(1)) if iters else None,
            "total_magnetization_Bohr_mag_per_cell": (
                float(moment[-1]) if (moment := re.findall(_MOMENT, out)) else None
            ),
            "wall_time_pw_s": round(t_pw, 1),
            "wall_time_pp_s": round(t_pp, 1),
            "mpi_ranks": nproc,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
    return density, magnetization, meta


_MOMENT = r"total magnetization\s+=\s+(-?\d+\.\d+) Bohr mag/cell"
"""pw.x's total magnetisation line (spin-polarised runs)."""


# ----------------------------------------------------------------------------- driver


def output_stem(out: Path, system: System, seed: int) -> Path:
    """Return ``out/CHGCAR_<system>_seed<seed>`` (add ``.gz`` or ``.json``)."""
    return out / f"CHGCAR_{system.name}_seed{seed}"


def compute(system: System, seed: int, out: Path, nproc: int, force: bool) -> Path | None:
    """Build one structure, run QE, write ``CHGCAR_<system>_seed<seed>.gz`` and its JSON.

    Parameters
    ----------
    system : System
        What to compute.
    seed : int
        Structure seed.
    out : pathlib.Path
        Output folder.
    nproc : int
        MPI ranks of pw.x and pp.x.
    force : bool
        Recompute when both outputs exist.

    Returns
    -------
    pathlib.Path or None
        The CHGCAR written, None when skipped.

    Raises
    ------
    RuntimeError
        pw.x did not converge, used another grid, or the file read back differs from the
        density or does not hold the valence electrons to 1e-5 relative.
    """
    stem = output_stem(out, system, seed)
    target = stem.with_suffix(".gz")
    if target.exists() and stem.with_suffix(".json").exists() and not force:
        print(f"skip {target} (exists)")
        return None
    t0 = time.perf_counter()
    atoms, recipe = system.build(seed)
    t_build = time.perf_counter() - t0
    nelec = sum(VALENCE[x] for x in atoms.get_chemical_symbols())
    print(
        f"{system.name} seed {seed}: {atoms.get_chemical_formula()}, {nelec} electrons", flush=True
    )
    density, magnetization, meta = run_qe(
        atoms, system.settings, system.kpoints, nproc, system.kpoint_shift
    )
    out.mkdir(parents=True, exist_ok=True)
    write_chgcar(target, atoms, density, magnetization)
    back_atoms, back = read_density(target)
    electrons = float(back.sum() * back_atoms.get_volume() / back.size)
    rel = abs(electrons - nelec) / nelec
    if rel > 1e-5 or np.abs(back - density).max() > 1e-9 * max(1.0, np.abs(density).max()):
        raise RuntimeError(f"{target}: read-back check failed ({electrons} electrons)")
    if magnetization is not None:
        _, back = read_density(target, component="magnetization")
        if np.abs(back - magnetization).max() > 1e-9 * max(1.0, np.abs(magnetization).max()):
            raise RuntimeError(f"{target}: read-back check of the magnetisation failed")
        meta["grid_moment_Bohr_mag"] = float(back.mean() * back_atoms.get_volume())
    s = system.settings
    record = {
        "file": target.name,
        "system": system.name,
        "formula": atoms.get_chemical_formula(),
        "natoms": len(atoms),
        "seed": seed,
        "structure_recipe": recipe,
        "structure_build_time_s": round(t_build, 1),
        "functional": s.functional,
        "pseudopotentials": s.pseudopotentials,
        "pseudo_dir": "Debian quantum-espresso-data, /usr/share/espresso/pseudo",
        "ecutwfc_Ry": s.ecutwfc,
        "ecutrho_Ry": s.density_cutoff,
        "kpoints": kpoints_label(system.kpoints, system.kpoint_shift),
        "smearing": s.smearing,
        "degauss_Ry": s.degauss,
        "conv_thr_Ry": s.conv_thr_per_8_atoms * len(atoms) / 8,
        "grid_spacing_A": s.grid_spacing,
        "fft_grid": list(density.shape),
        "density": s.density,
        "valence_electrons": nelec,
        "grid_electrons": electrons,
        "grid_electrons_relative_error": rel,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "script": "benchmarks/data/make_densities.py",
        **meta,
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"  wrote {target} ({target.stat().st_size / 1e6:.2f} MB), grid {density.shape}, "
        f"{electrons:.6f} electrons, pw.x {meta['wall_time_pw_s']} s, "
        f"load {meta['load_average_before']}",
        flush=True,
    )
    return target


def dry_run(system: System, seed: int, out: Path, force: bool) -> None:
    """Print what `compute` would do, the grid it would use and the grid recorded in the JSON.

    The grid needs the cell only, so the structure is built only when a JSON records a grid
    (to compare) and the builder is cheap; an amorphous Si structure (minutes of MD) is not
    built and its grid is taken from the ideal cell, which has the same lengths.
    """
    stem = output_stem(out, system, seed)
    record_path = stem.with_suffix(".json")
    done = stem.with_suffix(".gz").exists() and record_path.exists()
    state = "exists, skip" if done and not force else f"compute ({system.estimate})"
    if system.build is amorphous_si:
        cell_atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
        cell_atoms.set_cell([_amorphous_si_length()] * 3, scale_atoms=True)
    else:
        cell_atoms = system.build(seed)[0]
    grid = "x".join(str(n) for n in fft_grid(cell_atoms, system.settings))
    recorded = "no JSON"
    if record_path.exists():
        old = "x".join(str(n) for n in json.loads(record_path.read_text())["fft_grid"])
        recorded = f"JSON {old} " + ("same" if old == grid else "DIFFERENT")
    print(f"{system.name:8s} seed {seed:5d} grid {grid:11s} ({recorded}) {stem.name}.gz: {state}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--snapshots", type=int, help="number of seeds per system (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (override defaults)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "densities")
    parser.add_argument("--nproc", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--force", action="store_true", help="recompute existing outputs")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be computed and the grid of each file, against its JSON",
    )
    args = parser.parse_args(argv)
    for name in args.systems:
        system = SYSTEMS[name]
        seeds = args.seeds or system.seeds
        if args.snapshots is not None:
            seeds = seeds[: args.snapshots]
        for seed in seeds:
            if args.dry_run:
                dry_run(system, seed, args.out, args.force)
            else:
                compute(system, seed, args.out, args.nproc, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
