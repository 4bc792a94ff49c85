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

import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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
    """Frozen density models, loaded once and evaluated on grids of any structure.

    One model predicts the density. Several models (an ensemble: the same input
    trained with other seeds, as DP-GEN does for potentials) predict their mean,
    and their standard deviation estimates its error; each chunk of grid points
    is evaluated by one model after the other, so memory does not grow with the
    number of models.

    Parameters
    ----------
    paths
        Frozen model(s) (``dp --tf freeze``) trained with the ``density``
        fitting; several must share the type map and the cutoff.
    workers
        Chunks evaluated at the same time, each by one TensorFlow thread; 0
        means one per available core. The density does not depend on it.

    Attributes
    ----------
    type_map
        The models' type map (real elements, then the grid-point type).
    rcut
        Cutoff radius in Å.
    """

    def __init__(
        self, paths: str | os.PathLike | Sequence[str | os.PathLike], workers: int = 0
    ) -> None:
        self.workers = check_workers(workers)
        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        if not paths:
            raise InputError("no model given", "models")
        tf = _import_tensorflow()
        self._graphs = [_FrozenGraph(Path(path), self.workers, tf) for path in paths]
        first = self._graphs[0]
        for graph in self._graphs[1:]:
            if (graph.type_map, graph.rcut) != (first.type_map, first.rcut):
                raise InputError(
                    f"{graph.path} has type map {list(graph.type_map.names)} and cutoff "
                    f"{graph.rcut} Å, {first.path} {list(first.type_map.names)} and "
                    f"{first.rcut} Å: an ensemble's models must share both",
                    "models",
                )
        self.type_map, self.rcut = first.type_map, first.rcut
        self._listed = max(graph.listed for graph in self._graphs)

    @property
    def size(self) -> int:
        """Number of models."""
        return len(self._graphs)

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
        deviation: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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
        deviation
            Also return the models' standard deviation (needs two models or more).

        Returns
        -------
        density : numpy.ndarray
            Density in e/Å^3 (the models' mean), shape (NX, NY, NZ);
            ``density[i, j, k]`` is the value at fractional coordinates
            (i/NX, j/NY, k/NZ).
        spread : numpy.ndarray
            With ``deviation``: the standard deviation across models, e/Å^3.
        """
        shape = check_grid_shape(shape)
        size = int(np.prod(shape))
        density = np.empty(size)
        spread = np.empty(size) if deviation else None
        self.predict_range(self.surroundings(atoms), shape, density, 0, chunk, progress, spread)
        if spread is None:
            return density.reshape(shape)
        return density.reshape(shape), spread.reshape(shape)

    def predict_range(
        self,
        surroundings: Surroundings,
        shape: tuple[int, int, int],
        out: np.ndarray,
        start: int,
        chunk: int = CHUNK,
        progress: Progress | None = None,
        deviation: np.ndarray | None = None,
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
            Receives the density in e/Å^3 of the range (the models' mean), flat,
            in C order.
        start
            First flat index; a multiple of ``chunk``.
        chunk
            Grid points per graph evaluation.
        progress
            Told how many points each finished chunk held.
        deviation
            If given, receives the standard deviation across the models (e/Å^3)
            of the same points; needs two models or more.
        """
        chunk = check_chunk(chunk)
        if start % chunk:
            raise ValueError(f"the range must start on a chunk boundary, not at {start}")
        if deviation is not None and self.size < 2:
            raise InputError("a deviation needs two models or more", "models")
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
                    predictions = future.result()
                    out[begin - start : end - start] = predictions.mean(axis=0)
                    if deviation is not None:
                        deviation[begin - start : end - start] = predictions.std(axis=0)
                    if progress is not None:
                        progress(end - begin)

    def predict_points(self, atoms: Atoms, points: np.ndarray) -> np.ndarray:
        """Predict the density at given points, all in one graph evaluation per model.

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
            Density in e/Å^3 (the models' mean), shape (N,).
        """
        points = np.asarray(points, dtype=float)
        return self._evaluate(self.surroundings(atoms), points).mean(axis=0)

    def _evaluate(self, surroundings: Surroundings, points: np.ndarray) -> np.ndarray:
        """Run each model once: ``points`` (Å) are the local atoms, real atoms the ghosts.

        Returns the density in e/Å^3 of every model at every point, shape
        (models, points).
        """
        images = surroundings.images
        points = images.wrap(points)
        local = len(points)
        # one column more than any model lists: a point whose last column is found has more
        distances, index = images.tree.query(
            points, k=self._listed + 1, distance_upper_bound=self.rcut
        )
        found = np.isfinite(distances)
        kinds = np.where(found, surroundings.types[np.where(found, index, 0)], -1)
        for graph in self._graphs:
            graph.check_neighbours(distances, kinds, found[:, -1].any())
        counts = found.sum(axis=1)
        flat = index[found]  # row by row: each point's neighbours together
        listed = np.zeros(len(images.positions), dtype=bool)
        listed[flat] = True
        ghosts = np.flatnonzero(listed)
        neighbour_index = (np.cumsum(listed) - 1)[flat]
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
            "t_coord": coords.reshape(-1),
            "t_type": types.astype(np.int32),
            "t_natoms": natoms,
            "t_box": images.cell.reshape(-1),
            "t_mesh": mesh.astype(np.int32),
        }
        return np.stack([graph.run(feed, local) for graph in self._graphs])


