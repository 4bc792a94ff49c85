"""The dpcharge command line: as real subprocesses, and as the real main() in this process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import ase.io
import dpdata
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.vasp import VaspChargeDensity
from ase.io.cube import read_cube_data
from ase.units import Bohr
from conftest import scf_result

from dpcharge.chgcar import read_density
from dpcharge.cli import main
from dpcharge.inference import DeepDensity
from dpcharge.metrics import density_errors, electron_count
from dpcharge.selection import inclusion_probabilities

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
NO_SPIN = DATA / "sisl-files_NO_polarized_CHGCAR.gz"
SI64 = DATA / "CHGCAR_Si64_gamma_qe.gz"
DPCHARGE = [sys.executable, "-m", "dpcharge"]


def dpcharge(*args, cwd=None):
    return subprocess.run(
        [*DPCHARGE, *map(str, args)], capture_output=True, text=True, cwd=cwd, check=False
    )


@pytest.fixture
def in_process(capsys):
    """Run the real command line in this process (TensorFlow loads once for the module)."""

    def call(*args):
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=captured.out, stderr=captured.err)

    return call


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_convert_si64_with_paper_defaults(tmp_path):
    result = dpcharge("convert", SI64, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "500 frames of 64 atoms + 200 grid points" in result.stdout
    folder = tmp_path / "out" / "CHGCAR_Si64_gamma_qe"
    system = dpdata.System(folder, fmt="deepmd/npy")
    assert system.get_nframes() == 500
    assert system["atom_numbs"] == [64, 200]
    atoms, density = read_density(SI64)
    fractional = system["coords"][:, 64:] @ np.linalg.inv(atoms.cell.array)
    ijk = np.rint(fractional * 72).astype(int) % 72
    assert np.array_equal(
        system["atom_ener"][:, 64:], density[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    )
    assert len(np.unique(np.ravel_multi_index(ijk.reshape(-1, 3).T, (72,) * 3))) == 100_000
    assert np.all(system["atom_ener"][:, :64] == 0)


def test_same_seed_gives_the_same_bytes(tmp_path):
    for name in ("a", "b"):
        assert (
            dpcharge("convert", SI8, "-o", tmp_path / name, "--points", 2000, "-q").returncode == 0
        )
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert (
        dpcharge("convert", SI8, "-o", tmp_path / "c", "--points", 2000, "--seed", 1).returncode
        == 0
    )
    assert files_of(tmp_path / "a") != files_of(tmp_path / "c")


def test_validation_split_and_type_map_across_systems(tmp_path):
    al = DATA / "CHGCAR_Al4_lda_qe.gz"
    result = dpcharge(
        "convert",
        al,
        SI8,
        "-o",
        tmp_path / "out",
        "--points",
        2000,
        "--points-per-frame",
        100,
        "--validation",
        0.25,
        "--type-map",
        "Si",
        "Al",
    )
    assert result.returncode == 0, result.stderr
    for part, frames in (("train", 15), ("valid", 5)):
        for name in ("CHGCAR_Al4_lda_qe", "CHGCAR_Si8_qe"):
            folder = tmp_path / "out" / part / name
            assert (folder / "type_map.raw").read_text().split() == ["Si", "Al", "X"]
            assert dpdata.System(folder, fmt="deepmd/npy").get_nframes() == frames
    train = dpdata.System(tmp_path / "out/train/CHGCAR_Si8_qe", fmt="deepmd/npy")["atom_ener"]
    valid = dpdata.System(tmp_path / "out/valid/CHGCAR_Si8_qe", fmt="deepmd/npy")["atom_ener"]
    assert not np.isin(valid[:, 8:], train[:, 8:]).all()  # disjoint frames


def test_default_type_map_is_the_union_of_all_files(tmp_path):
    al = DATA / "CHGCAR_Al4_lda_qe.gz"
    result = dpcharge("convert", SI8, al, "-o", tmp_path / "out", "--points", 400, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    for name in ("CHGCAR_Al4_lda_qe", "CHGCAR_Si8_qe"):
        assert (tmp_path / "out" / name / "type_map.raw").read_text().split() == ["Si", "Al", "X"]


def test_files_with_the_same_name_get_their_folder_name(tmp_path):
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "CHGCAR").write_bytes(SI8.read_bytes())
    result = dpcharge(
        "convert", "run1/CHGCAR", "run2/CHGCAR", "-o", "out", "--points", 400, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dpcharge.json",
        "run1_CHGCAR",
        "run2_CHGCAR",
    ]


def test_all_points_for_a_test_set(tmp_path):
    result = dpcharge("convert", SI8, "-o", tmp_path / "out", "--all-points")
    assert result.returncode == 0, result.stderr
    system = dpdata.System(tmp_path / "out/CHGCAR_Si8_qe", fmt="deepmd/npy")
    assert system.get_nframes() * 192 == 36**3


def test_force_replaces_only_a_folder_dpcharge_wrote(tmp_path):
    out = tmp_path / "out"
    assert dpcharge("convert", SI8, "-o", out, "--points", 400, "--seed", 1).returncode == 0
    record = json.loads((out / "dpcharge.json").read_text())
    assert record["files"] == [str(SI8)] and record["seed"] == 1
    assert record["type_map"] == ["Si", "X"]
    result = dpcharge("convert", SI8, "-o", out, "--points", 400)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    result = dpcharge("convert", SI8, "-o", out, "--points", 400, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "dpcharge.json").read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_each_file_of_a_call_draws_its_own_points(tmp_path):
    copy = tmp_path / "copy" / "CHGCAR_Si8_qe.gz"
    copy.parent.mkdir()
    copy.write_bytes(SI8.read_bytes())
    result = dpcharge("convert", SI8, copy, "-o", tmp_path / "out", "--points", 400, "-q")
    assert result.returncode == 0, result.stderr
    first, second = (
        np.load(tmp_path / "out" / name / "set.000/coord.npy")
        for name in ("data_CHGCAR_Si8_qe", "copy_CHGCAR_Si8_qe")
    )
    assert not np.array_equal(first, second)  # the same file, other points
    again = dpcharge("convert", SI8, copy, "-o", tmp_path / "again", "--points", 400, "-q")
    assert again.returncode == 0
    assert files_of(tmp_path / "out") == files_of(tmp_path / "again")


def test_help_explains_every_option():
    result = dpcharge("convert", "--help")
    assert result.returncode == 0
    for option in (
        "--type-map",
        "--virtual-type",
        "--points",
        "--points-per-frame",
        "--seed",
        "--all-points",
        "--validation",
        "--component",
        "--force",
        "--quiet",
        "--species",
        "--skip-neighbor-stat",
    ):
        assert option in result.stdout
    assert "e/Å^3" in result.stdout


def test_help_is_quick_and_loads_no_tensorflow_nor_matplotlib():
    code = (
        "import sys, dpcharge.cli\n"
        "try:\n    dpcharge.cli.main(['test', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'matplotlib', "
        "'deepmd', 'dpdata'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "[]"
    assert "(%)" in result.stdout and "%%" not in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "dpcharge"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("dpcharge ")


@pytest.fixture(scope="module")
def frozen_model(density_model):
    """The shared small density model (tests/conftest.py): its frozen graph."""
    return density_model.model


def test_reassemble_chgcar_round_trip_read_by_ase_and_pymatgen(frozen_model, tmp_path):
    from pymatgen.io.vasp import Chgcar

    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, SI8, "-o", out, "--npy", tmp_path / "rho.npy")
    assert result.returncode == 0, result.stderr
    assert "grid 36 x 36 x 36 = 46,656 points" in result.stdout
    density = np.load(tmp_path / "rho.npy")
    atoms, written = read_density(out)
    np.testing.assert_allclose(written, density, rtol=1e-9, atol=1e-12)
    dft_atoms = read_density(SI8)[0]
    np.testing.assert_allclose(atoms.positions, dft_atoms.positions, atol=1e-8)
    ase_chgcar = VaspChargeDensity(str(out))
    assert ase_chgcar.atoms[-1].get_chemical_formula() == "Si8"
    np.testing.assert_allclose(ase_chgcar.chg[-1], density, rtol=1e-9, atol=1e-12)
    chgcar = Chgcar.from_file(str(out))
    np.testing.assert_allclose(chgcar.data["total"] / chgcar.structure.volume, density, rtol=1e-9)
    before = f"predicted density integrates to {electron_count(density, atoms.get_volume()):.4f} e"
    assert before in result.stdout


def test_reassemble_cube_round_trip_read_by_ase_and_pymatgen(frozen_model, tmp_path, in_process):
    from pymatgen.io.common import VolumetricData

    out = tmp_path / "rho.cube"
    result = in_process(
        "reassemble", frozen_model, SI8, "-o", out, "--format", "cube", "--grid", 12, 10, 8
    )
    assert result.returncode == 0, result.stderr
    atoms = read_density(SI8)[0]
    expected = DeepDensity(frozen_model).predict_grid(atoms, (12, 10, 8))
    data, cube_atoms = read_cube_data(str(out))
    # cube files keep 6 digits, and the float32 model sums in another order in other chunks
    np.testing.assert_allclose(data / Bohr**3, expected, rtol=1e-5, atol=1e-6 * expected.max())
    np.testing.assert_allclose(cube_atoms.cell.array, atoms.cell.array, atol=1e-5)
    assert VolumetricData.from_cube(str(out)).data["total"].shape == (12, 10, 8)


def test_nelect_rescales_and_reports_both_integrals(frozen_model, tmp_path, in_process):
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, read_density(SI8)[0], format="vasp")
    out = tmp_path / "CHGCAR"
    result = in_process("reassemble", frozen_model, poscar, "-o", out, "--nelect", 32)
    assert result.returncode == 0, result.stderr
    assert "grid 40 x 40 x 40" in result.stdout  # default spacing 0.15 Å: 5.43/0.15 -> 40
    atoms, density = read_density(out)
    assert electron_count(density, atoms.get_volume()) == pytest.approx(32, rel=1e-9)
    assert "predicted density integrates to" in result.stdout
    assert "rescaled to 32.0000 e" in result.stdout


def test_normalize_takes_the_electrons_of_the_input_chgcar(frozen_model, tmp_path, in_process):
    out = tmp_path / "CHGCAR"
    result = in_process("reassemble", frozen_model, SI8, "-o", out, "--normalize")
    assert result.returncode == 0, result.stderr
    dft_atoms, dft = read_density(SI8)
    atoms, density = read_density(out)
    dft_electrons = electron_count(dft, dft_atoms.get_volume())
    assert electron_count(density, atoms.get_volume()) == pytest.approx(dft_electrons, rel=1e-9)


def test_like_takes_the_grid_and_electrons_of_a_reference_file(frozen_model, tmp_path, in_process):
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, read_density(SI8)[0], format="vasp")
    out = tmp_path / "CHGCAR"
    result = in_process("reassemble", frozen_model, poscar, "-o", out, "--like", SI8, "--normalize")
    assert result.returncode == 0, result.stderr
    assert f"grid 36 x 36 x 36 = 46,656 points (spacing 0.151 0.151 0.151 Å) from --like {SI8}" in (
        result.stdout
    )
    atoms, density = read_density(out)
    assert density.shape == (36, 36, 36)
    assert electron_count(density, atoms.get_volume()) == pytest.approx(32, abs=1e-3)


def test_dpcharge_test_prints_writes_json_and_figures(frozen_model, tmp_path):
    result = dpcharge(
        "test", frozen_model, SI8, SI8, "--json", tmp_path / "m.json", "--plots", tmp_path / "f"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    atoms, dft = read_density(SI8)
    prediction = DeepDensity(frozen_model).predict_grid(atoms, dft.shape)
    expected = density_errors([dft], [prediction], [atoms.get_volume()])
    assert sorted(report["files"]) == ["000_data_CHGCAR_Si8_qe", "001_data_CHGCAR_Si8_qe"]
    first = report["files"]["000_data_CHGCAR_Si8_qe"]
    assert first["path"] == str(SI8)
    # two evaluations of a float32 model in two processes (TensorFlow's threads may sum in
    # another order): equal to float32 round-off, averaged over the grid
    assert first["mae"] == pytest.approx(expected.mae, rel=1e-6)
    assert first["r2"] == pytest.approx(expected.r2, rel=1e-9)
    assert first["electrons_reference"] == pytest.approx(32, abs=1e-3)
    assert report["overall"]["points"] == 2 * 36**3
    assert report["overall"]["electrons_reference"] == pytest.approx(64, abs=1e-3)
    assert report["overall"]["nmae"] == pytest.approx(expected.nmae, rel=1e-12)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:4]}
    assert rows["000_data_CHGCAR_Si8_qe"] == expected.row("x").split()[1:]
    assert rows["overall"][0] == str(2 * 36**3)
    figures = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert len(figures) == 8  # 4 per file; the two copies have distinct names
    assert all((tmp_path / "f" / name).read_bytes()[:4] == b"\x89PNG" for name in figures)


def trajectory(folder, frames=3):
    """An extxyz MD trajectory of rattled Si8 cells."""
    structures = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(frames)]
    for number, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=number)
    path = folder / "md.extxyz"
    ase.io.write(path, structures)
    return path, structures


def test_reassemble_predicts_each_chosen_frame_into_its_own_file(
    frozen_model, tmp_path, in_process
):
    md, structures = trajectory(tmp_path)
    out = tmp_path / "rho.cube"
    result = in_process(
        "reassemble", frozen_model, md, "-o", out, "--frames", "1:", "--format", "cube",
        "--grid", 8, 8, 8,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "frame 0: grid 8 x 8 x 8" in result.stdout and "frame 1: grid" in result.stdout
    model = DeepDensity(frozen_model)
    for number, atoms in enumerate(structures[1:]):
        data, cube_atoms = read_cube_data(str(tmp_path / f"rho_{number}.cube"))
        np.testing.assert_allclose(cube_atoms.positions, atoms.positions, atol=1e-5)
        expected = model.predict_grid(atoms, (8, 8, 8))
        np.testing.assert_allclose(data / Bohr**3, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["md.extxyz", "rho_0.cube", "rho_1.cube"]


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    process = subprocess.Popen(
        [*DPCHARGE, *map(str, ("convert", SI8, SI8, "-o", tmp_path / "out", "--points", 400))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `| head -0` does
    stderr = process.stderr.read().decode()
    assert process.wait() == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_long_prediction_outside_a_terminal_logs_progress_lines(frozen_model, tmp_path):
    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, SI8, "-o", out, "--grid", 60, 60, 60)
    assert result.returncode == 0, result.stderr
    assert "216,000 points" in result.stdout and "MiB of memory" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("predict: ")]
    assert len(lines) >= 5, result.stderr
    assert lines[-1].startswith("predict: 100 % (216,000 of 216,000 points")
    assert all("points/s, about" in line for line in lines)


def test_reassemble_an_ensemble_writes_the_mean_and_the_deviation(
    frozen_model, second_model, tmp_path, in_process
):
    result = in_process(
        "reassemble", frozen_model, second_model, SI8, "-o", tmp_path / "CHGCAR",
        "--deviation", tmp_path / "DEVIATION", "--npy", tmp_path / "mean.npy", "--grid", 12, 10, 8,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 models" in result.stdout and "standard deviation of 2 models" in result.stdout
    atoms = read_density(SI8)[0]
    mean, spread = DeepDensity([frozen_model, second_model]).predict_grid(
        atoms, (12, 10, 8), deviation=True
    )
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), mean)
    np.testing.assert_allclose(read_density(tmp_path / "DEVIATION")[1], spread, rtol=1e-9)
    assert spread.max() > 1e-4


def test_dpcharge_test_of_an_ensemble_ranks_the_error_by_the_deviation(
    frozen_model, second_model, tmp_path, in_process
):
    result = in_process(
        "test", frozen_model, second_model, SI8, "--json", tmp_path / "m.json",
        "--plots", tmp_path / "figures",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    atoms, dft = read_density(SI8)
    mean, spread = DeepDensity([frozen_model, second_model]).predict_grid(
        atoms, dft.shape, deviation=True
    )
    from scipy.stats import spearmanr

    ranking = report["files"]["CHGCAR_Si8_qe"]["deviation"]
    expected = spearmanr(spread.ravel(), np.abs(mean - dft).ravel()).statistic
    assert ranking["spearman"] == pytest.approx(expected, abs=1e-12)
    assert ranking["mean_deviation"] == pytest.approx(spread.mean(), rel=1e-12)
    assert len(ranking["bin_error"]) == 20
    assert report["files"]["CHGCAR_Si8_qe"]["mae"] == pytest.approx(np.abs(mean - dft).mean())
    assert report["models"] == [str(frozen_model), str(second_model)]
    assert (tmp_path / "figures" / "CHGCAR_Si8_qe_calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman" in result.stdout.splitlines()[0]


def test_convert_takes_the_points_where_an_ensemble_disagrees(
    frozen_model, second_model, tmp_path, in_process
):
    result = in_process(
        "convert", SI8, "-o", tmp_path / "out", "--points", 2000, "--select-by", frozen_model,
        second_model, "--uniform-share", 0.25,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    atoms, density = read_density(SI8)
    _, deviation = DeepDensity([frozen_model, second_model]).predict_grid(
        atoms, density.shape, deviation=True
    )
    system = dpdata.System(tmp_path / "out/CHGCAR_Si8_qe", fmt="deepmd/npy")
    fractional = system["coords"][:, 8:] @ np.linalg.inv(atoms.cell.array)
    ijk = np.rint(fractional * 36).astype(int) % 36
    chosen = deviation[ijk[..., 0], ijk[..., 1], ijk[..., 2]].ravel()
    assert len(chosen) == 2000
    assert chosen.mean() > 1.5 * deviation.mean()
    # each point's weight undoes its inclusion probability (a quarter of it uniform)
    flat = deviation.ravel()
    share = 0.25 / flat.size + 0.75 * flat / flat.sum()
    probability = inclusion_probabilities(share, 2000)
    flat_index = np.ravel_multi_index(tuple(np.moveaxis(ijk, -1, 0)), deviation.shape)
    weight = system.data["grid_weight"]
    assert np.all(weight[:, :8] == 1)
    np.testing.assert_allclose(
        weight[:, 8:].ravel(), 2000 / (flat.size * probability[flat_index.ravel()]), rtol=1e-5
    )
    record = json.loads((tmp_path / "out/dpcharge.json").read_text())
    assert record["selected_by"] == [str(frozen_model), str(second_model)]
    assert "mean deviation of the 2,000 chosen points" in result.stdout


def test_select_writes_the_most_uncertain_structures(
    frozen_model, second_model, tmp_path, in_process
):
    md, structures = trajectory(tmp_path, frames=4)
    result = in_process(
        "select", frozen_model, second_model, md, "-n", 2, "-o", tmp_path / "next",
        "--spacing", 0.6,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "next/dpcharge.json").read_text())
    ranking = record["ranking"]
    assert [r["largest"] for r in ranking] == sorted((r["largest"] for r in ranking), reverse=True)
    assert record["chosen"] == [r["frame"] for r in ranking[:2]]
    written = sorted(p.name for p in (tmp_path / "next").iterdir())
    assert written == sorted(["dpcharge.json", *(f"POSCAR_{f}" for f in record["chosen"])])
    first = ase.io.read(tmp_path / "next" / f"POSCAR_{record['chosen'][0]}")
    np.testing.assert_allclose(
        first.positions, structures[record["chosen"][0]].positions, atol=1e-6
    )


QE_SI2 = DATA / "qe" / "si2" / "scf.in"
SI_UPF = Path("/usr/share/espresso/pseudo/Si.pbe-rrkj.UPF")


def pw_x_output(scf: Path, *lines: str) -> str:
    """Run pw.x on ``scf`` (``lines`` added to &ELECTRONS) in its folder; return its output."""
    if shutil.which("pw.x") is None:
        pytest.skip("pw.x is not installed (Debian's quantum-espresso): the SCF start not run")
    if lines:
        added = "".join(f"  {line}\n" for line in lines)
        scf.write_text(scf.read_text().replace("&ELECTRONS\n", "&ELECTRONS\n" + added))
    run = subprocess.run(
        ["pw.x", "-in", scf.name], capture_output=True, text=True, cwd=scf.parent, check=False
    )
    assert run.returncode == 0 and "convergence has been achieved" in run.stdout, run.stdout[-2000:]
    return run.stdout


def start_pw_x_from_file(scf: Path) -> str:
    """Run pw.x on ``scf`` with startingpot = 'file'; check it read the density."""
    output = pw_x_output(scf, "startingpot = 'file'")
    assert "The initial density is read from file" in output
    return output


@pytest.mark.skipif(not SI_UPF.exists(), reason="Debian's quantum-espresso-data is not installed")
def test_reassemble_writes_the_start_density_of_a_pw_x_run(
    frozen_model, tmp_path, in_process, monkeypatch
):
    from dpcharge.espresso import charge_density_to_grid, read_pw_input

    scf = tmp_path / "scf.in"
    scf.write_text(QE_SI2.read_text())
    monkeypatch.chdir(tmp_path)  # pw.x's outdir is relative to the folder it runs in
    result = in_process("reassemble", frozen_model, scf, "--format", "espresso")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "out" / "si.save" / "charge-density.dat"
    assert f"wrote {written}" in result.stdout
    assert "set startingpot = 'file' in &ELECTRONS" in result.stdout
    pw = read_pw_input(scf)
    density = charge_density_to_grid(written, pw.atoms, pw.dense_grid)
    assert electron_count(density, pw.atoms.get_volume()) == pytest.approx(8, abs=1e-9)
    again = in_process("reassemble", frozen_model, scf, "--format", "espresso")
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten
    start_pw_x_from_file(scf)


@pytest.mark.skipif(not SI_UPF.exists(), reason="Debian's quantum-espresso-data is not installed")
def test_reassemble_starts_pw_x_from_the_previous_run_plus_the_predicted_change(
    frozen_model, tmp_path, in_process, monkeypatch
):
    from dpcharge.espresso import charge_density_to_grid, read_pw_input

    monkeypatch.chdir(tmp_path)  # pw.x's outdir is relative to the folder it runs in
    text = QE_SI2.read_text()
    moved = text.replace("Si 1.40 1.33 1.36", "Si 1.46 1.30 1.38")  # the next step
    inputs = {}
    for name, body in (("previous", text), ("alone_previous", text), ("alone", moved)):
        inputs[name] = tmp_path / f"{name}.in"
        inputs[name].write_text(body.replace("./out", f"./{name}"))
    pw_x_output(inputs["previous"])  # converged: ./previous/si.save/charge-density.dat
    for name in ("alone_previous", "alone"):  # the predictions alone
        made = in_process("reassemble", frozen_model, inputs[name], "--format", "espresso")
        assert made.returncode == 0, made.stderr
    scf = tmp_path / "scf.in"
    scf.write_text(moved)
    result = in_process(
        "reassemble", frozen_model, scf, "--format", "espresso", "--previous", inputs["previous"]
    )
    assert result.returncode == 0, result.stderr
    assert f"the converged density of {inputs['previous']} plus the predicted change" in (
        result.stdout
    )
    pw = read_pw_input(scf)

    def density(folder: str) -> np.ndarray:
        path = tmp_path / folder / "si.save" / "charge-density.dat"
        return charge_density_to_grid(path, pw.atoms, pw.dense_grid)

    # rho_previous + rho_pred(moved) - rho_pred(previous), each prediction scaled to 8 e
    expected = density("previous") + density("alone") - density("alone_previous")
    written = density("out")
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    assert electron_count(written, pw.atoms.get_volume()) == pytest.approx(8, abs=1e-9)
    assert not np.allclose(written, density("previous"), atol=1e-6)  # the change is there

    start = start_pw_x_from_file(scf)
    atomic = tmp_path / "atomic.in"
    atomic.write_text(moved.replace("./out", "./atomic"))
    conv_thr = 1e-9  # the input's, plus the last of the 8 decimals pw.x prints
    assert scf_result(start)[0] == pytest.approx(
        scf_result(pw_x_output(atomic))[0], abs=conv_thr + 1e-8
    )


@pytest.mark.skipif(not SI_UPF.exists(), reason="Debian's quantum-espresso-data is not installed")
def test_reassemble_refuses_a_previous_run_that_cannot_start_this_one(
    frozen_model, tmp_path, in_process, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    scf, previous, other = (tmp_path / name for name in ("scf.in", "previous.in", "other.in"))
    scf.write_text(QE_SI2.read_text())
    previous.write_text(QE_SI2.read_text().replace("./out", "./previous"))
    other.write_text(QE_SI2.read_text().replace("2.715", "2.8"))
    for args, message in (
        ((previous,), "--previous: no converged density of"),
        ((other,), "is not that of"),
    ):
        result = in_process(
            "reassemble", frozen_model, scf, "--format", "espresso", "--previous", *args
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.in", "previous.in", "scf.in"]


O_PAW = SI_UPF.parent / "O.pbe-kjpaw.UPF"


@pytest.mark.skipif(not O_PAW.exists(), reason="Debian's quantum-espresso-data is not installed")
def test_a_paw_pw_x_start_gets_the_atomic_paw_occupations_beside_the_density(
    foreign_models, tmp_path, in_process, monkeypatch
):
    from dpcharge.espresso import atomic_paw_occupations, read_pw_input

    scf = tmp_path / "scf.in"
    scf.write_text(
        QE_SI2.read_text()
        .replace("Si 28.086 Si.pbe-rrkj.UPF", "O 15.999 O.pbe-kjpaw.UPF")
        .replace("Si 0.0 0.0 0.0\nSi 1.40 1.33 1.36", "O 0.0 0.0 0.0\nO 1.21 0.0 0.0")
        .replace("ecutwfc = 20", "ecutwfc = 25, occupations = 'smearing', degauss = 0.02")
        .replace("4 4 4 0 0 0", "2 2 2 0 0 0")
    )
    monkeypatch.chdir(tmp_path)
    pw = read_pw_input(scf)
    spin = scf.with_name("spin.in")
    spin.write_text(scf.read_text().replace("ecutwfc", "nspin = 2, ecutwfc"))
    # the Si-trained model relabelled O: any density model of the elements will do here
    refused = in_process(
        "reassemble", foreign_models.oxygen, spin, "--format", "espresso",
        "--magnetization", foreign_models.oxygen,
    )  # fmt: skip
    assert refused.returncode == 2 and "nspin = 2 with PAW datasets" in refused.stderr
    assert not pw.charge_density_path.parent.exists()
    paw = pw.charge_density_path.with_name("paw.txt")
    result = in_process("reassemble", foreign_models.oxygen, scf, "--format", "espresso")
    assert result.returncode == 0, result.stderr
    assert f"wrote {paw} (PAW on-site occupations of the atomic start" in result.stdout
    written = np.array(paw.read_text().split(), float).reshape(2, -1)
    np.testing.assert_array_equal(written, atomic_paw_occupations(pw))
    again = in_process(
        "reassemble", foreign_models.oxygen, scf, "--format", "espresso", "-o",
        pw.charge_density_path.with_name("other.dat"),
    )  # fmt: skip
    assert again.returncode == 2 and "paw.txt already exists" in again.stderr
    assert not pw.charge_density_path.with_name("other.dat").exists()  # refused before writing
    start_pw_x_from_file(scf)


@pytest.mark.skipif(not SI_UPF.exists(), reason="Debian's quantum-espresso-data is not installed")
def test_spin_polarised_pw_x_start_needs_and_writes_a_magnetization(
    frozen_model, second_model, tmp_path, in_process, monkeypatch
):
    from dpcharge.espresso import charge_density_to_grid, read_pw_input

    scf = tmp_path / "scf.in"
    scf.write_text((DATA / "qe" / "si2_spin" / "scf.in").read_text())
    monkeypatch.chdir(tmp_path)
    refused = in_process("reassemble", frozen_model, scf, "--format", "espresso")
    assert refused.returncode == 2 and "give --magnetization MODEL" in refused.stderr
    # the second Si density model stands in for a magnetisation model: a mix-up it must flag
    result = in_process(
        "reassemble", frozen_model, scf, "--format", "espresso", "--magnetization", second_model
    )
    assert result.returncode == 0, result.stderr
    assert "warning: the magnetisation holds more than half" in result.stdout
    pw = read_pw_input(scf)
    written = pw.charge_density_path
    magnetization = charge_density_to_grid(written, pw.atoms, pw.dense_grid, "magnetization")
    predicted = DeepDensity([second_model]).predict_grid(pw.atoms, pw.dense_grid)
    volume = pw.atoms.get_volume()
    # rho(G = 0) keeps the integral exactly; the magnetisation is not scaled to the electrons
    assert electron_count(magnetization, volume) == pytest.approx(
        electron_count(predicted, volume), rel=1e-9
    )
    density = charge_density_to_grid(written, pw.atoms, pw.dense_grid)
    assert electron_count(density, volume) == pytest.approx(8, abs=1e-9)
    start_pw_x_from_file(scf)


# ----------------------------------------------------------------------------- spin


def test_spin_polarised_prediction_writes_both_components(spin_models, in_process, tmp_path):
    from pymatgen.io.vasp import Chgcar

    atoms, reference = read_density(NO_SPIN, component="magnetization")
    out = tmp_path / "CHGCAR"
    result = in_process(
        "reassemble", spin_models.total, NO_SPIN, "--magnetization", spin_models.magnetization,
        "-o", out, "--npy", tmp_path / "rho.npy", "--threads", 1,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ISPIN=2 CHGCAR" in result.stdout
    _, density = read_density(out)
    _, magnetization = read_density(out, component="magnetization")
    alone = DeepDensity([spin_models.magnetization], workers=1)
    direct = alone.predict_grid(atoms, reference.shape)
    assert np.abs(magnetization - direct).max() <= 1e-9 * np.abs(direct).max()  # 11 digits
    assert np.load(tmp_path / "rho_magnetization.npy") == pytest.approx(direct, abs=1e-12)
    assert np.load(tmp_path / "rho.npy") == pytest.approx(density, rel=1e-9, abs=1e-12)

    moment = electron_count(magnetization, atoms.get_volume())
    assert f"predicted magnetisation integrates to {moment:.4f} μB" in result.stdout
    assert moment == pytest.approx(1.0, abs=0.2)  # learnt from this very file: M = 1
    errors = density_errors([reference], [magnetization], [atoms.get_volume()])
    assert errors.r2 > 0.5  # the shape of the magnetisation (a constant has R² 0)
    assert VaspChargeDensity(str(out)).chgdiff[-1] == pytest.approx(magnetization, rel=1e-9)
    pymatgen = Chgcar.from_file(str(out))
    assert pymatgen.is_spin_polarized
    assert pymatgen.data["diff"] / atoms.get_volume() == pytest.approx(magnetization, rel=1e-9)

    rescaled = tmp_path / "fixed.cube"
    result = in_process(
        "reassemble", spin_models.total, NO_SPIN, "--magnetization", spin_models.magnetization,
        "--moment", 1, "--format", "cube", "-o", rescaled,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rescaled to 1.0000 μB" in result.stdout
    cube, _ = read_cube_data(str(tmp_path / "fixed_magnetization.cube"))
    assert cube / Bohr**3 == pytest.approx(direct / moment, rel=1e-4, abs=1e-9)  # cube: 5 digits
    assert (tmp_path / "fixed.cube").is_file()


def test_test_command_judges_both_components(spin_models, in_process, tmp_path):
    report = tmp_path / "test.json"
    result = in_process(
        "test", spin_models.total, NO_SPIN, "--magnetization", spin_models.magnetization,
        "--json", report, "--plots", tmp_path / "plots",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "magnetisation (rho_up - rho_down)" in result.stdout
    document = json.loads(report.read_text())
    spin = document["magnetization"]["files"]["sisl-files_NO_polarized_CHGCAR"]
    atoms, reference = read_density(NO_SPIN, component="magnetization")
    prediction = DeepDensity([spin_models.magnetization]).predict_grid(atoms, reference.shape)
    expected = density_errors([reference], [prediction], [atoms.get_volume()])
    assert spin["mae"] == pytest.approx(expected.mae, rel=1e-6)
    assert spin["moment_reference"] == pytest.approx(1.0, abs=1e-5)
    assert sum(spin["atomic_moments_reference"]) == pytest.approx(1.0, abs=1e-5)
    assert spin["atomic_moments_mae"] == pytest.approx(
        np.mean(
            np.abs(np.subtract(spin["atomic_moments_predicted"], spin["atomic_moments_reference"]))
        )
    )
    total = document["files"]["sisl-files_NO_polarized_CHGCAR"]
    assert total["electrons_reference"] == pytest.approx(11, abs=1e-4)
    parity = "sisl-files_NO_polarized_CHGCAR_magnetization_parity.png"
    assert (tmp_path / "plots" / parity).is_file()


def test_convert_names_the_magnetization_and_keeps_its_sign(in_process, tmp_path):
    result = in_process(
        "convert", NO_SPIN, "-o", tmp_path / "out", "--component", "magnetization",
        "--points", 4000, "--seed", 3,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "magnetization (up minus down) -" in result.stdout  # NO has negative regions
    system = dpdata.System(tmp_path / "out" / "sisl-files_NO_polarized_CHGCAR", fmt="deepmd/npy")
    labels = system["atom_ener"][:, 2:]
    assert labels.min() < 0 < labels.max()
    _, magnetization = read_density(NO_SPIN, component="magnetization")
    assert labels.max() <= magnetization.max() and labels.min() >= magnetization.min()
    record = json.loads((tmp_path / "out" / "dpcharge.json").read_text())
    assert record["component"] == "magnetization"
