"""The DeePMD-kit plugin: density fitting, loss and model, trained with plain ``dp train``."""

import importlib.metadata
import itertools
import json
import subprocess
import sys
import textwrap
from dataclasses import asdict

import deepmd.tf  # noqa: F401  (loads the dpcharge plugin through its entry point)
import numpy as np
import pytest
from conftest import (
    DATA,
    DP,
    SI8,
    TEMPLATES,
    run,
    small_model_input,
    sphere_of_atoms,
    template,
    train_and_freeze,
)
from dargs.dargs import ArgumentKeyError
from deepmd.tf.descriptor import Descriptor
from deepmd.tf.fit.fitting import Fitting
from deepmd.tf.model.model import Model
from deepmd.utils.argcheck import normalize

from dpcharge.chgcar import read_structure
from dpcharge.errors import InputError
from dpcharge.fitting import (
    Baseline,
    DensityFitting,
    DensityLoss,
    DensityModel,
    baseline_features,
    check_descriptor_sel,
    graph_baseline,
    graph_features,
    graph_neighbour_density,
    grid_sees_grid,
    real_harmonics,
)
from dpcharge.inference import DeepDensity

TEMPLATE_NAMES = sorted(path.name for path in TEMPLATES.glob("*.json"))

TEMPLATE_DATA = {
    "si.json": "CHGCAR_Si8_qe.gz",
    "si_fast.json": "CHGCAR_Si8_qe.gz",
    "al_slab.json": "CHGCAR_alslab_qe.gz",
    "almg_slab.json": "CHGCAR_almgslab_qe.gz",
    "water.json": "CHGCAR_H2O8_qe.gz",
}
"""A real density of tests/data of what the template was made for, to run it on (bulk fcc Al
puts 79 Al within 6.5 Å of a grid point, more than the slab templates' sel lists)."""

TEMPLATE_POINTS = {"si.json": 30_000, "si_fast.json": 30_000, "water.json": 24_000}
"""Grid points to convert (half of them trained on): the angular baselines of si.json (and
si_fast.json) and water.json fit 1,240 and 968 features and need 10 distinct points each; 400
for the others."""


def load(system):
    """Frames of a converted system: coordinates, cells, types, density labels."""
    sets = system / "set.000"
    return (
        np.load(sets / "coord.npy"),
        np.load(sets / "box.npy"),
        np.loadtxt(system / "type.raw", dtype=int),
        np.load(sets / "atom_ener.npy"),
    )


def lcurve(workdir):
    """The learning curve as a dict of columns."""
    lines = (workdir / "lcurve.out").read_text().splitlines()
    names = lines[0].lstrip("#").split()
    values = np.loadtxt(lines[1:], ndmin=2)
    return dict(zip(names, values.T, strict=True))


SMALL_SE_E2_A = {"type": "se_e2_a", "sel": [10, 0], "rcut": 4.0, "rcut_smth": 0.0, "neuron": [4, 8]}


def se_e2_a(sel, **kwargs):
    return Descriptor(type="se_e2_a", sel=sel, rcut=4.0, rcut_smth=0.0, neuron=[4, 8], **kwargs)


# --- schemas and templates ------------------------------------------------------


def test_every_issue_template_is_present():
    assert set(TEMPLATE_NAMES) == set(TEMPLATE_DATA)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_validates_against_the_registered_schema(name):
    config = normalize(template(name))
    model = config["model"]
    assert model["type"] == "density"
    assert model["fitting_net"]["type"] == "density"
    assert config["loss"]["type"] == "density"
    sel = model["descriptor"]["sel"]
    assert len(sel) == len(model["type_map"]) and sel[-1] == 0
    assert all(count > 0 for count in sel[:-1])


@pytest.mark.parametrize(
    ("section", "path"),
    [("fitting_net", ["model", "fitting_net"]), ("loss", ["loss"]), ("model", ["model"])],
)
def test_schema_names_a_wrong_key(section, path):
    config = template("si.json")
    target = config
    for key in path:
        target = target[key]
    target["no_such_key"] = 1
    with pytest.raises(ArgumentKeyError, match="no_such_key"):
        normalize(config)


def test_dp_train_names_a_wrong_key(tmp_path):
    config = template("si.json")
    config["model"]["fitting_net"]["nueron"] = [10]
    (tmp_path / "input.json").write_text(json.dumps(config))
    result = run(DP, "--tf", "train", "--skip-neighbor-stat", "input.json", cwd=tmp_path)
    assert result.returncode != 0
    assert "nueron" in result.stderr


DOC_ANCHORS = ("model[density]", "fitting_net[density]", "loss[density]")


