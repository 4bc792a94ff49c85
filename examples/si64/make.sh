#!/usr/bin/env bash
# Recompute the two demo densities (about 1-2 min on 2 cores). Needs Quantum ESPRESSO
# (Debian: apt-get install quantum-espresso quantum-espresso-data) and ase.
set -euo pipefail
cd "$(dirname "$0")/../.."
python benchmarks/data/make_densities.py --systems si64 --seeds 101 102 --out examples/si64 "$@"
