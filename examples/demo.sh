#!/usr/bin/env bash
# The dpcharge demo, end to end on real Quantum ESPRESSO densities of two Si64 structures:
# convert one, train with plain `dp train`, freeze, predict the other structure's whole
# grid, and compare it with DFT. Run it with `make demo` from the repository's top folder.
set -euo pipefail
cd "$(dirname "$0")/.."
work=demo_run
train=examples/si64/CHGCAR_si64_seed101.gz
unseen=examples/si64/CHGCAR_si64_seed102.gz
rm -rf "$work" && mkdir -p "$work"
start=$SECONDS

echo "== 1/5 convert $train (Si64, 72^3 grid) into 1e5 grid points as pseudo-atoms"
dpcharge convert "$train" -o "$work/data" --validation 0.1

echo "== 2/5 dp train: input_templates/si_fast.json, a least-squares fit of the neighbour density"
echo "        and a small network on top, 2000 steps (1-2 minutes);"
echo "        learning curve (rmse_rho, mae_rho in e/Å^3) in $work/lcurve.out"
cp input_templates/si_fast.json "$work/input.json"
(cd "$work" && dp --tf train --skip-neighbor-stat input.json > train.log 2>&1) || {
  tail -20 "$work/train.log"; exit 1; }
tail -1 "$work/lcurve.out" | awk '{printf "        step %s: validation RMSE %s, MAE %s e/Å^3\n", $1, $2, $4}'

echo "== 3/5 dp freeze -> $work/model.pb"
(cd "$work" && dp --tf freeze -o model.pb > freeze.log 2>&1) || { tail -20 "$work/freeze.log"; exit 1; }

echo "== 4/5 dpcharge reassemble: predict every grid point of the unseen structure $unseen"
dpcharge reassemble "$work/model.pb" "$unseen" -o "$work/CHGCAR_predicted"

echo "== 5/5 dpcharge test: prediction against DFT on the unseen structure"
dpcharge test "$work/model.pb" "$unseen" --plots "$work/figures" --json "$work/metrics.json"

echo "== done in $((SECONDS - start)) s: predicted density $work/CHGCAR_predicted,"
echo "   metrics $work/metrics.json, figures:"
ls "$work"/figures/*.png | sed 's/^/   /'
