"""Shared fixtures: small density models trained and frozen on real densities.

`density_model` converts the Quantum ESPRESSO Si8 density with ``dpcharge convert``,
trains ``input_templates/si.json`` shrunk to a small network with plain ``dp train``
and freezes it with ``dp freeze``, all as subprocesses, once per test session.
`spin_models` does the same for both components of a real spin-polarised VASP file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

TESTS = Path(__file__).parent
DATA = TESTS / "data"
TEMPLATES = TESTS.parent / "input_templates"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
NO_SPIN = DATA / "sisl-files_NO_polarized_CHGCAR.gz"
DP = Path(sys.executable).parent / "dp"

SMALL_NETWORK = {
    "descriptor": {"neuron": [10, 20], "axis_neuron": 4, "rcut": 5.0, "sel": [48, 0]},
    "fitting_net": {"neuron": [40, 40, 40]},
}
"""Changes to si.json for the shared model: a small network (trains in seconds)."""

TRAINING_STEPS = 500


@dataclass(frozen=True)
class TrainedModel:
    """A density model trained by `density_model`.

    Attributes
    ----------
    model
        The frozen graph (``model.pb``).
    type_map
        The model's type map: real elements, then the grid-point type.
    data
        Output of ``dpcharge convert``: ``train/<name>`` and ``valid/<name>``.
    workdir
        Where ``dp train`` ran: ``input.json``, ``lcurve.out``, checkpoints.
    """

    model: Path
    type_map: tuple[str, ...]
    data: Path
    workdir: Path

    @property
    def train(self) -> Path:
        """The training system."""
        return self.data / "train" / "CHGCAR_Si8_qe"

    @property
    def valid(self) -> Path:
        """The validation system."""
        return self.data / "valid" / "CHGCAR_Si8_qe"


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; never raise on failure."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, check=False
    )


def template(name: str) -> dict:
    """Read an input template of input_templates/."""
    return json.loads((TEMPLATES / name).read_text())


def train_and_freeze(folder: Path, config: dict) -> Path:
    """Run ``dp train`` and ``dp freeze`` in ``folder``; return the frozen model."""
    (folder / "input.json").write_text(json.dumps(config, indent=1))
    for step in (["train", "--skip-neighbor-stat", "input.json"], ["freeze", "-o", "model.pb"]):
        result = run(DP, "--tf", *step, cwd=folder)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / "model.pb"


def scf_result(output: str) -> tuple[float, int]:
    """Return the total energy (Ry) and the number of SCF iterations of a pw.x output."""
    energy = float(re.search(r"^!\s+total energy\s+=\s+(\S+) Ry", output, re.M).group(1))
    iterations = int(
        re.search(r"convergence has been achieved in\s+(\d+) iterations", output).group(1)
    )
    return energy, iterations


def sphere_of_atoms(count, radius=3.0, box=20.0):
    """``count`` Si atoms spread evenly over a sphere (Å) at the centre of an empty cubic cell."""
    height = 1 - (2 * np.arange(count) + 1) / count
    turn = np.pi * (3 - np.sqrt(5)) * np.arange(count)
    ring = np.sqrt(1 - height**2)
    directions = np.stack([ring * np.cos(turn), ring * np.sin(turn), height], axis=1)
    return Atoms(f"Si{count}", positions=box / 2 + radius * directions, cell=[box] * 3, pbc=True)


def small_model_input(seed: int) -> dict:
    """The shrunk si.json of the shared models, its networks initialised from ``seed``."""
    config = template("si.json")
    for section, changes in SMALL_NETWORK.items():
        config["model"][section].update(changes, seed=seed)
    # the paper's fitting and loss: tests read the shared models' statistics as the density's
    # mean and spread; the baseline and the loss functions have their own models in test_fitting
    del config["model"]["fitting_net"]["baseline"]
    del config["model"]["data_stat_nbatch"]
    config["loss"] = {"type": "density"}
    config["learning_rate"] = {"type": "exp", "start_lr": 5e-3, "stop_lr": 3e-4, "decay_steps": 50}
    config["training"].update(
        training_data={"systems": "data/train", "batch_size": 2},
        validation_data={"systems": "data/valid", "batch_size": 1, "numb_btch": 4},
        numb_steps=TRAINING_STEPS,
        disp_freq=100,
        save_freq=TRAINING_STEPS,
        seed=seed,
    )
    return config


@pytest.fixture(scope="session")
def density_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small density model trained for a few hundred steps on the real Si8 density."""
    folder = tmp_path_factory.mktemp("density_model")
    result = run(
        sys.executable, "-m", "dpcharge", "convert", SI8, "-o", folder / "data",
        "--points", 8000, "--points-per-frame", 200, "--seed", 0, "--validation", 0.1, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = small_model_input(seed=1)
    model = train_and_freeze(folder, config)
    return TrainedModel(
        model=model,
        type_map=tuple(config["model"]["type_map"]),
        data=folder / "data",
        workdir=folder,
    )


@pytest.fixture(scope="session")
def second_model(density_model: TrainedModel, tmp_path_factory) -> Path:
    """The shared model's input and data, trained from other random seeds: an ensemble of two."""
    folder = tmp_path_factory.mktemp("second_model")
    (folder / "data").symlink_to(density_model.data)
    config = small_model_input(seed=2)
    # no test needs it as accurate as the first: a member trained for fewer steps
    config["training"].update(numb_steps=200, save_freq=200)
    return train_and_freeze(folder, config)


@dataclass(frozen=True)
class SpinModels:
    """Models of both components of the real spin-polarised VASP file `NO_SPIN`.

    Attributes
    ----------
    total
        Trained on ``dpcharge convert --component total`` data (e/Å^3).
    magnetization
        Trained on ``--component magnetization`` data (rho_up - rho_down, e/Å^3).
    """

    total: Path
    magnetization: Path


@pytest.fixture(scope="session")
def spin_models(tmp_path_factory: pytest.TempPathFactory) -> SpinModels:
    """Small models of the density and the magnetisation of the NO molecule (VASP, ISPIN=2)."""
    models = {}
    for component in ("total", "magnetization"):
        folder = tmp_path_factory.mktemp(f"spin_{component}")
        result = run(
            sys.executable, "-m", "dpcharge", "convert", NO_SPIN, "-o", folder / "data",
            "--component", component, "--points", 8000, "--points-per-frame", 25, "--seed", 0,
            "--validation", 0.1, "-q",
        )  # fmt: skip
        # 25 points a frame: DeePMD-kit copies every grid point of a frame into the ~175
        # periodic copies of this 2x3x4 Å box within 5 Å; 200 points trained 6x slower
        assert result.returncode == 0, result.stderr
        config = small_model_input(seed=1)
        # 300 steps: the magnetisation then integrates to 1.02 μB (1.00 in the file), R² 0.67
        config["training"].update(numb_steps=300, save_freq=300)
        config["model"]["type_map"] = ["N", "O", "X"]
        config["model"]["descriptor"]["sel"] = [32, 32, 0]  # ~22 of each within 5 Å
        config["model"]["descriptor"]["exclude_types"] = [[0, 0], [0, 1], [1, 1]]
        models[component] = train_and_freeze(folder, config)
    return SpinModels(models["total"], models["magnetization"])


@dataclass(frozen=True)
class ForeignModels:
    """Files that look like a frozen density model and are not one.

    Attributes
    ----------
    dipole
        The shared model's graph relabelled as a DeePMD-kit dipole model.
    flipped
        The shared model's graph with 20 bytes of a string constant flipped.
    germanium
        The shared model's graph with the type map Ge X: a density model of
        another element.
    oxygen
        The same with O X: a stand-in for an oxygen model, to exercise PAW inputs.
    """

    dipole: Path
    flipped: Path
    germanium: Path
    oxygen: Path


@pytest.fixture(scope="session")
def foreign_models(density_model: TrainedModel, tmp_path_factory) -> ForeignModels:
    """Graphs derived from the shared model that dpcharge must refuse."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("foreign_models")
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(density_model.model.read_bytes())
    for node in graph.node:
        if node.name == "model_attr/model_type":
            proto = tf.make_tensor_proto(b"dipole")
            node.attr["value"].CopyFrom(tf.compat.v1.AttrValue(tensor=proto))
        if node.name == "train_attr/training_script":
            script = json.loads(tf.make_ndarray(node.attr["value"].tensor).item())
            script["model"].update(type="standard", fitting_net={"type": "dipole"})
            proto = tf.make_tensor_proto(json.dumps(script).encode())
            node.attr["value"].CopyFrom(tf.compat.v1.AttrValue(tensor=proto))
    dipole = folder / "dipole.pb"
    dipole.write_bytes(graph.SerializeToString())
    relabelled = {}
    for element, name in (("Ge", "germanium"), ("O", "oxygen")):
        graph.ParseFromString(density_model.model.read_bytes())
        for node in graph.node:
            if node.name == "model_attr/tmap":
                proto = tf.make_tensor_proto(f"{element} X".encode())
                node.attr["value"].CopyFrom(tf.compat.v1.AttrValue(tensor=proto))
        relabelled[element] = folder / f"{name}.pb"
        relabelled[element].write_bytes(graph.SerializeToString())
    raw = bytearray(density_model.model.read_bytes())
    at = raw.index(b"model_attr/tmap") + 40
    raw[at : at + 20] = bytes(b ^ 0xFF for b in raw[at : at + 20])
    flipped = folder / "flipped.pb"
    flipped.write_bytes(bytes(raw))
    return ForeignModels(dipole, flipped, relabelled["Ge"], relabelled["O"])
