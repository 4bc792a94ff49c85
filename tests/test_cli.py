"""The dpcharge command line, run as a real subprocess."""

import gzip
import subprocess
import sys
from pathlib import Path

import dpdata
import numpy as np
import pytest

from dpcharge.chgcar import read_density

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
SI64 = DATA / "CHGCAR_Si64_gamma_qe.gz"
DPCHARGE = [sys.executable, "-m", "dpcharge"]


def dpcharge(*args, cwd=None):
    return subprocess.run(
        [*DPCHARGE, *map(str, args)], capture_output=True, text=True, cwd=cwd, check=False
    )


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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run1_CHGCAR", "run2_CHGCAR"]


def test_all_points_for_a_test_set(tmp_path):
    result = dpcharge("convert", SI8, "-o", tmp_path / "out", "--all-points")
    assert result.returncode == 0, result.stderr
    system = dpdata.System(tmp_path / "out/CHGCAR_Si8_qe", fmt="deepmd/npy")
    assert system.get_nframes() * 192 == 36**3


def test_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    result = dpcharge("convert", SI8, "-o", out, "--points", 400)
    assert result.returncode == 2
    assert "already exists; use --force" in result.stderr
    assert (out / "keep").exists()
    result = dpcharge("convert", SI8, "-o", out, "--points", 400, "--force")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep").exists()
    assert (out / "CHGCAR_Si8_qe/type.raw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing_CHGCAR"], "missing_CHGCAR: no such file"),
        (
            [str(DATA / "vaspy_CoMonolayer_CHGCAR_spin"), "--points", "1000"],
            "1000 points requested but the grid has only 96",
        ),
        ([str(SI8), "--validation", "1.5"], "--validation must be in [0, 1)"),
        ([str(SI8), "--component", "magnetization", "--points", "400"], "not spin-polarized"),
    ],
)
def test_user_mistakes_give_one_line_errors_and_no_output(tmp_path, args, message):
    result = dpcharge("convert", *args, "-o", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("dpcharge: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_file_after_good_ones_leaves_nothing_behind(tmp_path):
    truncated = tmp_path / "CHGCAR_truncated"
    lines = gzip.decompress(SI8.read_bytes()).decode().splitlines()
    truncated.write_text("\n".join(lines[:5000]) + "\n")
    result = dpcharge("convert", SI8, truncated, "-o", tmp_path / "out", "--points", 400)
    assert result.returncode == 2
    assert "CHGCAR_truncated: truncated or malformed grid block" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CHGCAR_truncated"]


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
    ):
        assert option in result.stdout
    assert "e/Å^3" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "dpcharge"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("dpcharge ")
