#!/usr/bin/env bash
# The dpcharge demo: turn a real Quantum ESPRESSO density of Si64 into DeePMD-kit
# training data. Run it with `make demo` from the repository's top folder.
set -euo pipefail
cd "$(dirname "$0")/.."
work=demo_run
density=tests/data/CHGCAR_Si64_gamma_qe.gz

echo "== dpcharge demo: converting $density (Si64, 72^3 grid, Quantum ESPRESSO) into $work/data"
dpcharge convert "$density" -o "$work/data" --validation 0.1 --force
echo "== wrote deepmd/npy systems (real atoms + grid points as virtual atoms 'X',"
echo "   atom_ener = density in e/Å^3) under $work/data:"
find "$work/data" -name type_map.raw -printf "   %h\n"