def test_doc_train_input_documents_the_density_types_once_the_schemas_are_loaded():
    script = "import dpcharge.schema; from deepmd.main import main; main(['doc-train-input'])"
    result = run(sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    for anchor in DOC_ANCHORS:
        assert anchor in result.stdout
    assert "rmse_rho and mae_rho in e/Å^3" in result.stdout


def test_dp_doc_train_input_documents_the_density_types():
    if not any(
        ep.value == "dpcharge.schema"
        for ep in importlib.metadata.entry_points(group="deepmd.backend")
    ):
        pytest.skip(
            "setup.cfg has no `deepmd.backend = dpcharge = dpcharge.schema` entry point: "
            "dp doc-train-input imports no deepmd.tf, so nothing else loads our schemas"
        )
    result = run(DP, "doc-train-input")
    assert result.returncode == 0
    for anchor in DOC_ANCHORS:
        assert anchor in result.stdout


# --- what the plugin refuses ----------------------------------------------------


@pytest.mark.parametrize(
    ("sel", "exclude", "sees"),
    [
        ([10, 0], [], False),
        ([10, 5], [], True),
        ([10, 5], [[1, 1]], False),
        ([10, 5], [[0, 1]], True),
    ],
)
def test_grid_points_seeing_grid_points_is_detected(sel, exclude, sees):
    descrpt = se_e2_a(sel, exclude_types=exclude)
    assert grid_sees_grid(descrpt, 1) is sees


def test_a_descriptor_where_grid_points_see_grid_points_is_refused():
    descrpt = se_e2_a([10, 5])
    with pytest.raises(InputError, match=r'"sel": \[..., 0\]'):
        Fitting(type="density", ntypes=2, dim_descrpt=descrpt.get_dim_out(), descrpt=descrpt)


def test_a_single_type_model_is_refused():
    with pytest.raises(InputError, match="at least two types"):
        Fitting(type="density", ntypes=1, dim_descrpt=8)


def test_the_density_fitting_needs_the_density_model_and_loss():
    model = Model(
        type_map=["Si", "X"],
        descriptor=SMALL_SE_E2_A,
        fitting_net={"type": "density", "neuron": [8]},
    )
    assert not isinstance(model, DensityModel)
    with pytest.raises(InputError, match='"type": "density"'):
        model.fitting.compute_input_stats({})
    with pytest.raises(InputError, match="loss"):
        model.fitting.get_loss({"type": "ener"}, None)


def test_the_density_model_builds_a_density_fitting_and_loss():
    model = Model(
        type="density",
        type_map=["Si", "X"],
        descriptor=SMALL_SE_E2_A,
        fitting_net={"neuron": [8]},
    )
    assert isinstance(model, DensityModel)
    assert isinstance(model.fitting, DensityFitting)
    loss = model.get_loss({"type": "density"}, None)
    assert isinstance(loss, DensityLoss)
    label, weight = loss.label_requirement
    assert (label.key, label.atomic, label.must) == ("atom_ener", True, True)
    assert (weight.key, weight.atomic, weight.must, weight.default) == (
        "grid_weight",
        True,
        False,
        1.0,
    )


@pytest.mark.parametrize("function", ["mse", "mae", "huber"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_functions_against_numpy(function, weighted):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    frames, real, grid = 3, 2, 5
    labels = rng.normal(0.1, 0.05, size=(frames, real + grid))
    predicted = labels + rng.normal(0, 0.02, size=labels.shape)
    predicted[:, :real] = 0  # real atoms: output 0, label 0, left out of the loss
    labels[:, :real] = 0
    # DeePMD-kit feeds weight 1 where the data hold no grid_weight; real atoms weigh 1
    weights = rng.uniform(0.2, 5, size=labels.shape) if weighted else np.ones(labels.shape)
    weights[:, :real] = 1
    delta = 0.015
    loss = DensityLoss(function=function, huber_delta=delta)
    graph = tf.Graph()
    with graph.as_default():
        natoms = tf.constant([real + grid, real + grid, real, grid])
        value, more = loss.build(
            None,
            natoms,
            {"atom_ener": tf.constant(predicted.ravel())},
            {"atom_ener": tf.constant(labels.ravel()), "grid_weight": tf.constant(weights.ravel())},
            "test",
        )
        with tf.compat.v1.Session(graph=graph) as session:
            value, mse, mae = session.run([value, more["mse_rho"], more["mae_rho"]])
    error = (predicted - labels)[:, real:]
    absolute = np.abs(error)
    huber = np.where(absolute <= delta, 0.5 * error**2, delta * (absolute - 0.5 * delta))
    weight = weights[:, real:]

    def mean(values):
        return np.sum(weight * values) / np.sum(weight)

    expected = {"mse": mean(error**2), "mae": mean(absolute), "huber": mean(huber)}
    assert value == pytest.approx(expected[function], rel=1e-12)
    assert (mse, mae) == (pytest.approx(mean(error**2)), pytest.approx(mean(absolute)))


def test_loss_options_are_checked():
    with pytest.raises(InputError) as refused:
        DensityLoss(function="l1")
    assert refused.value.parameter == "function"
    with pytest.raises(InputError) as refused:
        DensityLoss(function="huber", huber_delta=0)
    assert refused.value.parameter == "huber_delta"
    config = normalize({**template("si.json"), "loss": {"type": "density", "function": "mae"}})
    assert config["loss"] == {"type": "density", "function": "mae", "huber_delta": 0.01}


# --- a trained model ------------------------------------------------------------


def test_learning_curve_reports_density_errors_well_below_the_label_spread(density_model):
    curve = lcurve(density_model.workdir)
    for column in ("rmse_rho_val", "rmse_rho_trn", "mae_rho_val", "mae_rho_trn"):
        assert np.all(np.isfinite(curve[column])), column
    *_, labels = load(density_model.valid)
    spread = labels[:, 8:].std()
    assert 0.1 < spread < 0.2  # e/Å^3, the Si8 valence density
    # the first line is the untrained model (mean density plus noise)
    assert curve["rmse_rho_val"][0] > 0.5 * spread
    assert curve["rmse_rho_val"][-1] < 0.25 * spread
    assert curve["mae_rho_val"][-1] < curve["rmse_rho_val"][-1]


@pytest.fixture(scope="module")
def predictions(density_model):
    from deepmd.infer import DeepPot

    coords, cells, types, labels = load(density_model.valid)
    deeppot = DeepPot(str(density_model.model))
    atomic = deeppot.eval(coords, cells, types, atomic=True)[3]
    return types, labels, atomic.reshape(labels.shape), deeppot


def test_frozen_model_is_a_plain_energy_model_with_our_type_map(density_model, predictions):
    *_, deeppot = predictions
    assert deeppot.get_type_map() == list(density_model.type_map)
    assert deeppot.get_rcut() == pytest.approx(5.0)


def test_real_atoms_output_exactly_zero(predictions):
    types, _, predicted, _ = predictions
    real = types != types.max()
    assert real.sum() == 8
    assert np.all(predicted[:, real] == 0.0)


def test_grid_point_outputs_match_the_labels_point_by_point(predictions):
    types, labels, predicted, _ = predictions
    grid = types == types.max()
    rho, rho_hat = labels[:, grid].ravel(), predicted[:, grid].ravel()
    error = rho_hat - rho
    assert np.sqrt(np.mean(error**2)) < 0.25 * rho.std()
    assert np.median(np.abs(error) / rho) < 0.15
    assert np.corrcoef(rho, rho_hat)[0, 1] > 0.97
    # shuffled points do not match: the outputs belong to their own grid points
    shuffled = np.random.default_rng(0).permutation(rho)
    assert np.sqrt(np.mean((rho_hat - shuffled) ** 2)) > 4 * np.sqrt(np.mean(error**2))


def test_frozen_model_runs_without_dpcharge(density_model, predictions, tmp_path):
    types, _, predicted, _ = predictions
    script = textwrap.dedent(
        f"""
        import importlib.abc, importlib.metadata, json, sys
        import numpy as np

        class NoDpcharge(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "dpcharge":
                    raise ImportError("dpcharge is hidden")

        sys.meta_path.insert(0, NoDpcharge())
        entry_points = importlib.metadata.entry_points

        def without_dpcharge(**kwargs):
            found = entry_points(**kwargs)
            return [ep for ep in found if not ep.value.startswith("dpcharge")]

        importlib.metadata.entry_points = without_dpcharge
        from deepmd.infer import DeepPot

        sets = "{density_model.valid}/set.000"
        dp = DeepPot("{density_model.model}")
        out = dp.eval(np.load(sets + "/coord.npy"), np.load(sets + "/box.npy"),
                      {types.tolist()}, atomic=True)[3]
        np.save("{tmp_path}/out.npy", out)
        print("dpcharge loaded:", any(m.split(".")[0] == "dpcharge" for m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dpcharge loaded: False" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy").reshape(predicted.shape), predicted)


def test_serialized_model_keeps_density_types_and_mask(density_model, predictions):
    from deepmd.tf.utils.serialization import serialize_from_file

    data = serialize_from_file(str(density_model.model))
    model_data = data["model"]
    assert model_data["type"] == "density"
    fitting = model_data["fitting"]
    assert fitting["type"] == "density"
    types, labels, _, _ = predictions
    grid = labels[:, types == types.max()]
    scale = float(fitting["@variables"]["density_scale"])
    bias = fitting["@variables"]["bias_atom_e"].ravel()
    # statistics of the training frames: close to those of the validation frames
    assert bias[0] == 0.0 and bias[1] == pytest.approx(grid.mean(), abs=0.02)
    assert scale == pytest.approx(grid.std(), abs=0.02)
    rebuilt = Model.deserialize(model_data)
    assert isinstance(rebuilt, DensityModel) and isinstance(rebuilt.fitting, DensityFitting)
    assert rebuilt.fitting.density_scale == scale
    # the fitting survives a second round trip unchanged (DeePMD-kit 3.2's se_e2_a
    # does not: its deserialized embedding nets fail to serialize again)
    again = Fitting.deserialize(fitting).serialize()
    assert again["type"] == "density"
    np.testing.assert_equal(again["@variables"], fitting["@variables"])
    np.testing.assert_equal(again["nets"], fitting["nets"])


def test_grid_mask_follows_natoms_when_real_atoms_are_ghosts():
    from deepmd.tf.env import tf

    from dpcharge.fitting import grid_mask

    natoms = tf.placeholder(tf.int32, [4])
    mask = grid_mask(natoms, 2)
    with tf.Session() as sess:
        # all local atoms: 3 real atoms then 4 grid points
        assert sess.run(mask, {natoms: [7, 7, 3, 4]}).tolist() == [0, 0, 0, 1, 1, 1, 1]
        # local atoms are only grid points, the real atoms (and images) are ghosts
        assert sess.run(mask, {natoms: [4, 30, 0, 4]}).tolist() == [1, 1, 1, 1]


# --- every template runs --------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_runs_a_few_steps_on_real_data(name, tmp_path):
    source = DATA / TEMPLATE_DATA[name]
    if not source.exists():
        pytest.skip(f"tests/data/{source.name} is not in the repository")
    config = template(name)
    elements = config["model"]["type_map"][:-1]
    result = run(
        sys.executable, "-m", "dpcharge", "convert", source, "-o", tmp_path / "data",
        "--points", TEMPLATE_POINTS.get(name, 400), "--points-per-frame", 100, "--validation", 0.5,
        "--type-map", *elements, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config["training"].update(numb_steps=4, disp_freq=2, save_freq=4)
    config["training"]["validation_data"]["numb_btch"] = 1
    (tmp_path / "input.json").write_text(json.dumps(config))
    result = run(DP, "--tf", "train", "--skip-neighbor-stat", "input.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = lcurve(tmp_path)
    assert curve["step"].tolist() == [0, 2, 4]
    assert np.all(np.isfinite(curve["rmse_rho_val"]))
    assert np.all(curve["mae_rho_val"] <= curve["rmse_rho_val"])


# --- the atomic-density baseline ------------------------------------------------

BASELINE = {"basis": 6, "rcut": 4.5, "width_min": 0.3, "width_max": 2.0}
"""A baseline within the 5 Å descriptor of the tests."""


def se_e2_a_5(sel):
    return Descriptor(type="se_e2_a", sel=sel, rcut=5.0, rcut_smth=0.0, neuron=[4, 8])


@pytest.fixture(scope="module")
def si8_frames(tmp_path_factory):
    """Ten frames of 200 random grid points of the real Si8 density (dpcharge convert)."""
    folder = tmp_path_factory.mktemp("si8_frames")
    result = run(
        sys.executable, "-m", "dpcharge", "convert", SI8, "-o", folder / "data",
        "--points", 2000, "--points-per-frame", 200, "--seed", 1, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return load(folder / "data" / "CHGCAR_Si8_qe")


def numpy_features(frames, sel, baseline):
    """`baseline_features` of every frame, shape (nframes, ngrid, nfeatures)."""
    coords, cells, types, _ = frames
    return np.stack(
        [
            baseline_features(coord, cell, types, sel, baseline)
            for coord, cell in zip(coords, cells, strict=True)
        ]
    )


def most_neighbours(frames, rcut):
    """The most Si atoms any grid point of ``frames`` has within ``rcut`` (Å, below the cell)."""
    from scipy.spatial import cKDTree

    coords, cells, types, _ = frames
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3)))
    counts = []
    for coord, cell in zip(coords, cells, strict=True):
        coord, cell = coord.reshape(-1, 3), cell.reshape(3, 3)
        images = (coord[types == 0][None] + (shifts @ cell)[:, None]).reshape(-1, 3)
        counts.append(cKDTree(images).query_ball_point(coord[types == 1], rcut, return_length=True))
    return int(np.max(counts))


@pytest.mark.parametrize(("sel", "kept", "lmax"), [(48, None, None), (48, None, 4), (48, -1, 4)])
def test_graph_features_and_baseline_equal_the_numpy_features_and_their_product(
    si8_frames, sel, kept, lmax
):
    from deepmd.common import make_default_mesh
    from deepmd.tf.env import GLOBAL_TF_FLOAT_PRECISION, tf

    coords, cells, types, _ = si8_frames
    if kept is not None:  # the baseline keeps exactly as many as the most crowded point has
        kept = [most_neighbours(si8_frames, BASELINE["rcut"])]
        assert kept[0] < sel
    baseline = Baseline(**BASELINE, lmax=lmax, sel=kept)
    features = numpy_features(si8_frames, [sel, 0], baseline)
    assert np.all(features[:, :, : baseline.basis].max(axis=1) > 0.1)  # every basis is seen
    coefficients = np.random.default_rng(1).normal(size=features.shape[-1])
    expected = features @ coefficients
    with tf.Graph().as_default(), tf.Session() as sess:
        descrpt = se_e2_a_5([sel, 0])
        inputs = {
            "coord": tf.placeholder(GLOBAL_TF_FLOAT_PRECISION, [None]),
            "box": tf.placeholder(GLOBAL_TF_FLOAT_PRECISION, [None]),
            "type": tf.placeholder(tf.int32, [None]),
            "natoms": tf.placeholder(tf.int32, [4]),
            "mesh": tf.placeholder(tf.int32, [None]),
        }
        descrpt.build(
            inputs["coord"], inputs["type"], inputs["natoms"], inputs["box"], inputs["mesh"], {}
        )
        nlist, rij, sel_a, _ = descrpt.get_nlist()
        natoms = inputs["natoms"]
        radial, density = graph_neighbour_density(nlist, rij, sel_a, baseline, natoms[0], natoms[3])
        values = graph_baseline(radial, density, 1, baseline, tf.constant(coefficients))
        graph_spectrum = graph_features(radial, density, 1, baseline)
        sess.run(tf.global_variables_initializer())
        ngrid = int((types == 1).sum())
        assert np.all(types[-ngrid:] == 1)  # DeePMD-kit's order: grid points last
        computed, spectrum = sess.run(
            [values, graph_spectrum],
            {
                inputs["coord"]: coords.ravel(),
                inputs["box"]: cells.ravel(),
                inputs["type"]: np.tile(types, len(coords)),
                inputs["natoms"]: [len(types), len(types), 8, ngrid],
                inputs["mesh"]: make_default_mesh(True, False),
            },
        )
    # the features the network may take: the same numbers, each a float64 sum
    np.testing.assert_allclose(
        spectrum.reshape(features.shape), features, rtol=1e-12, atol=1e-12 * features.max()
    )
    # float64 sums of terms as large as |features| @ |coefficients|
    scale = np.abs(features) @ np.abs(coefficients)
    np.testing.assert_allclose(
        computed.reshape(expected.shape), expected, rtol=0, atol=1e-12 * scale.max()
    )
    assert np.abs(expected).max() > 1e-3 * scale.max()  # not a sum that cancels to nothing


def test_a_baseline_that_keeps_too_few_neighbours_is_refused(si8_frames):
    crowded = most_neighbours(si8_frames, BASELINE["rcut"])
    baseline = Baseline(**BASELINE, sel=[crowded - 1])
    with pytest.raises(InputError, match=rf"more than {crowded - 1} atoms of type 0.*its sel"):
        numpy_features(si8_frames, [48, 0], baseline)
    with pytest.raises(InputError, match=r"at most the descriptor's sel \[48\]"):
        Baseline(**BASELINE, sel=[49]).neighbours([48, 0])


def test_a_descriptor_sel_below_a_training_points_neighbours_is_refused(si8_frames):
    # dp train --skip-neighbor-stat would train on the nearest sel atoms, dropping the others
    crowded = most_neighbours(si8_frames, 5.0)
    coords, cells, types, _ = si8_frames
    for coord, cell in zip(coords, cells, strict=True):
        check_descriptor_sel(coord, cell, types, se_e2_a_5([crowded, 0]), 2)
    message = rf"has {crowded} atoms of type 0 within the descriptor's rcut 5.0 Å, more than "
    with pytest.raises(InputError, match=message + rf"its sel {crowded - 1}"):
        for coord, cell in zip(coords, cells, strict=True):
            check_descriptor_sel(coord, cell, types, se_e2_a_5([crowded - 1, 0]), 2)
    blind = Descriptor(
        type="se_e2_a", sel=[1, 0], rcut=5.0, rcut_smth=0.0, neuron=[4, 8], exclude_types=[[0, 1]]
    )  # grid points that do not see Si: their Si are not counted
    check_descriptor_sel(coords[0], cells[0], types, blind, 2)


def test_real_harmonics_obey_the_addition_theorem_and_vanish_at_the_origin():
    from scipy.special import eval_legendre

    rng = np.random.default_rng(0)
    u, v = (
        vectors / np.linalg.norm(vectors, axis=1)[:, None]
        for vectors in rng.normal(size=(2, 300, 3))
    )
    lmax = 10
    yu, yv = (real_harmonics(*vectors.T, lmax, np.stack) for vectors in (u, v))
    assert yu.shape == (300, (lmax + 1) ** 2)
    for degree in range(lmax + 1):
        block = slice(degree**2, (degree + 1) ** 2)
        # sum_m Y_lm(u) Y_lm(v) = (2l + 1) / (4 pi) P_l(u . v): orthonormal and complete in l
        expected = (2 * degree + 1) / (4 * np.pi) * eval_legendre(degree, np.sum(u * v, axis=1))
        np.testing.assert_allclose(
            np.sum(yu[:, block] * yv[:, block], axis=1), expected, atol=1e-13
        )
    zero = real_harmonics(np.zeros(1), np.zeros(1), np.zeros(1), lmax, np.stack)
    assert zero[0, 0] == pytest.approx(1 / np.sqrt(4 * np.pi)) and np.all(zero[0, 1:] == 0)


def test_angular_features_do_not_change_when_the_frame_is_rotated(si8_frames):
    from scipy.spatial.transform import Rotation

    coords, cells, types, _ = si8_frames
    baseline = Baseline(**BASELINE, lmax=6)
    rotation = Rotation.random(random_state=3).as_matrix()
    coord, cell = coords[0].reshape(-1, 3), cells[0].reshape(3, 3)
    features = baseline_features(coord, cell, types, [48, 0], baseline)
    rotated = baseline_features(coord @ rotation.T, cell @ rotation.T, types, [48, 0], baseline)
    angular = features[:, baseline.basis :]
    assert angular.shape[1] == 7 * 21 and np.abs(angular).max() > 0.1
    np.testing.assert_allclose(rotated, features, rtol=0, atol=1e-12 * np.abs(features).max())


def fitted_statistics(frames, densities, weights=None, baseline=BASELINE):
    """A density fitting with the ``baseline`` whose output statistics come from ``frames``
    labelled with ``densities`` (and ``weights``)."""
    coords, cells, types, _ = frames
    descrpt = se_e2_a_5([48, 0])
    fitting = Fitting(
        type="density", ntypes=2, dim_descrpt=descrpt.get_dim_out(), descrpt=descrpt,
        baseline=baseline,
    )  # fmt: skip
    all_stat = {
        "coord": [[coords]],
        "box": [[cells]],
        "type": [[np.tile(types, (len(coords), 1))]],
        "atom_ener": [[densities]],
    }
    if weights is not None:
        all_stat["grid_weight"] = [[weights]]
    fitting.compute_output_stats(all_stat)
    return fitting


def test_baseline_fit_recovers_a_density_made_of_known_radial_functions(si8_frames):
    coords, cells, types, _ = si8_frames
    baseline = Baseline(**BASELINE)
    rcut, widths = baseline.rcut, baseline.widths
    coefficients = np.array([0.9, -0.6, 0.4, 0.08, -0.02, 0.005])  # e/Å^3
    offset = 0.03  # e/Å^3
    # every Si image within 4.5 Å of a point of the 5.43 Å cubic cell is one cell away at most
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).reshape(3, -1).T
    densities = []
    for coord, cell in zip(coords, cells, strict=True):
        cell = cell.reshape(3, 3)
        assert np.allclose(cell, np.diag(np.diag(cell))) and np.all(np.diag(cell) > rcut)
        coord = coord.reshape(-1, 3)
        images = (coord[types == 0][None] + (shifts @ cell)[:, None]).reshape(-1, 3)
        r2 = np.sum((coord[:, None] - images[None]) ** 2, axis=-1)[..., None]
        radial = np.exp(-r2 / (2 * widths**2)) * np.clip(1 - r2 / rcut**2, 0, None) ** 2
        density = (radial @ coefficients).sum(axis=1) + offset
        densities.append(np.where(types == 1, density, 0.0))
    fitting = fitted_statistics(si8_frames, np.stack(densities))
    features = numpy_features(si8_frames, [48, 0], baseline).reshape(-1, baseline.basis)
    design = np.column_stack([features, np.ones(len(features))])
    # float64 least squares: relative error of the coefficients up to cond * eps
    tolerance = 10 * np.linalg.cond(design) * np.finfo(np.float64).eps
    assert tolerance < 1e-4
    np.testing.assert_allclose(
        fitting.baseline_coefficients.ravel(), coefficients, rtol=0, atol=tolerance
    )
    assert fitting.bias_atom_e.tolist() == [0.0, pytest.approx(offset, abs=tolerance)]
    assert fitting.density_scale < 1e-10  # e/Å^3: nothing is left for the network


def test_baseline_fit_recovers_an_anisotropic_density_from_the_power_spectrum(si8_frames):
    coords, cells, types, _ = si8_frames
    baseline = Baseline(**BASELINE, lmax=2)
    rcut, widths = baseline.rcut, baseline.widths
    radial_coefficients = np.array([0.9, -0.6, 0.4, 0.08, -0.02, 0.005])  # e/Å^3
    dipole, channel = 0.07, 2  # e/Å^3 per |sum_j phi_2(r_j) r_j / |r_j||^2
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).reshape(3, -1).T
    densities = []
    for coord, cell in zip(coords, cells, strict=True):
        cell = cell.reshape(3, 3)
        coord = coord.reshape(-1, 3)
        images = (coord[types == 0][None] + (shifts @ cell)[:, None]).reshape(-1, 3)
        vectors = images[None] - coord[:, None]
        r2 = np.sum(vectors**2, axis=-1)[..., None]
        radial = np.exp(-r2 / (2 * widths**2)) * np.clip(1 - r2 / rcut**2, 0, None) ** 2
        units = vectors / np.sqrt(np.maximum(r2, 1e-300))
        polarisation = np.sum(radial[..., channel : channel + 1] * units, axis=1)
        density = (radial @ radial_coefficients).sum(axis=1) + dipole * np.sum(polarisation**2, 1)
        densities.append(np.where(types == 1, density, 0.0))
    fitting = fitted_statistics(si8_frames, np.stack(densities), baseline=asdict(baseline))
    # |sum_j phi r_j / |r_j||^2 = 4 pi / 3 sum_m c_1m^2: only the l = 1 spectrum of channel 2
    expected = np.zeros(baseline.n_features(1))
    expected[: baseline.basis] = radial_coefficients
    first, second = baseline.pairs(1)
    pair = np.flatnonzero((first == channel) & (second == channel))[0]
    expected[baseline.basis + len(first) + pair] = dipole * 4 * np.pi / 3
    features = numpy_features(si8_frames, [48, 0], baseline).reshape(-1, len(expected))
    design = np.column_stack([features, np.ones(len(features))])
    rms = np.sqrt(np.mean(design**2, axis=0))
    # the fit solves for each feature's contribution (coefficient times column size, e/Å^3):
    # float64 least squares gets those right to cond * eps of the largest
    tolerance = 10 * np.linalg.cond(design / rms) * np.finfo(np.float64).eps
    assert tolerance < 1e-4  # overlapping Gaussians: cond ~ 5e9
    contribution = expected * rms[:-1]
    np.testing.assert_allclose(
        fitting.baseline_coefficients * rms[:-1],
        contribution,
        rtol=0,
        atol=tolerance * np.abs(contribution).max(),
    )
    assert fitting.density_scale < 1e-9  # e/Å^3: nothing is left for the network


def test_a_baseline_with_more_features_than_its_statistics_can_fit_is_refused(si8_frames):
    coords, cells, types, labels = si8_frames  # 10 frames of 200 grid points
    # DeePMD-kit's statistics batches cycle through the frames: 20,000 rows, 2,000 points
    repeated = (np.tile(coords, (10, 1)), np.tile(cells, (10, 1)), types, None)
    with pytest.raises(InputError, match="raise the model's data_stat_nbatch") as error:
        fitted_statistics(
            repeated,
            np.tile(labels, (10, 1)),
            baseline={**BASELINE, "basis": 8, "lmax": 8},
        )
    assert error.value.parameter == "baseline"
    message = str(error.value)
    assert "has 332 features" in message and "at least 10 per feature" in message
    # symmetry-equivalent points of the Si8 crystal have the same features
    distinct = int(message.split("hold only ")[1].split()[0])
    assert 1900 < distinct <= 2000


def test_weighted_points_count_in_the_statistics_as_repeated_points(si8_frames):
    _, _, types, labels = si8_frames
    weights = np.random.default_rng(0).integers(1, 4, size=labels.shape).astype(float)
    fitting = fitted_statistics(si8_frames, labels, weights)
    # the same statistics from every grid point repeated as often as its weight says
    repeats = weights[:, types == 1].astype(int).ravel()
    features = numpy_features(si8_frames, [48, 0], Baseline(**BASELINE))
    features = np.repeat(features.reshape(repeats.size, -1), repeats, axis=0)
    density = np.repeat(labels[:, types == 1].ravel(), repeats)
    design = np.column_stack([features, np.ones(len(density))])
    solution, *_ = np.linalg.lstsq(design, density, rcond=None)
    remainder = density - features @ solution[:-1]
    tolerance = 10 * np.linalg.cond(design) * np.finfo(np.float64).eps
    np.testing.assert_allclose(
        fitting.baseline_coefficients.ravel(), solution[:-1], rtol=0, atol=tolerance
    )
    assert fitting.bias_atom_e[1] == pytest.approx(remainder.mean(), rel=1e-10)
    assert fitting.density_scale == pytest.approx(remainder.std(), rel=1e-10)


def test_a_ridge_fit_solves_the_penalised_normal_equations(si8_frames):
    _, _, types, labels = si8_frames
    weights = np.random.default_rng(1).integers(1, 4, size=labels.shape).astype(float)
    ridge = 1e-6
    fitting = fitted_statistics(si8_frames, labels, weights, baseline={**BASELINE, "ridge": ridge})
    plain = fitted_statistics(si8_frames, labels, weights)
    features = numpy_features(si8_frames, [48, 0], Baseline(**BASELINE))
    features = features.reshape(labels[:, types == 1].size, -1)
    weight, density = weights[:, types == 1].ravel(), labels[:, types == 1].ravel()
    design = np.column_stack([features, np.ones(len(density))])
    scale = np.sqrt(np.average(design**2, axis=0, weights=weight))
    scaled = design / scale
    # minimise the weighted mean of r^2 plus ridge |a|^2 over the scaled coefficients a
    penalty = ridge * np.diag([1.0] * features.shape[1] + [0.0])  # the constant is free
    normal = scaled.T @ (weight[:, None] * scaled) / weight.sum() + penalty
    solution = np.linalg.solve(normal, scaled.T @ (weight * density) / weight.sum()) / scale
    tolerance = 10 * np.linalg.cond(normal) * np.finfo(np.float64).eps
    assert tolerance < 1e-4
    np.testing.assert_allclose(
        fitting.baseline_coefficients, solution[:-1], rtol=0, atol=tolerance * abs(solution).max()
    )
    # the penalty shrinks the scaled coefficients and leaves more for the network
    shrunk, free = (np.linalg.norm(f.baseline_coefficients * scale[:-1]) for f in (fitting, plain))
    assert shrunk < 0.9 * free and fitting.density_scale > plain.density_scale
    with pytest.raises(InputError, match="ridge must be 0 or more, got -1"):
        Baseline(ridge=-1)


def test_baseline_beyond_the_descriptor_or_without_a_type_grouped_list_is_refused():
    descrpt = se_e2_a_5([48, 0])
    with pytest.raises(InputError, match=r"rcut 6\.0 Å exceeds") as error:
        Fitting(
            type="density", ntypes=2, dim_descrpt=descrpt.get_dim_out(), descrpt=descrpt,
            baseline={"rcut": 6.0},
        )  # fmt: skip
    assert error.value.parameter == "baseline"
    radial = Descriptor(type="se_e2_r", sel=[10, 0], rcut=4.0, rcut_smth=0.0, neuron=[4, 8])
    with pytest.raises(InputError, match="grouped by type"):
        Fitting(
            type="density", ntypes=2, dim_descrpt=radial.get_dim_out(), descrpt=radial,
            baseline={"rcut": 3.0},
        )  # fmt: skip
    with pytest.raises(InputError, match="width_min <= width_max"):
        Baseline(width_min=1.0, width_max=0.5)


def test_baseline_options_have_defaults_and_old_inputs_have_no_baseline():
    config = template("si.json")
    del config["model"]["fitting_net"]["baseline"]  # an input from before the option
    assert "baseline" not in normalize(config)["model"]["fitting_net"]
    config["model"]["fitting_net"]["baseline"] = {"trainable": True}
    options = normalize(config)["model"]["fitting_net"]["baseline"]
    assert options == {**asdict(Baseline()), "trainable": True}


BASELINE_MODEL = {**BASELINE, "lmax": 2, "trainable": True, "sel": [40], "network_input": True}
"""The baseline of the shared baseline model, its features also the network's input."""


@pytest.fixture(scope="module")
def baseline_model(density_model, tmp_path_factory):
    """The shared small model's input and data with a trainable angular baseline (lmax 2)
    that keeps 40 of the descriptor's 72 neighbours and feeds its features to the network,
    trained 200 steps."""
    folder = tmp_path_factory.mktemp("baseline_model")
    (folder / "data").symlink_to(density_model.data)
    config = small_model_input(seed=1)
    config["model"]["fitting_net"]["baseline"] = BASELINE_MODEL
    config["training"].update(numb_steps=200, save_freq=200)
    return train_and_freeze(folder, config)


def test_baseline_model_predicts_with_deeppot_what_reassemble_writes(baseline_model, tmp_path):
    from deepmd.infer import DeepPot

    result = run(
        sys.executable, "-m", "dpcharge", "reassemble", baseline_model, SI8,
        "-o", tmp_path / "CHGCAR", "--npy", tmp_path / "rho.npy",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    density = np.load(tmp_path / "rho.npy")  # e/Å^3
    atoms = read_structure(SI8)
    cell = atoms.cell.array
    rng = np.random.default_rng(0)
    indices = rng.integers(0, density.shape, size=(400, 3))
    points = (indices / density.shape) @ cell
    # leave out points the engine pushes off a nucleus (closer than 0.01 Å)
    offsets = (points[:, None] - atoms.positions[None]) @ np.linalg.inv(cell)
    nearest = np.linalg.norm((offsets - np.round(offsets)) @ cell, axis=-1).min(axis=1)
    points, indices = points[nearest > 0.05], indices[nearest > 0.05]
    types = [0] * len(atoms) + [1] * len(points)
    coords = np.concatenate([atoms.positions, points])[None]
    atomic = DeepPot(str(baseline_model)).eval(coords, cell.reshape(1, 9), types, atomic=True)[3]
    expected = density[tuple(indices.T)]
    assert expected.std() > 0.1  # e/Å^3: points from bonds to voids
    np.testing.assert_allclose(atomic.ravel()[len(atoms) :], expected, rtol=1e-6, atol=0)


def test_baseline_model_refuses_a_point_with_more_neighbours_than_its_baseline_keeps(
    baseline_model,
):
    model = DeepDensity(baseline_model)
    centre = np.full((1, 3), 10.0)
    assert np.isfinite(model.predict_points(sphere_of_atoms(40), centre)).all()
    # 41 within 4.5 Å: under the descriptor's 48, over the 40 nearest the baseline keeps
    message = r"has 41 Si atoms within 4.5 Å, and the model lists only the nearest 40"
    with pytest.raises(InputError, match=message):
        model.predict_points(sphere_of_atoms(41), centre)


def test_baseline_model_serializes_its_coefficients_and_compresses(baseline_model, tmp_path):
    from deepmd.infer import DeepPot
    from deepmd.tf.utils.serialization import serialize_from_file

    fitting = serialize_from_file(str(baseline_model))["model"]["fitting"]
    assert fitting["baseline"] == asdict(Baseline(**BASELINE_MODEL))  # every option, defaults too
    coefficients = fitting["@variables"]["baseline_coefficients"]
    assert coefficients.shape == (6 + 3 * 21,) and np.all(coefficients != 0)
    # the network's input: the descriptor's 20 * 4 numbers, then the 69 standardised features
    assert fitting["dim_descrpt"] == 20 * 4
    assert fitting["nets"]["networks"][1]["layers"][0]["@variables"]["w"].shape[0] == 20 * 4 + 69
    assert np.all(fitting["@variables"]["features_std"] > 0)
    assert np.all(fitting["@variables"]["features_avg"][:6] > 0)  # radial sums
    # the baseline explains most of the Si8 density: the network learns a smaller remainder
    assert fitting["@variables"]["density_scale"] < 0.3 * 0.138
    rebuilt = Fitting.deserialize(fitting)
    np.testing.assert_array_equal(rebuilt.baseline_coefficients, coefficients)
    np.testing.assert_array_equal(rebuilt.features_std, fitting["@variables"]["features_std"])
    compressed = tmp_path / "compressed.pb"
    # -s 0.1: the tables span s = 1/r up to grid points 0.01 Å from a nucleus (the default
    # step of 0.01 makes a table of half a gigabyte); -t: the training script, for the
    # neighbour statistics that dp train --skip-neighbor-stat skipped
    result = run(
        DP, "--tf", "compress", "-i", baseline_model, "-o", compressed, "-s", 0.1,
        "-t", "input.json", cwd=baseline_model.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    atoms = read_structure(SI8)
    points = np.random.default_rng(1).uniform(0, 1, (300, 3)) @ atoms.cell.array
    coords = np.concatenate([atoms.positions, points])[None]
    types = [0] * len(atoms) + [1] * len(points)
    cell = atoms.cell.array.reshape(1, 9)
    original = DeepPot(str(baseline_model)).eval(coords, cell, types, atomic=True)[3]
    atomic = DeepPot(str(compressed)).eval(coords, cell, types, atomic=True)[3]
    np.testing.assert_allclose(atomic, original, rtol=0, atol=1e-5)
