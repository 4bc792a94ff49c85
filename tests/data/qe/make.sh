#!/usr/bin/env bash
# Recompute the files of this folder with Debian's Quantum ESPRESSO 6.7 (pw.x, pp.x):
#   apt-get install quantum-espresso quantum-espresso-data
# Each run takes a few seconds on one core. Run from anywhere: bash tests/data/qe/make.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
for run in si2 si8_gamma si2_spin; do
    mkdir -p "$work/$run"
    cp "$here/$run/scf.in" "$work/$run/"
    cd "$work/$run"
    nice -n 10 pw.x -in scf.in > scf.out
    prefix=$(sed -n "s/.*prefix *= *'\(.*\)'.*/\1/p" scf.in)
    gzip -9n < "out/$prefix.save/charge-density.dat" > "$here/$run/charge-density.dat.gz"
    { grep -E "Program PWSCF|number of electrons|Dense  grid|^!|convergence has" scf.out
      grep "total magnetization" scf.out | tail -n 1 || true; } > "$here/$run/scf.out.excerpt"
    if [ "$run" != si2_spin ]; then
        cat > pp.in <<PP
&INPUTPP
  prefix = '$prefix'
  outdir = './out'
  filplot = 'rho'
  plot_num = 0
/
&PLOT
  iflag = 3
  output_format = 6
  fileout = 'rho.cube'
/
PP
        nice -n 10 pp.x -in pp.in > pp.out
        gzip -9n < rho.cube > "$here/$run/rho.cube.gz"
    fi
done
