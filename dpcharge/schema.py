"""Input schemas of the ``density`` model, fitting and loss types, for ``dp train``.

DeePMD-kit checks every training input against its argument schemas (dargs):
registering ours lets ``dp train`` validate a density input and name a wrong
key, and ``dp doc-train-input`` document the keys. This module imports no
TensorFlow, so it can be loaded by DeePMD-kit's light ``deepmd.backend`` entry
point as well as by `dpcharge.fitting`, which implements the types.
"""

from __future__ import annotations

from dargs import Argument, Variant
from deepmd.utils.argcheck import (
    descrpt_variant_type_args,
    fitting_args_plugin,
    fitting_ener,
    loss_args_plugin,
    model_args_plugin,
)

from dpcharge.conventions import DENSITY, POINTS_PER_FEATURE

_FITTING_KEYS = (
    "numb_fparam",
    "numb_aparam",
    "neuron",
    "activation_function",
    "precision",
    "resnet_dt",
    "trainable",
    "seed",
)
"""Energy-fitting options that keep their meaning for a density fitting."""


_DOC_BASELINE = (
    "Atomic-density baseline: per real element a radial function, the sum of `basis` "
    "Gaussians exp(-r^2/(2 s_k^2)) with widths s_k on a geometric ladder from `width_min` "
    "to `width_max` (Å), times (1 - r^2/rcut^2)^2 inside `rcut`; the baseline at a grid "
    "point is the sum of its real neighbours' functions, plus, with `lmax`, a linear "
    "function of the power spectrum of their angular distribution. Its coefficients are fitted by "
    "least squares to the training densities when the output statistics are computed; the "
    "network learns the density minus the baseline, scaled by the remainder's mean and "
    "standard deviation. The frozen graph's output stays the density. Absent: no baseline."
)


def _baseline_args() -> list[Argument]:
    return [
        Argument("basis", int, optional=True, default=8, doc="Radial functions per real element."),
        Argument(
            "rcut",
            float,
            optional=True,
            default=4.0,
            doc="Cutoff radius of the radial functions, Å; at most the descriptor's rcut.",
        ),
        Argument("width_min", float, optional=True, default=0.2, doc="Narrowest Gaussian, Å."),
        Argument("width_max", float, optional=True, default=2.5, doc="Widest Gaussian, Å."),
        Argument(
            "lmax",
            [int, type(None)],
            optional=True,
            default=None,
            doc="Highest angular order l of the neighbour density's power spectrum (SOAP: "
            "sum over m of c_A,lm c_B,lm for every pair of (element, radial function)), "
            "added to the radial sums as features of the linear fit; (lmax + 1) * C (C + 1) / 2 "
            "more features with C = elements * basis, each needing "
            f"{POINTS_PER_FEATURE} distinct statistics points (data_stat_nbatch). Absent or "
            "null: radial sums only.",
        ),
        Argument(
            "trainable",
            bool,
            optional=True,
            default=False,
            doc="Train the coefficients with the network (true) or keep the least-squares "
            "fit (false).",
        ),
        Argument(
            "sel",
            [list[int], type(None)],
            optional=True,
            default=None,
            doc="Neighbours of each real element the baseline keeps, the nearest first; "
            "each at most the descriptor's sel. Enough to cover `rcut` makes the baseline "
            "cheaper than the descriptor's full list (the cost of the angular features "
            "grows with it); a training grid point with more neighbours within `rcut` is "
            "refused when the baseline is fitted. Absent or null: the descriptor's sel.",
        ),
        Argument(
            "ridge",
            float,
            optional=True,
            default=0.0,
            doc="Ridge penalty of the least-squares fit: the coefficients of the features, "
            "each scaled to unit root mean square, minimise the mean squared residual plus "
            "ridge times their sum of squares. 0: plain least squares. A small penalty "
            "(1e-8 to 1e-7) keeps a fit to one small cell from following that cell's "
            "neighbourhoods and allows a larger basis (an unseen Al26Mg6: 13-20 % less "
            "error); where the plain fit transfers well (Si64) any penalty costs accuracy.",
        ),
        Argument(
            "network_input",
            bool,
            optional=True,
            default=False,
            doc="Also give the baseline's features (radial sums and power spectrum), each "
            "standardised by its mean and standard deviation over the statistics points, to "
            "the fitting network after the descriptor: the network then sees the neighbour "
            "density's shape as the linear fit does. Its first layer grows by "
            "(lmax + 1) * C (C + 1) / 2 + C inputs (C = elements * basis).",
        ),
    ]


def _fitting_density_args() -> list[Argument]:
    return [
        *(arg for arg in fitting_ener() if arg.name in _FITTING_KEYS),
        Argument("baseline", dict, _baseline_args(), optional=True, doc=_DOC_BASELINE),
    ]


_DOC_FITTING = (
    "(dpcharge, TensorFlow only) Density at grid points: an energy fitting whose "
    "per-atom output is the density in e/Å^3 at atoms of the grid-point type (the last "
    "entry of type_map) and exactly 0 at real atoms. Use with model type `density` and "
    "loss type `density`. "
)
_DOC_LOSS = (
    "(dpcharge, TensorFlow only) Error of the density (e/Å^3) over grid points only, "
    "real atoms left out; lcurve.out shows rmse_rho and mae_rho in e/Å^3 whatever the "
    "function trained on. "
)


def _loss_density_args() -> list[Argument]:
    return [
        Argument(
            "function",
            str,
            optional=True,
            default="mse",
            doc="What training minimises over the grid points of a batch: `mse` (mean squared "
            "error, the paper's), `mae` (mean absolute error, the test metric) or `huber` "
            "(squared below `huber_delta`, absolute above).",
        ),
        Argument(
            "huber_delta",
            float,
            optional=True,
            default=0.01,
            doc="For `huber`: the error in e/Å^3 where the loss turns from squared to absolute.",
        ),
    ]


_DOC_MODEL = (
    "(dpcharge, TensorFlow only) Charge-density model (Deep Charge): grid points are "
    "atoms of the last type of type_map, labelled by `atom_ener` = density in e/Å^3. "
    "Its output is a net scaled by the spread and shifted by the mean of the training "
    "densities, plus an optional atomic-density baseline. The descriptor must not "
    "let grid points see grid points (se_e2_a: sel 0 for the grid type)."
)

fitting_args_plugin.register(DENSITY, doc=_DOC_FITTING)(_fitting_density_args)
loss_args_plugin.register(DENSITY, doc=_DOC_LOSS)(_loss_density_args)


@model_args_plugin.register(DENSITY)
def _model_density_args() -> Argument:
    return Argument(
        DENSITY,
        dict,
        [
            Argument(
                "descriptor",
                dict,
                [],
                [descrpt_variant_type_args()],
                doc="The descriptor of the real atoms around each grid point.",
            ),
            Argument(
                "fitting_net",
                dict,
                [],
                [
                    Variant(
                        "type",
                        [Argument(DENSITY, dict, _fitting_density_args(), doc=_DOC_FITTING)],
                        optional=True,
                        default_tag=DENSITY,
                        doc="The type of the fitting: only `density`.",
                    )
                ],
                doc="The density fitting net.",
            ),
        ],
        doc=_DOC_MODEL,
    )
