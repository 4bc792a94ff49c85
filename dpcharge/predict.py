"""Predict a density on a whole grid with a frozen Deep Charge model.

A frozen model is a DeePMD-kit (TensorFlow) energy-model graph whose per-atom
output ``o_atom_energy`` at atoms of the grid-point type (the last entry of its
type map) is the density in e/Å^3. Given every grid point at once, DeePMD-kit's
own neighbour search would pair each grid point with all the others and slow
down quadratically. Here the graph is fed chunks of grid points as its only
*local* atoms, every real atom within the cutoff (periodic images included) as a
*ghost* atom, and an explicit neighbour list of real atoms only, in DeePMD-kit's
``t_mesh`` layout: 16 header integers (the first is the number of local atoms),
then the local atom indices, the neighbour count of each and the neighbour
indices. The cost is linear in the number of grid points.

This module owns loading and checking a model, choosing a grid, the prediction
itself and the rescaling of a density to a number of electrons.
"""

from __future__ import annotations

import atexit
import itertools
import json
import math
import os
import sys
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree
from tqdm import tqdm

from dpcharge.chgcar import read_density, write_atomically
from dpcharge.errors import InputError
from dpcharge.metrics import electron_count
from dpcharge.sampling import grid_points, push_out_of_nuclei

DEFAULT_CHUNK = 2000
"""Grid points per graph evaluation: bounds the memory; 1,000-4,000 run fastest on 2 cores."""

DEFAULT_SPACING = 0.15
"""Grid spacing in Å used when nothing else sets the grid (VASP's fine grids are 0.1-0.15 Å)."""

FFT_PRIMES = (2, 3, 5, 7)
"""Prime factors allowed in grid counts, as in VASP and Quantum ESPRESSO FFT grids."""

DENSITY_TYPE = "density"
"""``model.type`` / ``fitting_net.type`` of a density model in its training script."""

_INPUTS = ("t_coord", "t_type", "t_natoms", "t_box", "t_mesh")
"""Input placeholders of a DeePMD-kit TensorFlow graph."""

_MESH_HEADER = 16
"""Integers before the neighbour list in DeePMD-kit's ``t_mesh`` input."""


