"""Quantum ESPRESSO's charge-density.dat: read, written, on grids, and read back by pw.x.

The files in ``tests/data/qe`` were written by Debian's pw.x 6.7 and pp.x (see its
README.md). The restart test runs pw.x when it is installed.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from ase.io.cube import read_cube
from conftest import scf_result

from dpcharge.errors import InputError
from dpcharge.espresso import (
    PAW_OCCUPATIONS,
    QE_BOHR,
    QE_FFT_FACTORS,
    ChargeDensityHeader,
    atomic_paw_occupations,
    charge_density_to_grid,
    dense_grid,
    g_vectors,
    paw_projectors,
    read_charge_density,
    read_pw_input,
    read_z_valence,
    write_charge_density,
    write_charge_density_coefficients,
    write_paw_occupations,
)
from dpcharge.grid import fft_friendly

QE = Path(__file__).parent / "data" / "qe"
RUNS = ("si2", "si8_gamma", "si2_spin")
PSEUDO = Path("/usr/share/espresso/pseudo")
SI_UPF = PSEUDO / "Si.pbe-rrkj.UPF"
needs_upf = pytest.mark.skipif(
    not SI_UPF.is_file(), reason=f"needs {SI_UPF} (quantum-espresso-data)"
)
PW = shutil.which("pw.x")
needs_pw = pytest.mark.skipif(
    PW is None or not SI_UPF.is_file(),
    reason="needs pw.x and Si.pbe-rrkj.UPF: apt-get install quantum-espresso quantum-espresso-data",
)

PAW_UPF = (PSEUDO / "O.pbe-kjpaw.UPF", PSEUDO / "H.pbe-kjpaw.UPF")
needs_paw = pytest.mark.skipif(
    not all(upf.is_file() for upf in PAW_UPF), reason="needs the PAW datasets of H and O"
)
WATER_PAW = f"""&CONTROL
  calculation = 'scf'
  prefix = 'h2o'
  outdir = './out'
  pseudo_dir = '{PSEUDO}'
/
&SYSTEM
  ibrav = 0
  nat = 3
  ntyp = 2
  ecutwfc = 25
  ecutrho = 200
/
&ELECTRONS
  conv_thr = 1e-8
/
ATOMIC_SPECIES
O 15.999 O.pbe-kjpaw.UPF
H 1.008 H.pbe-kjpaw.UPF
CELL_PARAMETERS angstrom
6.0 0.0 0.0
0.0 6.5 0.0
0.0 0.0 5.5
ATOMIC_POSITIONS angstrom
O 3.00 3.00 2.80
H 3.76 3.59 2.80
H 2.24 3.59 2.85
K_POINTS gamma
"""
"""A water molecule with PAW datasets: pw.x reads PAW occupations beside the density."""

ECUTRHO = {"si2": 80.0, "si8_gamma": 48.0, "si2_spin": 48.0}
ELECTRONS = {"si2": 8, "si8_gamma": 32, "si2_spin": 8}


def unpacked(run: str, folder: Path) -> Path:
    """Return the run's charge-density.dat, gunzipped into ``folder``."""
    path = folder / f"{run}-charge-density.dat"
    path.write_bytes(gzip.decompress((QE / run / "charge-density.dat.gz").read_bytes()))
    return path


def structure(run: str):
    """Return the run's structure as ase reads its pw.x input."""
    return read(QE / run / "scf.in", format="espresso-in")


@pytest.mark.parametrize("run", RUNS)
def test_file_layout_and_units(run, tmp_path):
    miller, rho_g, header = read_charge_density(unpacked(run, tmp_path))
    atoms = structure(run)
    assert header.gamma_only == (run == "si8_gamma")
    assert header.nspin == (2 if run == "si2_spin" else 1)
    assert rho_g.shape == (header.nspin, len(miller))
    # b_i . a_j = 2 pi delta_ij with a in bohr (QE 6.7 converts Å with CODATA 2018)
    cell_bohr = atoms.cell.array / QE_BOHR
    np.testing.assert_allclose(header.reciprocal @ cell_bohr.T, 2 * np.pi * np.eye(3), atol=1e-13)
    # |G|^2 (1/bohr^2) <= ecutrho (Ry); G = 0 first; rho(G=0) V = electrons (e/bohr^3)
    squares = ((miller @ header.reciprocal) ** 2).sum(axis=1)
    assert squares.max() <= ECUTRHO[run] and np.all(miller[0] == 0)
    volume = abs(np.linalg.det(cell_bohr))
    assert rho_g[0, 0].real * volume == pytest.approx(ELECTRONS[run], abs=1e-6)
    if run == "si2_spin":  # the second record is the magnetisation (tot_magnetization = 2)
        assert rho_g[1, 0].real * volume == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("run", RUNS)