class _FrozenGraph:
    """One frozen model's graph in its own TensorFlow session."""

    def __init__(self, path: Path, workers: int, tf: object) -> None:
        self.path = path
        graph_def = _read_graph_def(path, tf)
        constants = _graph_constants(graph_def, tf)
        script = _check_density_model(path, graph_def, constants)
        self.type_map = TypeMap.from_names(constants["model_attr/tmap"].decode().split())
        self.rcut = float(constants["descrpt_attr/rcut"])
        self._limits = _neighbour_limits(constants, script, self.rcut, self.type_map)
        self.listed = int(np.sum(constants["descrpt_attr/sel"]))  # neighbours of a point
        graph = tf.Graph()  # type: ignore[attr-defined]
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")  # type: ignore[attr-defined]
        config = tf.compat.v1.ConfigProto(  # type: ignore[attr-defined]
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=workers
        )
        self._session = tf.compat.v1.Session(graph=graph, config=config)  # type: ignore[attr-defined]
        self._inputs = {name: graph.get_tensor_by_name(f"{name}:0") for name in _INPUTS}
        self._output = graph.get_tensor_by_name("o_atom_energy:0")
        self._float = self._inputs["t_coord"].dtype.as_numpy_dtype

    def check_neighbours(self, distances: np.ndarray, kinds: np.ndarray, overflow: bool) -> None:
        """Refuse grid points with more neighbours than the graph lists (`_neighbour_limits`).

        Parameters
        ----------
        distances
            Distance (Å) of each point's nearest atoms, nearest first, inf past the cutoff;
            shape (points, columns).
        kinds
            Type index of each of those atoms, -1 where none was found.
        overflow
            True when some point had an atom in every column: it may have more than counted.
        """
        if overflow:
            self._refuse_crowding(f"more than {distances.shape[1] - 1}", self.rcut, self.listed)
        for radius, element, limit in self._limits:
            within = distances < radius
            if element is not None:
                within &= kinds == element
            most = int(within.sum(axis=1).max())
            if most > limit:
                name = "" if element is None else f" {self.type_map.elements[element]}"
                self._refuse_crowding(f"{most}{name}", radius, limit)

    def _refuse_crowding(self, count: str, radius: float, limit: int) -> NoReturn:
        raise InputError(
            f"{self.path}: a grid point of this structure has {count} atoms within {radius:g} "
            f"Å, and the model lists only the nearest {limit} (its sel): it would ignore the "
            "others. The structure is denser than the model was made for; train one with a "
            "larger sel"
        )

    def run(self, feed: dict[str, np.ndarray], local: int) -> np.ndarray:
        """Evaluate the graph; return the density (e/Å^3) at the ``local`` grid points."""
        values = {
            self._inputs[name]: array.astype(self._float) if array.dtype.kind == "f" else array
            for name, array in feed.items()
        }
        return self._session.run(self._output, feed_dict=values).reshape(local).astype(float)


def _import_tensorflow() -> object:
    """Import TensorFlow (its v1 API) with DeePMD-kit's operators registered.

    Only DeePMD-kit's operator library is loaded, not its ``deepmd.tf`` package,
    whose import costs about a second more and which a frozen graph does not need.
    Each chunk is evaluated by one thread (see the module docstring), so
    DeePMD-kit's OpenMP operators get one thread too unless the user set
    ``OMP_NUM_THREADS``; it is read when the operators first run.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow.compat.v1 as tf
    from deepmd.env import SHARED_LIB_DIR

    tf.load_op_library(str(SHARED_LIB_DIR / "libdeepmd_op.so"))
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


def _check_density_model(path: Path, graph_def: object, constants: dict[str, object]) -> dict:
    """Refuse graphs that are not DeePMD-kit density models (one-line `InputError`).

    Returns the training input stored in the graph.
    """
    not_a_model = InputError(
        f"{path}: not a frozen DeePMD-kit TensorFlow model (freeze one with dp --tf freeze)"
    )
    names = {node.name for node in graph_def.node}  # type: ignore[attr-defined]
    if not {*_INPUTS, "model_attr/tmap", "descrpt_attr/rcut", "descrpt_attr/sel"} <= names:
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
    return script


def _neighbour_limits(
    constants: dict[str, object], script: dict, rcut: float, type_map: TypeMap
) -> list[tuple[float, int | None, int]]:
    """Return the most real atoms a graph lists around a point: (radius Å, element, count).

    DeePMD-kit keeps the nearest ``sel`` neighbours of each type within the descriptor's
    cutoff and drops the others without a word; the density fitting's baseline keeps its own
    ``sel`` nearest within its ``rcut``. Element None counts all real atoms (a descriptor
    whose ``sel`` is one total, as se_atten's); an element whose pair with the grid type the
    descriptor excludes is not counted (as `dpcharge.fitting.check_descriptor_sel`).
    """
    sel = [int(count) for count in np.atleast_1d(constants["descrpt_attr/sel"])]
    elements = range(len(type_map.elements))
    grid = type_map.grid_index
    excluded = {tuple(pair) for pair in script["model"]["descriptor"].get("exclude_types", [])}
    if len(sel) == len(type_map.names):
        limits = [
            (rcut, element, sel[element])
            for element in elements
            if (grid, element) not in excluded and (element, grid) not in excluded
        ]
    else:
        limits = [(rcut, None, sum(sel))]
    baseline = script["model"].get("fitting_net", {}).get("baseline") or {}
    if baseline.get("sel") is not None:
        radius = float(baseline["rcut"])
        limits += [(radius, element, int(baseline["sel"][element])) for element in elements]
    return limits
