"""MPI-parallel reassemble: real ``mpirun`` runs against the serial output, byte for byte."""

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from conftest import sphere_of_atoms

from dpcharge import parallel
from dpcharge.errors import InputError

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
AL4 = DATA / "CHGCAR_Al4_lda_qe.gz"
DPCHARGE = Path(sys.executable).with_name("dpcharge")
MPIRUN = shutil.which("mpirun")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="needs Open MPI's mpirun (apt-get install openmpi-bin libopenmpi-dev) and mpi4py "
    "(pip install -e .[mpi])",
)


def mpirun(ranks, *args):
    """Run ``mpirun -np ranks dpcharge ...`` (allowed as root, more ranks than cores)."""
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl="self,vader,tcp")
    command = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)]
    command += [str(DPCHARGE), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def serial(*args):
    """Run ``dpcharge ...`` without MPI (launcher variables removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    command = [str(DPCHARGE), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "size, chunk, ranks", [(5760, 300, 2), (5760, 300, 7), (10, 4, 5), (1, 9, 3)]
)
def test_rank_blocks_tile_the_grid_on_chunk_boundaries(size, chunk, ranks):
    blocks = [parallel.rank_block(size, chunk, ranks, rank) for rank in range(ranks)]
    assert blocks[0][0] == 0 and blocks[-1][1] == size
    for (_, stop), (start, _) in itertools.pairwise(blocks):
        assert stop == start
    assert all(start % chunk == 0 or start == size for start, _ in blocks)
    chunks = [-(-(stop - start) // chunk) for start, stop in blocks]
    assert max(chunks) - min(chunks) <= 1


def test_launch_without_mpi4py_is_refused(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(InputError, match="4 ranks but mpi4py is not installed"):
        parallel.world()


def test_serial_run_needs_no_mpi(monkeypatch):
    for variable in parallel.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert parallel.world() is None and parallel.is_root(None)


@needs_mpi
def test_mpirun_two_ranks_writes_the_serial_file_byte_for_byte(density_model, tmp_path):
    grid = ("--grid", 20, 18, 15)  # 5,400 points: 18 chunks of 300, rank blocks of 9
    options = (*grid, "--chunk", 300)
    # two threads in the serial run, one per rank under MPI: the same bytes all the same
    one = serial("reassemble", density_model.model, SI8, "-o", tmp_path / "serial", *options,
                 "--threads", 2)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = mpirun(2, "reassemble", density_model.model, SI8, "-o", tmp_path / "mpi", *options,
                 "--threads", 1)  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    serial_bytes = (tmp_path / "serial").read_bytes()
    mpi_bytes = (tmp_path / "mpi").read_bytes()
    assert len(serial_bytes) > 5400 * 10
    assert mpi_bytes == serial_bytes
    assert "on 2 MPI ranks" in two.stdout
    assert two.stdout.count("wrote ") == 1  # only rank 0 prints and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mpi", "serial"]


@needs_mpi
def test_mpirun_uneven_chunks_and_npy_match_serial(density_model, second_model, tmp_path):
    # 3 ranks, 5,400 points in chunks of 700: 8 chunks, the last one short
    # an ensemble of two models, with their deviation
    options = ("--grid", 20, 18, 15, "--chunk", 700)
    models = (density_model.model, second_model)
    one = serial("reassemble", *models, SI8, "-o", tmp_path / "a", "--npy", tmp_path / "a.npy",
                 "--deviation", tmp_path / "da.npy", *options)  # fmt: skip
    assert one.returncode == 0, one.stderr
    three = mpirun(3, "reassemble", *models, SI8, "-o", tmp_path / "b", "--npy",
                   tmp_path / "b.npy", "--deviation", tmp_path / "db.npy", *options)  # fmt: skip
    assert three.returncode == 0, three.stdout + three.stderr
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (20, 18, 15) and np.array_equal(a, b)
    assert np.ptp(a) > 0.01  # a real density, not a constant
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    deviation = np.load(tmp_path / "da.npy")
    assert np.array_equal(deviation, np.load(tmp_path / "db.npy")) and deviation.max() > 1e-4


@needs_mpi
@pytest.mark.parametrize(
    "structure, message",
    [
        ("missing.vasp", "missing.vasp: no such file"),
        (AL4, "holds Al, which the type map does not"),
    ],
)
def test_mpirun_error_ends_all_ranks_with_one_message(density_model, tmp_path, structure, message):
    result = mpirun(2, "reassemble", density_model.model, structure, "-o", tmp_path / "out")
    assert result.returncode != 0
    assert result.stderr.count("dpcharge: error:") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@needs_mpi
def test_mpirun_a_refusal_in_one_ranks_block_ends_all_ranks_with_one_message(
    density_model, tmp_path
):
    # 60 Si on a 3 Å sphere centred at x = 13 Å of a 20 Å box: only the grid points of the
    # planes x = 12 and 14 Å (chunks 6 and 7 of ten of 100) have more than the model's 48
    # within 5 Å (up to 42 elsewhere), all in rank 1's block
    crowded = sphere_of_atoms(60)
    crowded.translate([3.0, 0.0, 0.0])
    ase.io.write(tmp_path / "POSCAR", crowded, format="vasp")
    result = mpirun(
        2, "reassemble", density_model.model, tmp_path / "POSCAR", "-o", tmp_path / "out",
        "--grid", 10, 10, 10, "--chunk", 100,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("dpcharge: error:") == 1, result.stderr
    assert "the model lists only the nearest 48 (its sel)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


class Rank:
    """One rank of a two-rank job, seen through the calls `parallel.predict_grid` makes."""

    def __init__(self, rank, other_report):
        self.rank, self.other_report = rank, other_report

    def Get_size(self):
        return 2

    def Get_rank(self):
        return self.rank

    def allgather(self, report):
        return [report, self.other_report] if self.rank == 0 else [self.other_report, report]


class CrashingModel:
    def surroundings(self, atoms):
        return None

    def predict_range(self, *args):
        raise ZeroDivisionError("a bug")


class WorkingModel(CrashingModel):
    def predict_range(self, *args):
        pass


@needs_mpi
def test_a_crash_keeps_its_traceback_on_its_rank_and_ends_the_others():
    atoms = bulk("Si", "diamond", a=5.43)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        parallel.predict_grid(CrashingModel(), atoms, (4, 4, 4), 8, Rank(1, ("", None)))
    crash = ("", "ZeroDivisionError('a bug')")
    with pytest.raises(RuntimeError, match=r"rank 1 crashed: ZeroDivisionError\('a bug'\)"):
        parallel.predict_grid(WorkingModel(), atoms, (4, 4, 4), 8, Rank(0, crash))
    refusal = ("POSCAR: no such file", None)
    with pytest.raises(InputError, match="POSCAR: no such file"):
        parallel.predict_grid(WorkingModel(), atoms, (4, 4, 4), 8, Rank(0, refusal))