def test_written_back_bit_for_bit(run, tmp_path):
    original = unpacked(run, tmp_path)
    copy = tmp_path / "copy.dat"
    write_charge_density_coefficients(copy, *read_charge_density(original))
    assert copy.read_bytes() == original.read_bytes()


@pytest.mark.parametrize("run", RUNS)
def test_g_vectors_in_pw_order(run, tmp_path):
    miller, _, header = read_charge_density(unpacked(run, tmp_path))
    cell = structure(run).cell.array
    np.testing.assert_array_equal(g_vectors(cell, ECUTRHO[run], header.gamma_only), miller)


@pytest.mark.parametrize("run", ["si2", "si8_gamma"])
def test_grid_equals_pp_x(run, tmp_path):
    with gzip.open(QE / run / "rho.cube.gz", "rt") as stream:
        cube = read_cube(stream)["data"]  # pp.x plot_num = 0, e/bohr^3, 5 digits
    atoms = structure(run)
    density = charge_density_to_grid(unpacked(run, tmp_path), atoms, cube.shape)
    np.testing.assert_allclose(density * QE_BOHR**3, cube, rtol=5.1e-5, atol=0)
    assert density.mean() * atoms.get_volume() == pytest.approx(ELECTRONS[run], abs=1e-6)


def test_magnetization_on_grid(tmp_path):
    path, atoms = unpacked("si2_spin", tmp_path), structure("si2_spin")
    total = charge_density_to_grid(path, atoms, (18, 18, 18))
    magnetization = charge_density_to_grid(path, atoms, (18, 18, 18), "magnetization")
    assert total.mean() * atoms.get_volume() == pytest.approx(8, abs=1e-6)
    assert magnetization.mean() * atoms.get_volume() == pytest.approx(2, abs=1e-6)
    with pytest.raises(InputError, match="component"):
        charge_density_to_grid(
            unpacked("si2", tmp_path), structure("si2"), (24,) * 3, "magnetization"
        )


@pytest.mark.parametrize("run", RUNS)
def test_write_from_grid_reproduces_pw_file(run, tmp_path):
    path, atoms = unpacked(run, tmp_path), structure(run)
    miller, rho_g, header = read_charge_density(path)
    shape = dense_grid(atoms.cell.array, ECUTRHO[run])
    density = charge_density_to_grid(path, atoms, shape)
    magnetization = None
    if header.nspin == 2:
        magnetization = charge_density_to_grid(path, atoms, shape, "magnetization")
    written = tmp_path / "written.dat"
    write_charge_density(written, atoms, density, ECUTRHO[run], header.gamma_only, magnetization)
    miller_w, rho_g_w, header_w = read_charge_density(written)
    np.testing.assert_array_equal(miller_w, miller)
    np.testing.assert_allclose(rho_g_w, rho_g, rtol=0, atol=1e-15)
    np.testing.assert_allclose(header_w.reciprocal, header.reciprocal, rtol=1e-15, atol=0)
    # scaled to a number of electrons: the density only, not the magnetisation
    write_charge_density(
        written, atoms, 1.1 * density, ECUTRHO[run], header.gamma_only, magnetization, 8.5
    )
    _, scaled, _ = read_charge_density(written)
    volume = atoms.get_volume() / QE_BOHR**3
    assert scaled[0, 0].real * volume == pytest.approx(8.5, rel=1e-14)
    np.testing.assert_allclose(scaled[0], rho_g[0] * 8.5 / (rho_g[0, 0].real * volume), atol=1e-15)
    np.testing.assert_allclose(scaled[1:], rho_g[1:], atol=1e-15)


