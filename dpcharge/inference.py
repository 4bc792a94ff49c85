"""Evaluate a frozen density model on grid points: loading, checking and the prediction engine.

A frozen model is a DeePMD-kit (TensorFlow) energy-model graph whose per-atom
output ``o_atom_energy`` at atoms of the grid-point type (the last entry of its
type map) is the density in e/Å^3. DeePMD-kit trains it as an ``EnerModel`` and
infers with ``DeepPot``; `DeepDensity` is that inference for densities. Given
every grid point at once, DeePMD-kit's own neighbour search would pair each grid
point with all the others and slow down quadratically. Here the graph is fed
chunks of grid points as its only *local* atoms, every real atom within the
cutoff (periodic images included) as a *ghost* atom, and an explicit neighbour
list of real atoms only, in DeePMD-kit's ``t_mesh`` layout: 16 header integers
(the first is the number of local atoms), then the local atom indices, the
neighbour count of each and the neighbour indices. The cost is linear in the
number of grid points.

Same input, same bytes: the grid is cut into chunks at multiples of the chunk
size, and each chunk is evaluated by one TensorFlow thread, so the density does
not depend on how many workers (threads, or MPI ranks in `dpcharge.parallel`)
share the chunks. A different chunk size changes the summation order inside
the network and the result by float round-off (~1e-7 relative in float32).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from dpcharge.conventions import CHUNK, DENSITY, TypeMap
from dpcharge.errors import InputError
from dpcharge.grid import PeriodicImages, check_grid_shape, grid_points

_INPUTS = ("t_coord", "t_type", "t_natoms", "t_box", "t_mesh")
"""Input placeholders of a DeePMD-kit TensorFlow graph."""

_MESH_HEADER = 16
"""Integers before the neighbour list in DeePMD-kit's ``t_mesh`` input."""

Progress = Callable[[int], None]
"""Called with the number of grid points finished since the last call."""


def check_chunk(chunk: int) -> int:
    """Return the chunk size (grid points per graph evaluation), refusing one below 1."""
    if chunk < 1:
        raise InputError(f"must be positive, got {chunk}", "chunk")
    return int(chunk)


def check_workers(workers: int) -> int:
    """Return the number of workers, refusing a negative one; 0 means one per core."""
    if workers < 0:
        raise InputError(f"must be 0 (one per core) or more, got {workers}", "workers")
    return workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Surroundings:
    """The real atoms around a structure's grid points, as the graph needs them.

    Attributes
    ----------
    images
        The atoms and their periodic images within the model's cutoff.
    types
        The model's type index of each image.
    """

    images: PeriodicImages
    types: np.ndarray