class DensityModel:
    """A frozen density model, loaded once and evaluated on grids of any structure.

    Parameters
    ----------
    path
        Frozen model (``dp --tf freeze``) trained with the ``density`` fitting.
    threads
        Threads for TensorFlow's intra- and inter-op pools; 0 lets TensorFlow choose.

    Attributes
    ----------
    type_map
        Names of the model's types; the last is the grid-point type.
    rcut
        Cutoff radius in Å.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        if threads < 0:
            raise InputError(f"--threads must be 0 (TensorFlow's choice) or more, got {threads}")
        tf = _import_tensorflow(threads)
        self.path = Path(path)
        graph_def = _read_graph_def(self.path, tf)
        constants = _graph_constants(graph_def, tf)
        _check_density_model(self.path, graph_def, constants)
        self.type_map: list[str] = constants["model_attr/tmap"].decode().split()
        self.rcut = float(constants["descrpt_attr/rcut"])
        self.grid_type = len(self.type_map) - 1
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads
        )
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        self._inputs = {name: graph.get_tensor_by_name(f"{name}:0") for name in _INPUTS}
        self._output = graph.get_tensor_by_name("o_atom_energy:0")
        self._coord_dtype = self._inputs["t_coord"].dtype.as_numpy_dtype

    def predict_grid(
        self,
        atoms: Atoms,
        shape: tuple[int, int, int],
        chunk: int = DEFAULT_CHUNK,
        progress: bool = False,
    ) -> np.ndarray:
        """Predict the density on every point of a grid spanning the cell.

        Parameters
        ----------
        atoms
            The structure (positions and cell in Å).
        shape
            Grid counts (NX, NY, NZ).
        chunk
            Grid points per graph evaluation: bounds the memory.
        progress
            Show a progress bar with points/s on standard error.

        Returns
        -------
        numpy.ndarray
            Density in e/Å^3, shape (NX, NY, NZ); ``density[i, j, k]`` is the value
            at fractional coordinates (i/NX, j/NY, k/NZ).
        """
        shape = check_grid_shape(shape)
        if chunk < 1:
            raise InputError(f"--chunk must be positive, got {chunk}")
        real = RealAtoms(atoms, self)
        size = math.prod(shape)
        density = np.empty(size)
        with tqdm(
            total=size, desc="predict", unit="point", unit_scale=True, disable=not progress
        ) as bar:
            for start in range(0, size, chunk):
                stop = min(start + chunk, size)
                density[start:stop] = self.predict_indices(real, shape, start, stop)
                bar.update(stop - start)
        return density.reshape(shape)

    def predict_indices(
        self, real: RealAtoms, shape: tuple[int, int, int], start: int, stop: int
    ) -> np.ndarray:
        """Predict the density at grid points ``start:stop`` (flat C-order indices), in one run.

        Parameters
        ----------
        real
            The real atoms and their periodic images, from `RealAtoms`.
        shape
            Grid counts (NX, NY, NZ).
        start, stop
            Range of flat indices into the C-ordered grid.

        Returns
        -------
        numpy.ndarray
            Density in e/Å^3, shape (stop - start,).
        """
        index = np.arange(start, stop)
        points = push_out_of_nuclei(grid_points(real.cell, shape, index), real.tree)
        return self.evaluate(real, points)

    def predict_points(self, atoms: Atoms, points: np.ndarray) -> np.ndarray:
        """Predict the density at given points, all in one graph evaluation.

        Parameters
        ----------
        atoms
            The structure (positions and cell in Å).
        points
            Cartesian coordinates in Å, shape (N, 3), anywhere (periodic
            directions wrap); unlike grid points, not moved away from nuclei.

        Returns
        -------
        numpy.ndarray
            Density in e/Å^3, shape (N,).
        """
        return self.evaluate(RealAtoms(atoms, self), np.asarray(points, dtype=float))

    def evaluate(self, real: RealAtoms, points: np.ndarray) -> np.ndarray:
        """Run the graph once: ``points`` are the local atoms, real atoms the ghosts.

        Parameters
        ----------
        real
            The real atoms and their periodic images, from `RealAtoms`.
        points
            Cartesian coordinates of grid points in Å, shape (N, 3).

        Returns
        -------
        numpy.ndarray
            Density in e/Å^3 at each point, shape (N,).
        """
        points = real.wrap(points)
        local = len(points)
        neighbours = real.tree.query_ball_point(points, self.rcut, return_sorted=False)
        counts = np.fromiter(map(len, neighbours), dtype=np.int64, count=local)
        flat = np.fromiter(itertools.chain.from_iterable(neighbours), np.int64, counts.sum())
        ghosts, neighbour_index = np.unique(flat, return_inverse=True)
        coords = np.concatenate([points, real.image_positions[ghosts]])
        types = np.concatenate([np.full(local, self.grid_type), real.image_types[ghosts]])
        natoms = np.zeros(len(self.type_map) + 2, dtype=np.int32)
        natoms[0], natoms[1], natoms[-1] = local, len(coords), local
        mesh = np.concatenate(
            [[local], np.zeros(_MESH_HEADER - 1), np.arange(local), counts, local + neighbour_index]
        )
        feed = {
            self._inputs["t_coord"]: coords.reshape(-1).astype(self._coord_dtype),
            self._inputs["t_type"]: types.astype(np.int32),
            self._inputs["t_natoms"]: natoms,
            self._inputs["t_box"]: real.cell.reshape(-1).astype(self._coord_dtype),
            self._inputs["t_mesh"]: mesh.astype(np.int32),
        }
        return self._session.run(self._output, feed_dict=feed).reshape(local).astype(float)


class RealAtoms:
    """The real atoms of a structure and their periodic images within the cutoff.

    Positions are wrapped into the cell; along each periodic direction, images
    are shifted by up to ceil(rcut / plane spacing) cells, enough for any point
    wrapped into the cell (`wrap`), also for cells smaller than the cutoff.
    Non-periodic directions get no images (vacuum).

    Parameters
    ----------
    atoms
        The structure (Å); all its elements must be real types of the model.
    model
        The model whose type map and cutoff apply.
    """

    def __init__(self, atoms: Atoms, model: DensityModel) -> None:
        self.cell = check_cell(atoms)
        self.types = atom_types(atoms, model.type_map)
        self.periodic = np.asarray(atoms.get_pbc(), dtype=bool)
        self.positions = self.wrap(atoms.get_positions())
        plane_spacing = 1 / np.linalg.norm(np.linalg.inv(self.cell), axis=0)
        reach = np.where(self.periodic, np.ceil(model.rcut / plane_spacing), 0).astype(int)
        shifts = np.stack(
            np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), axis=-1
        ).reshape(-1, 3)
        self.image_positions = (self.positions[None] + (shifts @ self.cell)[:, None]).reshape(-1, 3)
        self.image_types = np.tile(self.types, len(shifts))
        self.tree = cKDTree(self.image_positions)

    def wrap(self, positions: np.ndarray) -> np.ndarray:
        """Return positions (Å) moved into the cell along its periodic directions."""
        fractional = np.linalg.solve(self.cell.T, np.asarray(positions, dtype=float).T).T
        fractional[:, self.periodic] %= 1.0
        return fractional @ self.cell


def read_structure_or_density(path: str | os.PathLike) -> tuple[Atoms, np.ndarray | None]:
    """Read a structure from any file ase reads; a VASP volumetric file also gives its density.

    Parameters
    ----------
    path
        POSCAR/CONTCAR, CHGCAR (plain or gzip), extxyz, cif, ...

    Returns
    -------
    atoms
        The structure (Å).
    density
        The file's density in e/Å^3 when it is a VASP volumetric file, else None.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return read_density(path)
    except InputError:
        pass  # not a volumetric file: let ase try its formats
    try:
        atoms = ase.io.read(path)
    except Exception as error:  # ase raises many kinds on unreadable input
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"{path}: unreadable structure ({reason})") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise InputError(f"{path}: no atoms in the file")
    return atoms, None


