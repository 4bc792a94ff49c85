"""The DeePMD-kit (TensorFlow) plugin: the ``density`` fitting, loss and model types.

DeePMD-kit imports this module through the ``deepmd`` entry point when
``deepmd.tf`` is imported, so plain ``dp train input.json`` accepts::

    "model": {
        "type": "density",
        "type_map": ["Si", "X"],
        "descriptor": {"type": "se_e2_a", "sel": [72, 0], ...},
        "fitting_net": {"type": "density", "neuron": [200, 200, 200]}
    },
    "loss": {"type": "density"}

The last entry of ``type_map`` is the grid-point (virtual) type. Its atoms are
the points where the density is known; their per-atom output is the density in
e/Å^3. Real atoms only shape the descriptor: their per-atom output is exactly 0,
they have no fitting network, and the loss never sees them.

- `DensityFitting` (``fitting_net.type = "density"``) derives from DeePMD-kit's
  energy fitting, so the frozen graph is a standard energy-model graph whose
  ``o_atom_energy`` is the density; plain DeePMD-kit loads it without dpcharge.
- `DensityLoss` (``loss.type = "density"``): mean squared error over grid points
  only; ``lcurve.out`` shows ``rmse_rho`` and ``mae_rho`` in e/Å^3.
- `DensityModel` (``model.type = "density"``): the energy model whose output
  statistics come from the ``atom_ener`` labels of grid points (mean and spread
  of the density) instead of from ``energy`` labels, which density data lack.

The input schemas of the three types are in `dpcharge.schema`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from deepmd.tf.env import GLOBAL_TF_FLOAT_PRECISION, tf
from deepmd.tf.fit.ener import EnerFitting
from deepmd.tf.fit.fitting import Fitting
from deepmd.tf.loss.loss import Loss
from deepmd.tf.model.ener import EnerModel
from deepmd.tf.model.model import Model
from deepmd.tf.utils.graph import get_tensor_by_name_from_graph
from deepmd.tf.utils.sess import run_sess
from deepmd.utils.data import DataRequirementItem

from dpcharge.errors import InputError
from dpcharge.schema import DENSITY

log = logging.getLogger("deepmd.dpcharge")

LABEL = "atom_ener"
"""Per-atom label (and model output key) holding the density in e/Å^3."""


def grid_sees_grid(descrpt: Any, grid_type: int) -> bool:
    """Tell whether a descriptor lets grid points be neighbours of grid points.

    Parameters
    ----------
    descrpt
        A DeePMD-kit TensorFlow descriptor (``hybrid`` descriptors are checked
        part by part).
    grid_type
        Index of the grid-point type.

    Returns
    -------
    bool
        False when the grid type's ``sel`` is 0 or the pair (grid, grid) is in
        ``exclude_types``; True otherwise, also for descriptors with one ``sel``
        for all types (se_atten and the like) that do not exclude the pair.
    """
    parts = getattr(descrpt, "descrpt_list", None)
    if parts is not None:
        return any(grid_sees_grid(part, grid_type) for part in parts)
    if (grid_type, grid_type) in getattr(descrpt, "exclude_types", ()):
        return False
    ntypes = descrpt.get_ntypes()
    counts = [
        list(getattr(descrpt, name, None) or [])
        for name in ("sel_a", "sel_r")
        if len(getattr(descrpt, name, None) or []) == ntypes
    ]
    if not counts:
        return True
    return sum(count[grid_type] for count in counts) > 0


def grid_mask(natoms: tf.Tensor, ntypes: int) -> tf.Tensor:
    """Return 1 for grid points and 0 for real atoms among the local atoms.

    Inside DeePMD-kit's graph the local atoms are sorted by type, so the grid
    points (last type) are the last ``natoms[1 + ntypes]`` of the ``natoms[0]``
    local atoms. The mask follows ``natoms``, not a fixed size, so it also holds
    when the local atoms are only grid points and the real atoms are ghosts.

    Parameters
    ----------
    natoms
        DeePMD-kit's ``[nloc, nall, n_type0, n_type1, ...]`` (local counts).
    ntypes
        Number of types, the grid type included.

    Returns
    -------
    tf.Tensor
        Shape ``[nloc]``, in the graph's float precision.
    """
    nreal = natoms[0] - natoms[1 + ntypes]
    return tf.cast(tf.range(natoms[0]) >= nreal, GLOBAL_TF_FLOAT_PRECISION)


def density_stats(all_stat: dict, grid_type: int) -> tuple[float, float, int]:
    """Return mean and standard deviation (e/Å^3) and count of grid-point labels.

    Parameters
    ----------
    all_stat
        DeePMD-kit's statistics batches (``make_stat_input``): ``atom_ener`` and
        ``type`` per system and batch, each of shape (nframes, natoms).
    grid_type
        Index of the grid-point type.

    Returns
    -------
    tuple
        Mean, standard deviation, number of grid points.
    """
    labels = []
    for sys_labels, sys_types in zip(all_stat[LABEL], all_stat["type"], strict=True):
        for batch_labels, batch_types in zip(sys_labels, sys_types, strict=True):
            batch_types = np.asarray(batch_types)
            batch_labels = np.reshape(batch_labels, batch_types.shape)
            labels.append(batch_labels[batch_types == grid_type])
    labels = np.concatenate(labels) if labels else np.zeros(0)
    if labels.size == 0:
        raise InputError("the training data hold no grid points with atom_ener labels")
    return float(labels.mean()), float(labels.std()), int(labels.size)


@Fitting.register(DENSITY)
class DensityFitting(EnerFitting):
    """Fitting of the density at grid points: an energy fitting with real atoms masked.

    The grid-point type (the last type) has a fitting network ``N``; its output
    is ``rho = N * scale + bias`` in e/Å^3, where ``bias`` and ``scale`` are the
    mean and standard deviation of the training densities (see
    `compute_output_stats`), so ``N`` learns a quantity of order 1. Real types
    have no network and output exactly 0.

    Parameters
    ----------
    ntypes
        Number of types, the grid-point type last.
    dim_descrpt
        Dimension of the descriptor.
    descrpt
        The descriptor (given by DeePMD-kit when it builds a model). A descriptor
        in which grid points would see other grid points is refused: the
        density at a point must depend on the real atoms only.
    spin
        Must be None: spin models are not supported.
    **kwargs
        Options of DeePMD-kit's energy fitting (neuron, resnet_dt, precision,
        activation_function, seed, trainable, numb_fparam, numb_aparam).
    """

    def __init__(
        self,
        ntypes: int,
        dim_descrpt: int,
        descrpt: Any = None,
        spin: Any = None,
        **kwargs: Any,
    ) -> None:
        if ntypes < 2:
            raise InputError(
                "a density model needs at least two types: the real elements, then the "
                f"grid-point type last in type_map (got {ntypes} type)"
            )
        if spin is not None:
            raise InputError("the density fitting does not support spin")
        if kwargs.get("atom_ener"):
            raise InputError("the density fitting has no atom_ener (vacuum energies)")
        type_map = kwargs.get("type_map") or []
        grid_name = type_map[-1] if len(type_map) == ntypes else f"type {ntypes - 1}"
        if descrpt is not None and grid_sees_grid(descrpt, ntypes - 1):
            raise InputError(
                f"the descriptor lets grid points ({grid_name}, the last type of type_map) "
                "see other grid points: set its sel to 0 for the grid type (se_e2_a: "
                f'"sel": [..., 0]) or exclude the pair with "exclude_types": '
                f"[[{ntypes - 1}, {ntypes - 1}]]"
            )
        super().__init__(ntypes, dim_descrpt, **kwargs)
        self.grid_type = ntypes - 1
        self.density_scale = 1.0
        self.stats_from_labels = False

    def _build_lower(self, *args: Any, type_suffix: str = "", **kwargs: Any) -> tf.Tensor:
        """Build the fitting net of one type; real types get a constant 0, no net."""
        if type_suffix.startswith("_type_") and int(type_suffix[6:]) != self.grid_type:
            inputs = args[2]
            return tf.zeros([tf.shape(inputs)[0] * args[1], 1], GLOBAL_TF_FLOAT_PRECISION)
        net = super()._build_lower(*args, type_suffix=type_suffix, **kwargs)
        return net * self.t_density_scale

    def build(
        self,
        inputs: tf.Tensor,
        natoms: tf.Tensor,
        input_dict: dict | None = None,
        reuse: bool | None = None,
        suffix: str = "",
    ) -> tf.Tensor:
        """Build the per-atom density: scaled net plus bias at grid points, 0 elsewhere.

        Parameters
        ----------
        inputs
            The descriptor, per local atom.
        natoms
            ``[nloc, nall, n_type0, ...]``.
        input_dict
            Extra inputs (``atype``, ``fparam``, ``aparam``, ...).
        reuse
            Reuse the variables of an existing graph.
        suffix
            Name suffix of the variables.

        Returns
        -------
        tf.Tensor
            Flat per-atom density, exactly 0 at real atoms.
        """
        with tf.variable_scope("fitting_attr" + suffix, reuse=reuse):
            self.t_density_scale = tf.get_variable(
                "t_density_scale",
                [],
                dtype=GLOBAL_TF_FLOAT_PRECISION,
                trainable=False,
                initializer=tf.constant_initializer(self.density_scale),
            )
        outs = super().build(inputs, natoms, input_dict, reuse=reuse, suffix=suffix)
        outs = tf.reshape(outs, [-1, natoms[0]]) * grid_mask(natoms, self.ntypes)
        return tf.reshape(outs, [-1])

    def init_variables(self, graph: tf.Graph, graph_def: tf.GraphDef, suffix: str = "") -> None:
        """Take the variables, bias and scale from a frozen graph (dp compress, init).

        Parameters
        ----------
        graph
            The frozen graph.
        graph_def
            Its definition.
        suffix
            Name suffix of the variables.
        """
        super().init_variables(graph, graph_def, suffix=suffix)
        self.density_scale = float(
            get_tensor_by_name_from_graph(graph, f"fitting_attr{suffix}/t_density_scale")
        )

    def compute_input_stats(self, all_stat: dict, *args: Any, **kwargs: Any) -> None:
        """Compute the input statistics; refuse to run outside a density model."""
        if not self.stats_from_labels:
            raise InputError(
                'the density fitting needs "model": {"type": "density", ...}: only the '
                "density model takes its output statistics from the atom_ener labels"
            )
        super().compute_input_stats(all_stat, *args, **kwargs)

    def compute_output_stats(self, all_stat: dict, mixed_type: bool = False) -> None:
        """Set bias and scale: mean and std of grid-point densities, 0 for real types.

        Parameters
        ----------
        all_stat
            Statistics batches (``make_stat_input``) with ``atom_ener`` labels.
        mixed_type
            Unused: grid points are found by their type in each frame.
        """
        mean, std, count = density_stats(all_stat, self.grid_type)
        self.bias_atom_e = np.zeros(self.ntypes, dtype=np.float64)
        self.bias_atom_e[self.grid_type] = mean
        self.density_scale = std if std > 0 else 1.0
        log.info(
            "density statistics of %d grid points: mean %.6g, std %.6g e/Å^3",
            count,
            mean,
            std,
        )

    def get_loss(self, loss: dict, lr: Any) -> Loss:
        """Return the density loss (the only loss of this fitting).

        Parameters
        ----------
        loss
            The ``loss`` section of the input.
        lr
            The learning-rate schedule (unused: the loss has no prefactors).

        Returns
        -------
        DensityLoss
            Mean squared error of the density over grid points.
        """
        loss = dict(loss)
        loss_type = loss.pop("type", DENSITY)
        if loss_type != DENSITY:
            raise InputError(
                f'the density fitting needs "loss": {{"type": "density"}}, not {loss_type!r}'
            )
        return DensityLoss(**loss)

    def serialize(self, suffix: str = "") -> dict:
        """Serialize as type ``density``, so that deserializing keeps mask and scale.

        Parameters
        ----------
        suffix
            Name suffix of the variables.

        Returns
        -------
        dict
            The energy fitting's data, ``type`` ``density``, and the scale in
            ``@variables``.
        """
        variables = self.fitting_net_variables
        if variables is not None:
            # DeePMD-kit's deserialize_network stores 0.0 for an absent ``idt`` (a
            # layer without skip connection), which its serialize_network cannot
            # read back: leave those placeholders out.
            self.fitting_net_variables = {
                key: value for key, value in variables.items() if np.ndim(value) > 0
            }
        try:
            data = super().serialize(suffix=suffix)
        finally:
            self.fitting_net_variables = variables
        data["type"] = DENSITY
        data["var_name"] = "density"
        data["@variables"]["density_scale"] = np.array(self.density_scale)
        return data

    @classmethod
    def deserialize(cls, data: dict, suffix: str = "") -> DensityFitting:
        """Rebuild a density fitting from `serialize` data.

        Parameters
        ----------
        data
            The serialized fitting.
        suffix
            Name suffix of the variables.

        Returns
        -------
        DensityFitting
            The fitting, with its bias, scale and networks.
        """
        fitting = super().deserialize(data, suffix=suffix)
        fitting.density_scale = float(data["@variables"]["density_scale"])
        return fitting


class DensityLoss(Loss):
    """Mean squared error of the density over grid points; real atoms are left out.

    The learning curve (``lcurve.out``) shows ``rmse_rho`` and ``mae_rho``, the
    root-mean-square and mean absolute errors of the density in e/Å^3 over the
    grid points of a batch (validation columns average ``numb_btch`` batches).

    Parameters
    ----------
    **kwargs
        Ignored (DeePMD-kit passes ``starter_learning_rate``).
    """

    def __init__(self, **kwargs: Any) -> None:
        self.l2_l: tf.Tensor | None = None
        self.l2_more: dict[str, tf.Tensor] = {}

    def build(
        self,
        learning_rate: tf.Tensor,
        natoms: tf.Tensor,
        model_dict: dict[str, tf.Tensor],
        label_dict: dict[str, tf.Tensor],
        suffix: str,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Build the loss: mean squared density error over the grid points.

        Parameters
        ----------
        learning_rate
            The learning rate (unused).
        natoms
            ``[nloc, nall, n_type0, ...]``; the grid points are the last type.
        model_dict
            Model outputs; ``atom_ener`` is the predicted density.
        label_dict
            Labels; ``atom_ener`` is the density at grid points.
        suffix
            Name suffix.

        Returns
        -------
        tf.Tensor
            The loss.
        dict[str, tf.Tensor]
            Mean squared and mean absolute errors.
        """
        nloc = natoms[0]
        ngrid = natoms[-1]
        predicted = tf.reshape(model_dict[LABEL], [-1, nloc])[:, nloc - ngrid :]
        labelled = tf.reshape(label_dict[LABEL], [-1, nloc])[:, nloc - ngrid :]
        error = predicted - tf.cast(labelled, predicted.dtype)
        mse = tf.reduce_mean(tf.square(error), name="l2_density_" + suffix)
        mae = tf.reduce_mean(tf.abs(error), name="mae_density_" + suffix)
        self.l2_l = mse
        self.l2_more = {"mse_rho": mse, "mae_rho": mae}
        tf.summary.scalar("rmse_rho_" + suffix, tf.sqrt(mse))
        return mse, self.l2_more

    def eval(self, sess: tf.Session, feed_dict: dict, natoms: np.ndarray) -> dict:
        """Evaluate the density errors of one batch.

        Parameters
        ----------
        sess
            The TensorFlow session.
        feed_dict
            The batch.
        natoms
            ``[nloc, nall, n_type0, ...]`` of the batch.

        Returns
        -------
        dict
            ``natoms`` (grid points per frame, the weight of this batch),
            ``rmse_rho`` and ``mae_rho`` in e/Å^3.
        """
        mse, mae = run_sess(
            sess, [self.l2_more["mse_rho"], self.l2_more["mae_rho"]], feed_dict=feed_dict
        )
        return {"natoms": int(natoms[-1]), "rmse_rho": float(np.sqrt(mse)), "mae_rho": float(mae)}

    @property
    def label_requirement(self) -> list[DataRequirementItem]:
        """The density labels ``atom_ener``, required; no energy labels."""
        return [DataRequirementItem(LABEL, 1, atomic=True, must=True, high_prec=False)]


