"""A network on the angular baseline's own features: does it learn what the linear fit leaves?

On crystalline Si64 the angular baseline (``docs/baseline.md``: a linear function of the
power spectrum of the neighbour density around each grid point) reaches 6.0e-4 e/Å^3 on an
unseen structure by itself, and the se_e2_a network trained on its remainder adds nothing
measurable (``docs/benchmarks.md``). This prototype asks whether a nonlinear function of the
same power spectrum does, before any of it is built into a DeePMD-kit graph: the baseline of
``baseline_ablation.py --alone`` (16 Gaussians, rcut 5 Å, ``lmax`` 8: 1,240 features) is
fitted to 1e5 random points of the training density, a small PyTorch network learns the
remainder from the standardised features (L1 loss, Adam, cosine rate), and both are tested
on every grid point of the unseen density. The features are numpy (``baseline_features``);
one thread; the network's training CPU time is printed.

Usage (needs the local torch wheel, as ``deepdft_peer.py``)::

    python benchmarks/spectrum_network.py --case si64 --epochs 30
    python benchmarks/spectrum_network.py --case si64k --epochs 30
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np
import torch
from accuracy import RESULTS as ALL_RESULTS
from baseline_ablation import ALONE, alone_sets, fitted, stacked_features

from dpcharge.fitting import Baseline

RESULTS = ALL_RESULTS / "spectrum_network"
BASELINE = {"basis": 16, "rcut": 5.0, "lmax": 8}
"""si.json's baseline."""


def network(inputs: int, width: int, layers: int) -> torch.nn.Module:
    """Return a SiLU multilayer perceptron with one output."""
    sizes = [inputs, *[width] * layers]
    blocks = []
    for size_in, size_out in itertools.pairwise(sizes):
        blocks += [torch.nn.Linear(size_in, size_out), torch.nn.SiLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(sizes[-1], 1))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=[case.name for case in ALONE], default="si64")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--rate", type=float, default=1e-3, help="start rate (cosine to 1e-2 of it)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=5, help="epochs between test evaluations")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    case = next(case for case in ALONE if case.name == args.case)
    baseline = Baseline(**BASELINE)
    sets = alone_sets(case)
    features, _, coefficients, remainder = fitted(sets["train"], case, baseline)
    offset = remainder.mean()
    test_features, test_density = stacked_features(sets["test"], case, baseline)
    linear_test = test_features @ coefficients + offset
    print(f"linear baseline: unseen MAE {np.abs(linear_test - test_density).mean():.4e}")

    mean, std = features.mean(0), features.std(0)
    std[std == 0] = 1.0
    scale = remainder.std()
    inputs = torch.tensor((features - mean) / std, dtype=torch.float32)
    targets = torch.tensor((remainder - offset) / scale, dtype=torch.float32)
    test_inputs = torch.tensor((test_features - mean) / std, dtype=torch.float32)
    del features, test_features
    model = network(inputs.shape[1], args.width, args.layers)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.rate)
    steps = args.epochs * (len(inputs) // args.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, args.rate * 1e-2)
    generator = np.random.default_rng(args.seed)
    cpu = 0.0
    curve = []

    def predict(values: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            chunks = [model(values[i : i + 65536])[:, 0] for i in range(0, len(values), 65536)]
        return torch.cat(chunks).double().numpy() * scale + offset

    for epoch in range(1, args.epochs + 1):
        start = time.process_time()
        order = torch.from_numpy(generator.permutation(len(inputs)))
        for first in range(0, len(inputs) - args.batch + 1, args.batch):
            batch = order[first : first + args.batch]
            loss = torch.nn.functional.l1_loss(model(inputs[batch])[:, 0], targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        cpu += time.process_time() - start
        if epoch % args.every and epoch != args.epochs:
            continue
        train_mae = np.abs(predict(inputs) - remainder).mean()
        test_mae = np.abs(linear_test + predict(test_inputs) - offset - test_density).mean()
        curve.append({"epoch": epoch, "cpu_s": round(cpu, 1), "train": train_mae, "test": test_mae})
        print(
            f"epoch {epoch:3d}  CPU {cpu:7.1f} s  training points MAE {train_mae:.4e}  "
            f"unseen MAE {test_mae:.4e} e/Å^3",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "case": case.name,
        "baseline": BASELINE,
        "linear_unseen_mae": float(np.abs(linear_test - test_density).mean()),
        "network": {k: getattr(args, k) for k in ("width", "layers", "batch", "rate", "seed")},
        "curve": curve,
    }
    out = RESULTS / f"{case.name}_{args.width}x{args.layers}_{args.epochs}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