def atom_types(atoms: Atoms, type_map: list[str]) -> np.ndarray:
    """Return each atom's index in the model's type map, refusing unknown elements.

    Parameters
    ----------
    atoms
        The structure.
    type_map
        The model's types, the grid-point type last.

    Returns
    -------
    numpy.ndarray
        Type index of each atom.
    """
    real = type_map[:-1]
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(real))
    if unknown:
        raise InputError(
            f"the structure holds {', '.join(unknown)}, which the model does not know "
            f"(its elements: {', '.join(real)}; grid-point type {type_map[-1]})"
        )
    return np.array([real.index(symbol) for symbol in symbols], dtype=int)


def check_cell(atoms: Atoms) -> np.ndarray:
    """Return the cell vectors (rows, Å), refusing a structure without a 3-d cell."""
    cell = np.array(atoms.get_cell().array, dtype=float)
    if not abs(np.linalg.det(cell)) > 1e-8:
        raise InputError("the structure has no 3-d cell: a density grid needs one")
    return cell


def check_grid_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return the grid counts as three ints, refusing a grid without points."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"a grid needs three positive counts NX NY NZ, got {shape}")
    return shape  # type: ignore[return-value]


def fft_friendly(count: int) -> int:
    """Return the smallest integer >= ``count`` whose prime factors are all in `FFT_PRIMES`."""
    candidate = max(int(count), 1)
    while True:
        rest = candidate
        for prime in FFT_PRIMES:
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return candidate
        candidate += 1


def grid_for_spacing(cell: np.ndarray, spacing: float) -> tuple[int, int, int]:
    """Return the smallest FFT-friendly grid whose spacing along each cell vector is <= ``spacing``.

    Parameters
    ----------
    cell
        Cell vectors as rows, in Å.
    spacing
        Largest distance between neighbouring grid points along a cell vector, in Å.

    Returns
    -------
    tuple of int
        Grid counts (NX, NY, NZ).
    """
    if not spacing > 0:
        raise InputError(f"--spacing must be positive, got {spacing} Å")
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    counts = [fft_friendly(math.ceil(length / spacing - 1e-9)) for length in lengths]
    return check_grid_shape(counts)


