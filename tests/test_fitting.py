"""The DeePMD-kit plugin: density fitting, loss and model, trained with plain ``dp train``."""

import importlib.metadata
import json
import subprocess
import sys
import textwrap

import deepmd.tf  # noqa: F401  (loads the dpcharge plugin through its entry point)
import numpy as np
import pytest
from conftest import DATA, DP, TEMPLATES, run, template
from dargs.dargs import ArgumentKeyError
from deepmd.tf.descriptor import Descriptor
from deepmd.tf.fit.fitting import Fitting
from deepmd.tf.model.model import Model
from deepmd.utils.argcheck import normalize

from dpcharge.errors import InputError
from dpcharge.fitting import DensityFitting, DensityLoss, DensityModel, grid_sees_grid

TEMPLATE_NAMES = sorted(path.name for path in TEMPLATES.glob("*.json"))

TEMPLATE_DATA = {
    "si.json": "CHGCAR_Si8_qe.gz",
    "al_slab.json": "CHGCAR_Al4_lda_qe.gz",
    "almg_slab.json": "CHGCAR_Al4_lda_qe.gz",
    "water.json": "CHGCAR_H2O8_qe.gz",
}
"""A real density of tests/data with the template's elements, to run it on."""


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
    result = run(DP, "--tf", "train", "input.json", cwd=tmp_path)
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
    [label] = loss.label_requirement
    assert (label.key, label.atomic, label.must) == ("atom_ener", True, True)


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
        "--points", 400, "--points-per-frame", 100, "--validation", 0.5,
        "--type-map", *elements, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config["training"].update(numb_steps=4, disp_freq=2, save_freq=4)
    config["training"]["validation_data"]["numb_btch"] = 1
    (tmp_path / "input.json").write_text(json.dumps(config))
    result = run(DP, "--tf", "train", "input.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = lcurve(tmp_path)
    assert curve["step"].tolist() == [0, 2, 4]
    assert np.all(np.isfinite(curve["rmse_rho_val"]))
    assert np.all(curve["mae_rho_val"] <= curve["rmse_rho_val"])


def test_compressed_model_predicts_the_same_densities(density_model, predictions, tmp_path):
    from deepmd.infer import DeepPot

    compressed = tmp_path / "compressed.pb"
    # -s 0.1: the tables span s = 1/r up to grid points 0.01 Å from a nucleus;
    # the default step of 0.01 makes a table of half a gigabyte
    result = run(
        DP, "--tf", "compress", "-i", density_model.model, "-o", compressed, "-s", 0.1, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    types, _, predicted, _ = predictions
    coords, cells, *_ = load(density_model.valid)
    atomic = DeepPot(str(compressed)).eval(coords, cells, types, atomic=True)[3]
    atomic = atomic.reshape(predicted.shape)
    assert np.all(atomic[:, types != types.max()] == 0.0)
    np.testing.assert_allclose(atomic, predicted, rtol=0, atol=1e-5)