class DeepDensity:
    """A frozen density model, loaded once and evaluated on grids of any structure.

    Parameters
    ----------
    path
        Frozen model (``dp --tf freeze``) trained with the ``density`` fitting.
    workers
        Chunks evaluated at the same time, each by one TensorFlow thread; 0
        means one per available core. The density does not depend on it.

    Attributes
    ----------
    type_map
        The model's type map (real elements, then the grid-point type).
    rcut
        Cutoff radius in Å.
    """

    def __init__(self, path: str | os.PathLike, workers: int = 0) -> None:
        self.workers = check_workers(workers)
        tf = _import_tensorflow()
        self.path = Path(path)
        graph_def = _read_graph_def(self.path, tf)
        constants = _graph_constants(graph_def, tf)
        _check_density_model(self.path, graph_def, constants)
        self.type_map = TypeMap.from_names(constants["model_attr/tmap"].decode().split())
        self.rcut = float(constants["descrpt_attr/rcut"])
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=self.workers
        )
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        self._inputs = {name: graph.get_tensor_by_name(f"{name}:0") for name in _INPUTS}
        self._output = graph.get_tensor_by_name("o_atom_energy:0")
        self._coord_dtype = self._inputs["t_coord"].dtype.as_numpy_dtype

    def surroundings(self, atoms: Atoms) -> Surroundings:
        """Return the real atoms around a structure's points, refusing unknown elements."""
        types = np.array(self.type_map.indices(atoms.get_chemical_symbols()), dtype=int)
        images = PeriodicImages(atoms, self.rcut)
        return Surroundings(images, types[images.atom_index])

    def predict_grid(
        self,
        atoms: Atoms,
        shape: tuple[int, int, int],
        chunk: int = CHUNK,
        progress: Progress | None = None,
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
            Told how many points each finished chunk held.

        Returns
        -------
        numpy.ndarray
            Density in e/Å^3, shape (NX, NY, NZ); ``density[i, j, k]`` is the value
            at fractional coordinates (i/NX, j/NY, k/NZ).
        """
        shape = check_grid_shape(shape)
        density = np.empty(int(np.prod(shape)))
        self.predict_range(self.surroundings(atoms), shape, density, 0, chunk, progress)
        return density.reshape(shape)

    def predict_range(
        self,
        surroundings: Surroundings,
        shape: tuple[int, int, int],
        out: np.ndarray,
        start: int,
        chunk: int = CHUNK,
        progress: Progress | None = None,
    ) -> None:
        """Predict the density at flat grid indices ``start:start + len(out)``, chunk by chunk.

        The one chunk loop of dpcharge: serial prediction runs it over the whole
        grid, each MPI rank over its block. Chunks start at multiples of
        ``chunk``, so every point is evaluated in the same chunk whatever the
        range.

        Parameters
        ----------
        surroundings
            The structure's atoms, from `surroundings`.
        shape
            Grid counts (NX, NY, NZ).
        out
            Receives the density in e/Å^3 of the range, flat, in C order.
        start
            First flat index; a multiple of ``chunk``.
        chunk
            Grid points per graph evaluation.
        progress
            Told how many points each finished chunk held.
        """
        chunk = check_chunk(chunk)
        if start % chunk:
            raise ValueError(f"the range must start on a chunk boundary, not at {start}")
        stop = start + len(out)
        bounds = [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]

        def evaluate(bound: tuple[int, int]) -> np.ndarray:
            index = np.arange(*bound)
            points = surroundings.images.push_out_of_nuclei(
                grid_points(surroundings.images.cell, shape, index)
            )
            return self._evaluate(surroundings, points)

        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for bound in [*bounds, None]:  # keep at most 2 chunks per worker in flight
                if bound is not None:
                    pending.append((bound, pool.submit(evaluate, bound)))
                while pending and (bound is None or len(pending) > 2 * self.workers):
                    (begin, end), future = pending.popleft()
                    out[begin - start : end - start] = future.result()
                    if progress is not None:
                        progress(end - begin)

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
        return self._evaluate(self.surroundings(atoms), np.asarray(points, dtype=float))

    def _evaluate(self, surroundings: Surroundings, points: np.ndarray) -> np.ndarray:
        """Run the graph once: ``points`` (Å) are the local atoms, real atoms the ghosts."""
        images = surroundings.images
        points = images.wrap(points)
        local = len(points)
        neighbours = images.tree.query_ball_point(points, self.rcut, return_sorted=False)
        counts = np.fromiter(map(len, neighbours), dtype=np.int64, count=local)
        flat = np.fromiter(itertools.chain.from_iterable(neighbours), np.int64, counts.sum())
        ghosts, neighbour_index = np.unique(flat, return_inverse=True)
        coords = np.concatenate([points, images.positions[ghosts]])
        types = np.concatenate(
            [np.full(local, self.type_map.grid_index), surroundings.types[ghosts]]
        )
        natoms = np.zeros(len(self.type_map.names) + 2, dtype=np.int32)
        natoms[0], natoms[1], natoms[-1] = local, len(coords), local
        mesh = np.concatenate(
            [[local], np.zeros(_MESH_HEADER - 1), np.arange(local), counts, local + neighbour_index]
        )
        feed = {
            self._inputs["t_coord"]: coords.reshape(-1).astype(self._coord_dtype),
            self._inputs["t_type"]: types.astype(np.int32),
            self._inputs["t_natoms"]: natoms,
            self._inputs["t_box"]: images.cell.reshape(-1).astype(self._coord_dtype),
            self._inputs["t_mesh"]: mesh.astype(np.int32),
        }
        return self._session.run(self._output, feed_dict=feed).reshape(local).astype(float)


def _import_tensorflow() -> object:
    """Import TensorFlow with DeePMD-kit's operators registered.

    Each chunk is evaluated by one thread (see the module docstring), so
    DeePMD-kit's OpenMP operators get one thread too unless the user set
    ``OMP_NUM_THREADS``; it is read when DeePMD-kit is first imported.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from deepmd.tf.env import op_module, tf  # noqa: F401  (op_module registers the ops)

    return tf


def _read_graph_def(path: Path, tf: object) -> object:
    """Parse a frozen TensorFlow graph, refusing files that are not one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a frozen model") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
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
    not_a_model = InputError(
        f"{path}: not a frozen DeePMD-kit TensorFlow model (freeze one with dp --tf freeze)"
    )
    names = {node.name for node in graph_def.node}  # type: ignore[attr-defined]
    if not {*_INPUTS, "model_attr/tmap", "descrpt_attr/rcut"} <= names:
        raise not_a_model
    try:
        model_type = constants.get("model_attr/model_type", b"?").decode()  # type: ignore[attr-defined]
        script = json.loads(constants.get("train_attr/training_script", b"{}"))  # type: ignore[arg-type]
        constants["model_attr/tmap"].decode()  # type: ignore[attr-defined]
    except (UnicodeDecodeError, ValueError, AttributeError):  # bytes flipped in a string
        raise not_a_model from None
    model = script.get("model", {})
    fitting = model.get("fitting_net", {})
    if (
        model_type != "ener"
        or "o_atom_energy" not in names
        or DENSITY not in (model.get("type"), fitting.get("type"))
    ):
        kind = fitting.get("type") or model_type
        raise InputError(
            f"{path}: not a density model (a DeePMD-kit {kind!r} model); train one with "
            f'"fitting_net": {{"type": "{DENSITY}"}}'
        )