def rescale_to_electrons(density: np.ndarray, volume: float, electrons: float) -> np.ndarray:
    """Scale a density so that it integrates to a number of electrons over the cell.

    Parameters
    ----------
    density
        Density in e/Å^3 on a grid spanning the cell.
    volume
        Cell volume in Å^3.
    electrons
        Target number of (valence) electrons, e.

    Returns
    -------
    numpy.ndarray
        The rescaled density in e/Å^3.
    """
    if not electrons > 0:
        raise InputError(f"the number of electrons must be positive, got {electrons}")
    integral = electron_count(density, volume)
    if not integral > 0:
        raise InputError(f"cannot rescale: the predicted density integrates to {integral:.6g} e")
    return density * (electrons / integral)


def write_npy(path: str | os.PathLike, density: np.ndarray) -> None:
    """Save a density array (e/Å^3) as ``.npy`` through a temporary file and a rename."""
    write_atomically(path, lambda stream: np.save(stream.buffer, density))


def _import_tensorflow(threads: int) -> object:
    """Import TensorFlow with DeePMD-kit's operators, keeping their load-time notices quiet.

    The CPU builds print oneDNN and missing-CUDA notices on standard error when
    loaded and again when unloaded at exit; harmless, they would bury dpcharge's
    own messages, so file descriptor 2 goes to /dev/null while loading and at exit.
    """
    for variable, value in (
        ("TF_CPP_MIN_LOG_LEVEL", 2),
        ("OMP_NUM_THREADS", threads or os.cpu_count() or 1),
        ("DP_INTRA_OP_PARALLELISM_THREADS", threads),
        ("DP_INTER_OP_PARALLELISM_THREADS", threads),
    ):
        os.environ.setdefault(variable, str(value))  # read when DeePMD-kit is first imported
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        from deepmd.tf.env import op_module, tf  # noqa: F401  (op_module registers the ops)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    atexit.unregister(_silence_standard_error)
    atexit.register(_silence_standard_error)
    return tf


def _silence_standard_error() -> None:
    """Send file descriptor 2 to /dev/null (at exit, for the unload notices)."""
    sys.stderr.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)


def _read_graph_def(path: Path, tf: object) -> object:
    """Parse a frozen TensorFlow graph, refusing files that are not one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    graph_def = tf.compat.v1.GraphDef()  # type: ignore[attr-defined]
    try:
        graph_def.ParseFromString(raw)
    except Exception:  # protobuf's DecodeError and friends
        raise InputError(
            f"{path}: not a frozen DeePMD-kit TensorFlow model (freeze one with dp --tf freeze)"
        ) from None
    return graph_def


def _graph_constants(graph_def: object, tf: object) -> dict[str, object]:
    """Return the values of the graph's attribute constants (``*_attr/*``) by node name.

    Scalars come back as Python values (bytes for strings), arrays as numpy arrays.
    """
    constants = {}
    for node in graph_def.node:  # type: ignore[attr-defined]
        if node.op == "Const" and "_attr/" in node.name:
            value = tf.make_ndarray(node.attr["value"].tensor)  # type: ignore[attr-defined]
            constants[node.name] = value.item() if value.ndim == 0 else value
    return constants


def _check_density_model(path: Path, graph_def: object, constants: dict[str, object]) -> None:
    """Refuse graphs that are not DeePMD-kit density models (one-line `InputError`)."""
    names = {node.name for node in graph_def.node}  # type: ignore[attr-defined]
    needed = {*_INPUTS, "model_attr/tmap", "descrpt_attr/rcut"}
    if not needed <= names:
        raise InputError(
            f"{path}: not a frozen DeePMD-kit TensorFlow model (freeze one with dp --tf freeze)"
        )
    model_type = constants.get("model_attr/model_type", b"?").decode()  # type: ignore[attr-defined]
    script = json.loads(constants.get("train_attr/training_script", b"{}"))  # type: ignore[arg-type]
    model = script.get("model", {})
    fitting = model.get("fitting_net", {})
    if (
        model_type != "ener"
        or "o_atom_energy" not in names
        or DENSITY_TYPE not in (model.get("type"), fitting.get("type"))
    ):
        kind = fitting.get("type") or model_type
        raise InputError(
            f"{path}: not a density model (a DeePMD-kit {kind!r} model); train one with "
            f'"fitting_net": {{"type": "{DENSITY_TYPE}"}}'
        )