# pw.x 6.7's "Dense grid: N G-vectors FFT dimensions: (n1, n2, n3)", K_POINTS 1 1 1 (full
# sphere), Si.pbe-rrkj.UPF; cells built with ase (Å); "fcc" is ideal diamond Si2, whose
# fractional translation (1/4, 1/4, 1/4) makes pw.x take multiples of 4.
FCC = [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]
HEX = [[3.1, 0, 0], [-1.55, 2.6847, 0], [0, 0, 5.0]]
TRICLINIC = [4.0, 4.7, 5.9, 75, 82, 104]
ORTHO = [3.0, 4.1, 11.3]
PW_GRIDS = [
    (FCC, 60, 2109, (20, 20, 20), 4),
    (FCC, 100, 4573, (24, 24, 24), 4),
    (FCC, 150, 8393, (32, 32, 32), 4),
    (FCC, 200, 12939, (36, 36, 36), 4),
    (FCC, 300, 23589, (48, 48, 48), 4),
    (HEX, 90, 4031, (18, 18, 30), 1),
    (HEX, 140, 7763, (24, 24, 36), 1),
    (HEX, 240, 17681, (30, 30, 48), 1),
    (TRICLINIC, 70, 6775, (24, 24, 30), 1),
    (TRICLINIC, 110, 13345, (25, 30, 40), 1),
    (TRICLINIC, 180, 27927, (36, 40, 48), 1),
    (ORTHO, 64, 8115, (15, 20, 60), 1),
    (ORTHO, 130, 23413, (24, 30, 80), 1),
    (ORTHO, 260, 66451, (30, 40, 120), 1),
]


@pytest.mark.parametrize(("cell", "ecutrho", "ngm", "grid", "multiple"), PW_GRIDS)
def test_dense_grid_as_pw_x(cell, ecutrho, ngm, grid, multiple):
    from ase.cell import Cell

    vectors = Cell.new(cell).array
    assert dense_grid(vectors, ecutrho, (multiple,) * 3) == grid
    assert len(g_vectors(vectors, ecutrho)) == ngm


def test_dense_grid_without_symmetry():
    # the same ideal fcc cell: 2 max|m| + 1 = 17, 29, 45, raised to factors 2, 3, 5
    assert [dense_grid(np.array(FCC), e) for e in (60, 150, 300)] == [
        (18, 18, 18),
        (30, 30, 30),
        (45, 45, 45),
    ]
    assert [fft_friendly(n, QE_FFT_FACTORS) for n in (21, 33, 35, 49, 77)] == [24, 36, 36, 50, 80]
    assert fft_friendly(18, QE_FFT_FACTORS, 4) == 20


@needs_upf
def test_read_pw_input(tmp_path, monkeypatch):
    monkeypatch.delenv("ESPRESSO_TMPDIR", raising=False)
    pw = read_pw_input(QE / "si2" / "scf.in", workdir=tmp_path)
    assert (pw.prefix, pw.ecutwfc, pw.ecutrho, pw.nspin) == ("si", 20, 80, 1)
    assert pw.startingpot == "atomic" and not pw.gamma_only and pw.electrons == 8
    assert pw.charge_density_path == tmp_path / "out" / "si.save" / "charge-density.dat"
    assert read_pw_input(QE / "si8_gamma" / "scf.in").gamma_only
    spin = read_pw_input(QE / "si2_spin" / "scf.in")
    assert spin.nspin == 2 and spin.ecutrho == 48
    text = (QE / "si2" / "scf.in").read_text()
    text = re.sub(r"  outdir.*\n", "", text).replace(
        "ecutwfc = 20", "ecutwfc = 20\n  tot_charge = 1"
    )
    (tmp_path / "scf.in").write_text(text)
    pw = read_pw_input(tmp_path / "scf.in", workdir="/elsewhere")
    assert pw.outdir == Path("/elsewhere") and pw.prefix == "si" and pw.electrons == 7
    monkeypatch.setenv("ESPRESSO_TMPDIR", "/scratch/qe")
    assert read_pw_input(tmp_path / "scf.in").outdir == Path("/scratch/qe")
    assert read_pw_input(tmp_path / "scf.in").dense_grid == (24, 24, 24)
    # pw.x 6.7 takes nr1, nr2, nr3 as given: "FFT dimensions: (  28,  21,  27)"
    (tmp_path / "scf.in").write_text(text.replace("tot_charge = 1", "nr1 = 28, nr2 = 21, nr3 = 27"))
    assert read_pw_input(tmp_path / "scf.in").dense_grid == (28, 21, 27)


@needs_upf
def test_z_valence_upf_versions():
    assert read_z_valence(SI_UPF) == 4
    fe = PSEUDO / "Fe.pbesol-spn-kjpaw_psl.1.0.0.UPF"
    if fe.is_file():
        assert read_z_valence(fe) == 16


