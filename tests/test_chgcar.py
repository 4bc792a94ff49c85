"""Reading and writing real VASP and Quantum ESPRESSO volumetric files."""

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from ase import io as ase_io
from ase.build import bulk
from ase.calculators.vasp import VaspChargeDensity
from ase.units import Bohr

from dpcharge.chgcar import (
    NotVolumetricError,
    read_density,
    read_structure,
    write_chgcar,
    write_cube,
)
from dpcharge.errors import InputError

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"


def electrons(atoms, density):
    return density.mean() * atoms.get_volume()


def si8_lines():
    return gzip.decompress(SI8.read_bytes()).decode().splitlines()


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "formula", "shape", "valence_electrons"),
    [
        ("CHGCAR_Si8_qe.gz", "Si8", (36, 36, 36), 32),
        ("CHGCAR_Al4_lda_qe.gz", "Al4", (24, 24, 24), 12),
        ("sisl-files_graphene_CHGCAR.gz", "C2", (24, 24, 100), 8),
        ("sisl-files_NO_polarized_CHGCAR.gz", "NO", (32, 48, 64), 11),
        ("pawpyseed_Ga4_CHGCAR.gz", "Ga4", (40, 40, 40), 12),
    ],
)
def test_real_files_integrate_to_their_valence_electrons(name, formula, shape, valence_electrons):
    atoms, density = read_density(DATA / name)
    assert atoms.get_chemical_formula() == formula
    assert density.shape == shape
    assert electrons(atoms, density) == pytest.approx(valence_electrons, abs=2e-5)


def test_all_electron_aeccar_and_chg_formats_read():
    atoms, density = read_density(DATA / "pawpyseed_Ga4_AECCAR2.gz")
    assert atoms.get_chemical_formula() == "Ga4"
    assert electrons(atoms, density) == pytest.approx(12.0037, abs=1e-3)
    chg = Path(ase_io.__file__).parent.parent / "test/testdata/vasp/Li/CHG"
    atoms, density = read_density(chg)
    assert density.shape == (10, 10, 10)
    assert electrons(atoms, density) == pytest.approx(1.0, abs=1e-4)


