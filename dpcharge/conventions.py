"""The conventions every part of dpcharge shares: names, labels, defaults, the type map.

This module imports nothing heavy (no TensorFlow, DeePMD-kit, dpdata or
matplotlib), so the command line can build its parser from these defaults and
DeePMD-kit's light ``deepmd.backend`` entry point can load the schemas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dpcharge.errors import InputError

DENSITY = "density"
"""Name of the model, fitting and loss types registered with DeePMD-kit."""

LABEL = "atom_ener"
"""Per-atom label (and model output key) holding the density in e/Å^3; 0 at real atoms."""

WEIGHT = "grid_weight"
"""Per-atom weight of each grid point in the loss and the label statistics, 1 at real atoms.
Written only for points drawn by an ensemble (`dpcharge.selection`); 1 when absent."""

GRID_TYPE = "X"
"""Default name of the grid-point (virtual) type: ase's dummy atom, which is no element."""

COMPONENTS = ("total", "magnetization", "mx", "my", "mz")
"""Density components a VASP file can hold: the total density and the magnetisation."""

POINTS = 100_000
"""Random grid points drawn per training structure, as in the paper."""

POINTS_PER_FRAME = 200
"""Grid points per training frame."""

POINTS_PER_FEATURE = 10
"""Fewest distinct grid points per baseline feature that its least-squares fit accepts."""

CHUNK = 2000
"""Grid points per graph evaluation in prediction: bounds the memory."""

SPACING = 0.15
"""Grid spacing in Å used when nothing else sets the grid (VASP's fine grids: 0.1-0.15 Å)."""

THRESHOLDS = (0.001, 0.005, 0.01, 0.05)
"""Absolute errors (e/Å^3) whose fractions ``dpcharge test`` reports in its error histogram."""

UNIFORM_SHARE = 0.2
"""Share of the drawing probability of training points spread evenly over the grid when an
ensemble chooses them (the rest follows the ensemble's deviation)."""

RANKING_SPACING = 0.5
"""Grid spacing in Å on which an ensemble ranks candidate structures: coarse, enough to rank."""

MIN_DISTANCE = 0.01
"""Closest a grid point may sit to a nucleus, in Å: at zero distance the descriptor is NaN."""

MALLOC_KEEP_BYTES = 1 << 30
"""glibc's malloc: blocks below this size come from its heap, and this much freed memory stays
there (its mmap and trim thresholds), instead of TensorFlow's buffers of every chunk and step
being returned to the kernel and faulted in again."""


@dataclass(frozen=True)
class TypeMap:
    """A density model's type map: the real elements, then the grid-point type last.

    Parameters
    ----------
    elements
        Real element symbols in the model's order.
    grid_type
        Name of the grid-point type; no element may carry it.
    """

    elements: tuple[str, ...]
    grid_type: str = GRID_TYPE

    def __post_init__(self) -> None:
        names = self.names
        if not self.elements:
            raise InputError(f"type map {list(names)} names no real element")
        if self.grid_type in self.elements:
            raise InputError(
                f"the grid-point type {self.grid_type!r} is also an element of the type map "
                f"{list(names)}; name the grid-point type otherwise"
            )
        if len(set(names)) != len(names):
            raise InputError(f"type map {list(names)} names a type twice")

    @classmethod
    def from_names(cls, names: Sequence[str]) -> TypeMap:
        """Split a full type map (the grid-point type last), as DeePMD-kit stores it."""
        names = list(names)
        if len(names) < 2:
            raise InputError(
                f"type map {names} must list the real elements, then the grid-point type last"
            )
        return cls(tuple(names[:-1]), names[-1])

    @classmethod
    def of_structures(cls, symbol_lists: Iterable[Sequence[str]], grid_type: str) -> TypeMap:
        """Return the elements of several structures in order of first appearance."""
        elements: dict[str, None] = {}
        for symbols in symbol_lists:
            elements.update(dict.fromkeys(symbols))
        return cls(tuple(elements), grid_type)

    @property
    def names(self) -> tuple[str, ...]:
        """The full type map: real elements, then the grid-point type."""
        return (*self.elements, self.grid_type)

    @property
    def grid_index(self) -> int:
        """Index of the grid-point type."""
        return len(self.elements)

    def indices(self, symbols: Sequence[str]) -> list[int]:
        """Return the type index of each real atom, refusing elements outside the map.

        Parameters
        ----------
        symbols
            Chemical symbols of a structure's atoms.

        Returns
        -------
        list of int
            Index of each symbol among the real elements.
        """
        if self.grid_type in symbols:
            raise InputError(
                f"the grid-point type {self.grid_type!r} is also an element of the structure; "
                "name the grid-point type otherwise"
            )
        unknown = sorted(set(symbols) - set(self.elements))
        if unknown:
            raise InputError(
                f"the structure holds {', '.join(unknown)}, which the type map does not know "
                f"(its elements: {', '.join(self.elements)}; grid-point type {self.grid_type})"
            )
        position = {element: index for index, element in enumerate(self.elements)}
        return [position[symbol] for symbol in symbols]