def test_mistakes(tmp_path):
    path, atoms = unpacked("si2", tmp_path), structure("si2")
    data = path.read_bytes()
    for name, content in [("cut.dat", data[:-5]), ("empty.dat", b""), ("text.dat", b"rho\n" * 9)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=name):
            read_charge_density(tmp_path / name)
    with pytest.raises(InputError, match="shape"):
        charge_density_to_grid(path, atoms, (20, 24, 24))
    other = atoms.copy()
    other.set_cell(atoms.cell * 1.01, scale_atoms=True)
    with pytest.raises(InputError, match="reciprocal vectors"):
        charge_density_to_grid(path, other, (24, 24, 24))
    with pytest.raises(InputError, match="density"):
        write_charge_density(tmp_path / "x.dat", atoms, np.ones((16, 16, 16)), 80)
    with pytest.raises(InputError, match="ecutrho"):
        dense_grid(atoms.cell.array, 0)
    with pytest.raises(InputError, match="rho_g"):
        write_charge_density_coefficients(
            tmp_path / "x.dat",
            np.zeros((2, 3)),
            np.zeros(3),
            ChargeDensityHeader(False, 1, np.eye(3)),
        )
    assert not (tmp_path / "x.dat").exists()


# ----------------------------------------------------------------------------- pw.x restart