def test_axis_order_matches_the_file_fortran_order():
    lines = si8_lines()
    values = np.array(" ".join(lines[18:]).split()[:10], dtype=float)
    third_row = np.array(lines[18 + 36 * 36 // 5].split(), dtype=float)
    atoms, density = read_density(SI8)
    volume = atoms.get_volume()
    assert density[1, 0, 0] * volume == pytest.approx(values[1], rel=1e-12)
    assert density[9, 0, 0] * volume == pytest.approx(values[9], rel=1e-12)
    # value number 36*36 (first of k = 1) sits on line 18 + 1296 // 5, column 1296 % 5
    assert density[0, 0, 1] * volume == pytest.approx(third_row[36 * 36 % 5], rel=1e-12)


def test_vacuum_of_a_slab_lies_along_z():
    atoms, density = read_density(DATA / "sisl-files_graphene_CHGCAR.gz")
    assert atoms.positions[:, 2].max() < 0.1  # graphene at z = 0, c = 10 Å
    assert np.abs(density[:, :, 50]).max() < 1e-3 * density[:, :, 0].max()


def test_spin_polarized_file_gives_total_and_magnetization():
    path = DATA / "sisl-files_NO_polarized_CHGCAR.gz"
    atoms, total = read_density(path)
    _, magnetization = read_density(path, component="magnetization")
    assert electrons(atoms, total) == pytest.approx(11, abs=1e-5)
    assert electrons(atoms, magnetization) == pytest.approx(1, abs=1e-5)  # M = 1 for NO
    _, ga_magnetization = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz", component="magnetization")
    assert np.abs(ga_magnetization).max() < 1e-6  # ISPIN=2 layout with M = 0


def test_non_collinear_file_has_three_magnetization_components(tmp_path):
    # a real two-block file, made non-collinear by repeating its magnetisation block
    lines = gzip.decompress((DATA / "sisl-files_NO_polarized_CHGCAR.gz").read_bytes())
    lines = lines.decode().splitlines()
    grid = [i for i, line in enumerate(lines) if line.split() == ["32", "48", "64"]]
    block = lines[grid[1] : grid[1] + 1 + -(-32 * 48 * 64 // 5)]
    path = write_lines(tmp_path / "CHGCAR", lines + block + block)
    atoms, mz = read_density(path, component="mz")
    assert electrons(atoms, mz) == pytest.approx(1, abs=1e-5)
    with pytest.raises(InputError, match="choose the magnetisation component mx, my or mz"):
        read_density(path, component="magnetization")
    with pytest.raises(InputError, match="not spin-polarized"):
        read_density(SI8, component="magnetization")


def test_vasp4_file_needs_element_names(tmp_path):
    lines = si8_lines()
    path = write_lines(tmp_path / "CHGCAR", lines[:5] + lines[6:])
    with pytest.raises(
        InputError, match="VASP 4 file without element names; give them in the order"
    ):
        read_density(path)
    atoms, density = read_density(path, species=["Si"])
    assert atoms.get_chemical_formula() == "Si8"
    assert electrons(atoms, density) == pytest.approx(32, abs=1e-5)
    assert read_structure(path, species=["Si"]).get_chemical_formula() == "Si8"


def test_read_structure_reads_the_header_alone():
    atoms = read_structure(DATA / "CHGCAR_Si64_gamma_qe.gz")
    full, _ = read_density(DATA / "CHGCAR_Si64_gamma_qe.gz")
    assert np.allclose(atoms.positions, full.positions)
    assert np.allclose(atoms.cell, full.cell)


def test_chgcar_round_trip_with_ase_and_pymatgen(tmp_path):
    from pymatgen.io.vasp import Chgcar

    atoms, density = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz")  # non-orthogonal cell
    path = tmp_path / "CHGCAR"
    write_chgcar(path, atoms, density)
    again_atoms, again = read_density(path)
    assert np.allclose(again_atoms.positions, atoms.positions, atol=1e-6)
    assert np.abs(again - density).max() <= 1e-9 * np.abs(density).max()

    by_ase = VaspChargeDensity(str(path))
    assert np.allclose(by_ase.chg[-1], density, rtol=1e-9, atol=1e-12)
    by_pymatgen = Chgcar.from_file(str(path))
    assert np.allclose(by_pymatgen.data["total"] / atoms.get_volume(), density, rtol=1e-9)
    assert by_pymatgen.structure.composition.reduced_formula == "Ga"
    assert electrons(again_atoms, again) == pytest.approx(12, abs=1e-5)


def test_spin_polarized_chgcar_round_trip_with_ase_and_pymatgen(tmp_path):
    from pymatgen.io.vasp import Chgcar

    path = DATA / "sisl-files_NO_polarized_CHGCAR.gz"  # real VASP ISPIN=2 file, M = 1
    atoms, density = read_density(path)
    _, magnetization = read_density(path, component="magnetization")
    written = tmp_path / "CHGCAR"
    write_chgcar(written, atoms, density, magnetization)
    lines = written.read_text().splitlines()
    grid_lines = [n for n, line in enumerate(lines) if line.split() == ["32", "48", "64"]]
    assert len(grid_lines) == 2  # the grid line before each block

    _, total_again = read_density(written)
    _, magnetization_again = read_density(written, component="magnetization")
    assert np.abs(total_again - density).max() <= 1e-9 * np.abs(density).max()
    assert np.abs(magnetization_again - magnetization).max() <= 1e-9 * np.abs(magnetization).max()

    by_ase = VaspChargeDensity(str(written))
    assert np.allclose(by_ase.chg[-1], density, rtol=1e-9, atol=1e-12)
    assert np.allclose(by_ase.chgdiff[-1], magnetization, rtol=1e-9, atol=1e-12)
    by_pymatgen = Chgcar.from_file(str(written))
    volume = atoms.get_volume()
    assert by_pymatgen.is_spin_polarized
    assert np.allclose(by_pymatgen.data["total"] / volume, density, rtol=1e-9)
    assert np.allclose(by_pymatgen.data["diff"] / volume, magnetization, rtol=1e-9, atol=1e-12)
    assert electrons(atoms, magnetization_again) == pytest.approx(1, abs=1e-5)


def test_spin_polarized_chgcar_refuses_a_magnetization_on_another_grid(tmp_path):
    atoms, density = read_density(SI8)
    with pytest.raises(InputError, match="grids differ") as refused:
        write_chgcar(tmp_path / "CHGCAR", atoms, density, density[:-1])
    assert refused.value.parameter == "magnetization"
    assert not (tmp_path / "CHGCAR").exists()


def test_cube_round_trip_with_ase_and_pymatgen(tmp_path):
    from pymatgen.io.common import VolumetricData

    atoms, density = read_density(SI8)
    path = tmp_path / "si8.cube"
    write_cube(path, atoms, density)
    data, cube_atoms = ase_io.cube.read_cube_data(str(path))
    assert np.allclose(data / Bohr**3, density, rtol=1e-5)
    assert np.allclose(cube_atoms.positions, atoms.positions, atol=1e-5)
    by_pymatgen = VolumetricData.from_cube(str(path))
    assert np.allclose(by_pymatgen.data["total"] / Bohr**3, density, rtol=1e-5)
    # integral over the cell in electrons
    assert data.mean() / Bohr**3 * atoms.get_volume() == pytest.approx(32, abs=1e-4)


def test_writing_never_leaves_a_half_written_file(tmp_path):
    atoms, density = read_density(SI8)
    path = tmp_path / "CHGCAR"
    path.write_text("old content")
    density[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_chgcar(path, atoms, density)
    assert path.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["CHGCAR"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: [], "the file is empty"),
        (lambda lines: lines[:1000], "a grid block has 4910 values where the grid 36x36x36 needs"),
        (lambda lines: lines[:18], "a grid block has 0 values where the grid 36x36x36 needs 46656"),
        (
            lambda lines: [*lines[:20], lines[20].replace("E+01", "E+O1", 1), *lines[21:]],
            "non-numeric value",
        ),
        (
            lambda lines: [*lines[:17], "   36   36   37", *lines[18:]],
            "where the grid 36x36x37 needs",
        ),
        (
            lambda lines: [*lines[:20], " NaN " + lines[20].split(None, 1)[1], *lines[21:]],
            "NaN or infinite",
        ),
        (lambda lines: [*lines[:2], "0 0 0", *lines[3:]], "zero volume"),
        (lambda lines: lines[:7], "the file ends at line 7, before the coordinate mode"),
        (
            lambda lines: ["hello", "world", *lines[2:]],
            "line 2: the scale factor is not 1 or 3 numbers",
        ),
        # silent wrong results of the earlier reader: an atom dropped, a grid laid out wrongly
        (
            lambda lines: [*lines[:6], "   7", *lines[7:]],
            "line 16: one more position line than the header's atom count",
        ),
        (
            lambda lines: [*lines[:17], "   36   36   35", *lines[18:]],
            "more values after grid block 1 than the grid 36x36x35 holds",
        ),
        (
            lambda lines: [*lines[:-1], lines[-1].replace("E+01", "")],
            "grid value '1.6969212328' is not written like the grid's first, '7.3157984539E+00'",
        ),
        # tracebacks and hidden causes of the earlier reader
        (
            lambda lines: [*lines[:17], "    6    6    \u00b2", *lines[18:]],
            "line 18: grid line '6    6    \u00b2' is not three positive integers",
        ),
        (
            lambda lines: [*lines[:9], "  nan  0.25  0.25", *lines[10:]],
            "an atomic position holds NaN or infinite values",
        ),
        (lambda lines: [*lines[:3], "  inf  0  0", *lines[4:]], "the cell holds NaN or infinite"),
        (
            lambda lines: [*lines[:9], lines[9][:-10] + " abc " + lines[9][-10:], *lines[10:]],
            "line 10: position 2 ('0.2500000000000000  0.2500000000000000  0.250000 abc",
        ),
        (lambda lines: [*lines[:5], " Si  Si", *lines[6:]], "line 7: expected 2 atom counts"),
        (lambda lines: [*lines[:3], "  5.43  0.0", *lines[4:]], "line 4: cell vector 2 is not"),
        (
            lambda lines: [*lines[:9], "  0.25  0.25", *lines[10:]],
            "line 10: position 2 of 8 is not three numbers",
        ),
        (
            lambda lines: [*lines, *lines],
            "line 9351: a second header: the file holds the densities of several ionic steps",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, edit, message):
    path = write_lines(tmp_path / "CHGCAR", edit(si8_lines()))
    with pytest.raises(InputError, match=re.escape(message)) as error:
        read_density(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_directory_binary_and_broken_gzip_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_density(tmp_path / "nothing")
    with pytest.raises(InputError, match="is a directory"):
        read_density(tmp_path)
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(InputError, match="not a text file"):
        read_density(tmp_path / "binary")
    (tmp_path / "cut.gz").write_bytes(SI8.read_bytes()[:5000])
    with pytest.raises(InputError, match="broken gzip file"):
        read_density(tmp_path / "cut.gz")


def test_corrupt_gzip_content_and_binary_files_give_one_line_errors(tmp_path):
    compressed = bytearray(SI8.read_bytes())
    compressed[24:28] = b"\xff" * 4  # an invalid deflate block: zlib.error in the earlier reader
    (tmp_path / "corrupt.gz").write_bytes(bytes(compressed))
    with pytest.raises(InputError, match="broken gzip file"):
        read_density(tmp_path / "corrupt.gz")
    compressed = bytearray(SI8.read_bytes())
    compressed[40000:40064] = bytes(64)  # decompresses to garbage text first, fails the CRC
    (tmp_path / "garbage.gz").write_bytes(bytes(compressed))
    with pytest.raises(InputError, match=re.escape("broken gzip file (CRC check failed")):
        read_density(tmp_path / "garbage.gz")
    header = gzip.decompress(SI8.read_bytes())[:700]
    (tmp_path / "binary_grid").write_bytes(header + bytes(range(256)) * 40)
    with pytest.raises(InputError, match=r"not a text file|non-numeric value"):
        read_density(tmp_path / "binary_grid")


def test_file_cut_inside_its_last_number_is_refused_wherever_cut(tmp_path):
    """Cut the real Si8 file and ase's real CHG file at every byte of their last two values."""
    chg = Path(ase_io.__file__).parent.parent / "test/testdata/vasp/Li/CHG"
    for source in (gzip.decompress(SI8.read_bytes()), chg.read_bytes()):
        end = len(source.rstrip())
        start = source.rstrip().rindex(b" ", 0, source.rstrip().rindex(b" ") - 1)
        for cut in range(start, end):
            path = tmp_path / "cut"
            path.write_bytes(source[:cut])
            try:
                _, density = read_density(path)
            except InputError as error:
                assert re.search(
                    "cut or broken number|values where the grid|non-numeric", str(error)
                )
            else:  # only a cut between numbers may read, and then reads the same values
                assert source[cut : cut + 1].isspace() or cut == end
                assert np.array_equal(density, read_density(io_path(tmp_path, source))[1])


def io_path(folder, content):
    path = folder / "whole"
    path.write_bytes(content)
    return path


def test_chg_file_of_several_ionic_steps_is_refused(tmp_path):
    chg = (Path(ase_io.__file__).parent.parent / "test/testdata/vasp/Li/CHG").read_bytes()
    (tmp_path / "CHG").write_bytes(chg + chg)
    with pytest.raises(InputError, match=r"line 112: a second header: .* several ionic steps"):
        read_density(tmp_path / "CHG")


def test_species_must_match_the_names_of_a_vasp5_file():
    atoms, _ = read_density(SI8, species=["Si"])
    assert atoms.get_chemical_formula() == "Si8"
    with pytest.raises(InputError, match="names its species") as error:
        read_density(DATA / "sisl-files_NO_polarized_CHGCAR.gz", species=["O", "N"])
    assert error.value.parameter == "species"


def test_vasp4_species_count_and_names_are_checked(tmp_path):
    lines = si8_lines()
    path = write_lines(tmp_path / "CHGCAR", lines[:5] + lines[6:])
    with pytest.raises(InputError, match="1 species counts, but 2 names given") as error:
        read_density(path, species=["Si", "O"])
    assert error.value.parameter == "species"
    with pytest.raises(InputError, match="'Qq' is not an element"):
        read_density(path, species=["Qq"])


def test_large_header_of_20000_atoms_reads(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((25, 10, 10))
    assert len(atoms) == 20_000
    grid = np.linspace(0.01, 0.02, 4 * 4 * 4).reshape(4, 4, 4)
    path = tmp_path / "CHGCAR"
    write_chgcar(path, atoms, grid)
    assert path.stat().st_size > 1 << 20  # the earlier reader stopped at 1 MiB of header
    assert len(read_structure(path)) == 20_000
    again, density = read_density(path)
    assert np.allclose(again.positions, atoms.positions, atol=1e-8)
    assert np.allclose(density, grid, rtol=1e-10)


def test_poscar_and_contcar_are_not_volumetric(tmp_path):
    atoms, _ = read_density(SI8)
    atoms.set_momenta(np.full((len(atoms), 3), 0.01))
    ase_io.write(tmp_path / "CONTCAR", atoms, format="vasp", direct=True)
    assert "0.0" in (tmp_path / "CONTCAR").read_text().split("\n\n")[-1]  # a velocity block
    with pytest.raises(NotVolumetricError, match="no grid line 'NX NY NZ' after the atomic"):
        read_structure(tmp_path / "CONTCAR")


@pytest.mark.parametrize("name", ["CHGCAR", "CHGCAR.gz"])
def test_written_header_drops_velocities_and_gz_compresses(tmp_path, name):
    from pymatgen.io.vasp import Chgcar

    atoms, density = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz")
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)))  # a CONTCAR of an MD run
    ase_io.write(tmp_path / "CONTCAR", atoms, format="vasp", direct=True)
    contcar = ase_io.read(tmp_path / "CONTCAR", format="vasp")
    assert np.allclose(contcar.get_velocities(), atoms.get_velocities(), rtol=1e-6)
    path = tmp_path / name
    write_chgcar(path, contcar, density)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    again_atoms, again = read_density(path)
    assert np.allclose(again_atoms.positions, atoms.positions, atol=1e-6)
    assert np.abs(again - density).max() <= 1e-9 * np.abs(density).max()
    plain = tmp_path / "plain"
    plain.write_bytes(
        gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    )
    by_ase = VaspChargeDensity(str(plain))
    assert np.allclose(by_ase.chg[-1], density, rtol=1e-9, atol=1e-12)
    by_pymatgen = Chgcar.from_file(str(path))
    assert np.allclose(by_pymatgen.data["total"] / atoms.get_volume(), density, rtol=1e-9)