@Model.register(DENSITY)
class DensityModel(EnerModel):
    """DeePMD-kit's energy model with output statistics from grid-point densities.

    The frozen graph is an energy-model graph (``model_type`` ``ener``):
    ``o_atom_energy`` holds the density at each grid point (e/Å^3) and 0 at
    real atoms.

    Parameters
    ----------
    descriptor
        The descriptor section or object.
    fitting_net
        The ``density`` fitting section or object.
    **kwargs
        Other options of DeePMD-kit's energy model.
    """

    def __init__(self, descriptor: Any, fitting_net: Any, **kwargs: Any) -> None:
        if isinstance(fitting_net, dict):
            fitting_net = {**fitting_net, "type": fitting_net.get("type", DENSITY)}
            if fitting_net["type"] != DENSITY:
                raise InputError(
                    f'a density model needs "fitting_net": {{"type": "density"}}, '
                    f"not {fitting_net['type']!r}"
                )
        elif not isinstance(fitting_net, DensityFitting):
            raise InputError("a density model needs a density fitting")
        if kwargs.get("spin") is not None:
            raise InputError("the density model does not support spin")
        super().__init__(descriptor=descriptor, fitting_net=fitting_net, **kwargs)
        self.fitting.stats_from_labels = True

    def _compute_output_stat(self, all_stat: dict, *args: Any, **kwargs: Any) -> None:
        """Let the fitting take bias and scale from the ``atom_ener`` labels.

        Parameters
        ----------
        all_stat
            Statistics batches (``make_stat_input``).
        *args, **kwargs
            Unused (``mixed_type``, ``stat_file_path``).
        """
        self.fitting.compute_output_stats(all_stat)

    def serialize(self, suffix: str = "") -> dict:
        """Serialize as model type ``density`` (deserializes to a `DensityModel`).

        Parameters
        ----------
        suffix
            Name suffix of the variables.

        Returns
        -------
        dict
            The energy model's data with ``type`` set to ``density``.
        """
        data = super().serialize(suffix=suffix)
        data["type"] = DENSITY
        return data