def call_pw(folder: Path, text: str) -> subprocess.CompletedProcess:
    """Run pw.x (one process, nice 10) on an input in ``folder``, however it ends."""
    (folder / "scf.in").write_text(text)
    return subprocess.run(
        ["nice", "-n", "10", PW, "-in", "scf.in"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_pw(folder: Path, text: str) -> str:
    """Run pw.x on an input in ``folder``; check that it finished; return its output."""
    done = call_pw(folder, text)
    assert "JOB DONE" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@needs_pw
@pytest.mark.parametrize("run", RUNS)
def test_pw_x_starts_from_written_density(run, tmp_path):
    text = (QE / run / "scf.in").read_text()
    conv_thr = float(re.search(r"conv_thr\s*=\s*(\S+)", text).group(1))
    first, second = tmp_path / "atomic", tmp_path / "file"
    first.mkdir(), second.mkdir()
    atomic = run_pw(first, text)
    energy, iterations = scf_result(atomic)

    pw = read_pw_input(first / "scf.in", workdir=first)
    dense = re.search(r"Dense  grid:.*FFT dimensions: \(\s*(\d+),\s*(\d+),\s*(\d+)\)", atomic)
    assert pw.dense_grid == tuple(int(n) for n in dense.groups())
    density = charge_density_to_grid(pw.charge_density_path, pw.atoms, pw.dense_grid)
    magnetization = None
    if pw.nspin == 2:
        magnetization = charge_density_to_grid(
            pw.charge_density_path, pw.atoms, pw.dense_grid, "magnetization"
        )
    restart = read_pw_input(first / "scf.in", workdir=second)
    restart.charge_density_path.parent.mkdir(parents=True)
    write_charge_density(
        restart.charge_density_path,
        restart.atoms,
        density,
        restart.ecutrho,
        restart.gamma_only,
        magnetization,
        electrons=restart.electrons,
    )
    from_file = run_pw(second, text.replace("&ELECTRONS", "&ELECTRONS\n  startingpot = 'file'"))
    assert "The initial density is read from file" in from_file
    energy_file, iterations_file = scf_result(from_file)
    # si8_gamma (fixed occupations, near-degenerate gap) needs 18 even from pw.x's own file
    print(f"{run}: {iterations} iterations from atoms, {iterations_file} from the written density")
    # within conv_thr, plus the last of the 8 decimals pw.x prints
    assert energy_file == pytest.approx(energy, abs=conv_thr + 1e-8)
    assert iterations_file < iterations


@needs_pw
def test_pw_x_reads_by_position_not_miller_index(tmp_path):
    """pw.x 6.7 takes rho(G) in its own order: the same file shuffled is a wrong start."""
    text = (
        (QE / "si2" / "scf.in")
        .read_text()
        .replace("&ELECTRONS", "&ELECTRONS\n  startingpot = 'file'")
    )
    miller, rho_g, header = read_charge_density(unpacked("si2", tmp_path))
    shuffled = np.random.default_rng(0).permutation(len(miller))
    iterations = {}
    for name, order in [("ordered", slice(None)), ("shuffled", shuffled)]:
        folder = tmp_path / name
        (folder / "out" / "si.save").mkdir(parents=True)
        write_charge_density_coefficients(
            folder / "out" / "si.save" / "charge-density.dat",
            miller[order],
            rho_g[:, order],
            header,
        )
        iterations[name] = scf_result(run_pw(folder, text))[1]
    print(f"pw.x iterations from the converged density: {iterations}")
    assert iterations["ordered"] == 1 and iterations["shuffled"] > 3


@needs_paw
def test_paw_projectors_and_atomic_occupations_follow_the_upf(tmp_path):
    assert paw_projectors(PAW_UPF[0]) == [(0, 2.0), (0, 0.0), (1, 4.0), (1, 0.0)]  # O 2s2 2p4
    assert paw_projectors(SI_UPF) == []  # norm-conserving
    (tmp_path / "scf.in").write_text(WATER_PAW)
    pw = read_pw_input(tmp_path / "scf.in", workdir=tmp_path)
    occupations = atomic_paw_occupations(pw)
    # O: 8 channels (s, s, 3 p, 3 p), 36 pairs; H: 2 channels, 3 pairs, zeros after them
    assert occupations.shape == (3, 36)
    assert occupations[0, [0, 8, 15, 21, 26, 30, 33, 35]] == pytest.approx(
        [2, 0] + [4 / 3] * 3 + [0] * 3
    )
    assert occupations[1:, 0].tolist() == [1.0, 1.0] and not occupations[1:, 1:].any()
    assert occupations.sum() == pytest.approx(pw.electrons)  # 6 + 1 + 1 valence electrons
    (tmp_path / "spin.in").write_text(WATER_PAW.replace("ecutrho", "nspin = 2\n  ecutrho"))
    with pytest.raises(InputError, match="nspin = 2 with PAW"):
        atomic_paw_occupations(read_pw_input(tmp_path / "spin.in", workdir=tmp_path))
    (tmp_path / "mixed.in").write_text(WATER_PAW.replace("H.pbe-kjpaw", "H.pz-vbc"))
    with pytest.raises(InputError, match="PAW datasets beside other pseudopotentials"):
        atomic_paw_occupations(read_pw_input(tmp_path / "mixed.in", workdir=tmp_path))
    # a dataset whose PP_OCCUPATIONS lost a value: 4 projectors, 3 occupations
    text = PAW_UPF[0].read_text()
    broken = tmp_path / "O.broken.UPF"
    broken.write_text(text.replace("4.000000000000000E+000  0.000000000000000E+000\n", "4.0\n", 1))
    with pytest.raises(InputError, match="4 projectors and 3 occupations"):
        paw_projectors(broken)


@needs_pw
@needs_paw
def test_pw_x_starts_a_paw_run_from_the_density_and_atomic_occupations(tmp_path):
    first, second = tmp_path / "atomic", tmp_path / "file"
    first.mkdir(), second.mkdir()
    energy, iterations = scf_result(run_pw(first, WATER_PAW))
    pw = read_pw_input(first / "scf.in", workdir=first)
    occupations = atomic_paw_occupations(pw)
    # pw.x's own converged occupations have the same layout: O fills its 36 pairs, each H
    # its first 3, and the first s channels hold about an electron or two
    own = np.array((pw.charge_density_path.parent / PAW_OCCUPATIONS).read_text().split(), float)
    own = own.reshape(occupations.shape)
    assert np.count_nonzero(own[0]) == 36
    assert own[1:, :3].all() and not own[1:, 3:].any()
    assert np.all(own[:, 0] > 0.5)
    density = charge_density_to_grid(pw.charge_density_path, pw.atoms, pw.dense_grid)
    restart = read_pw_input(first / "scf.in", workdir=second)
    restart.charge_density_path.parent.mkdir(parents=True)
    write_charge_density(
        restart.charge_density_path, restart.atoms, density, restart.ecutrho, restart.gamma_only
    )
    text = WATER_PAW.replace("&ELECTRONS", "&ELECTRONS\n  startingpot = 'file'")
    alone = call_pw(second, text)
    assert "Reading PAW becsum" in alone.stdout  # the density alone is no PAW start
    write_paw_occupations(restart.charge_density_path.parent / PAW_OCCUPATIONS, occupations)
    from_file = run_pw(second, text)
    assert "The initial density is read from file" in from_file
    energy_file, iterations_file = scf_result(from_file)
    # 10 from atoms, 13 from pw.x's own converged density with atomic occupations (25 Nov 2026)
    print(f"h2o PAW: {iterations} iterations from atoms, {iterations_file} from the density")
    assert energy_file == pytest.approx(energy, abs=2e-8)  # conv_thr + pw.x's last decimal
