"""dpcharge: learn and predict DFT electron charge densities with DeePMD-kit.

Grid points of a DFT density become pseudo-atoms of an extra "virtual" type; a
DeePMD-kit model learns the density (e/Å^3) at each of them from the real atoms
within its cutoff (Deep Charge, Lv et al., Phys. Rev. B 108, 235159, 2023).
"""

__version__ = "0.1.0"
