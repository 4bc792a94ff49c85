"""DeepDFT (Jørgensen & Bhowmik, PaiNN model) on the Si64 benchmark at a fixed CPU budget.

A peer for the ``si64_exp30`` run of ``budget.py``: DeepDFT trains on ONE structure
(``CHGCAR_si64_seed1.gz``, Quantum ESPRESSO, norm-conserving, thermal Si64) for a given number
of CPU minutes on one thread, then predicts every grid point (72^3 = 373,248) of the unseen
``CHGCAR_si64_seed6.gz``. Reported: MAE and RMSE (e/Å^3), NMAE = sum|err| / sum|rho| (%), the
predicted electron count (mean density x cell volume, e; 256 in the reference), the training
steps and CPU seconds, and the prediction's wall and CPU time and points per second.

How DeepDFT is run
------------------
DeepDFT (github.com/peterbjorgensen/DeepDFT) ships no library entry point for a time budget:
``runner.main`` is one loop. The training stage here imports DeepDFT's own modules
(``dataset``, ``densitymodel``, ``runner``) from a checkout and repeats that loop statement for
statement: its data reader (the file goes through ``dataset.DensityData``, i.e. ASE's
``VaspChargeDensity``), its random probe sampling and graph building
(``CollateFuncRandomSample``: 1000 random grid points of each structure a step, neighbour
lists by asap3), batches of 2 structures, ``PainnDensityModel``, Adam at 1e-4 decaying by
0.96 every 100,000 steps, MSE loss on the raw density (e/Å^3), validation every 5000 steps on
one preloaded batch of 5000 probes a structure, ``best_model.pth`` kept at the best validation
MAE. The hyper-parameters are those of the authors' README recipe for the PaiNN model and of
all three PaiNN models they ship (qm9, ethylene carbonate, NMC): cutoff 4 Å, 3 interactions,
node size 128 (``runner.py``'s bare defaults, 5 Å and 64, belong to its SchNet-style model;
``--cutoff``, ``--node-size``, ``--num-interactions`` and ``--model schnet`` select others).
The test stage predicts as ``predict_with_model.py`` does: ``load_model`` (reads
``arguments.json`` and ``best_model.pth``), the atom representation once, then the grid in
slices of 5000 probes through ``DensityGridIterator.static_get_slice``.

Changed from DeepDFT, and why:

- One structure, no held-out structure: ``split_data`` would put the only structure into the
  validation set (5 %, rounded up) and leave nothing to train on. Training and validation both
  use the training structure; validation draws its own 5000 random probes once.
- ``RotatingPoolData(train, 20)`` is replaced by a pool of 20 entries that all hold the one
  structure, read once: the original's loader process re-parses the CHGCAR without end, a
  second busy process whose CPU time the budget would not see. A step still takes 2 structures
  (here the same one twice) x 1000 random probes, as in DeepDFT.
- ``DataLoader`` workers 0 instead of 4 (and no 6 worker processes in the grid iterator): every
  cycle must run in the one process whose CPU time is the budget, on one thread.
- Training stops when the process's CPU time (``time.process_time``, imports and data reading
  included) reaches ``--cpu-minutes``; the model is then validated once more and checkpointed
  like at ``--max_steps`` (``best_model.pth`` if better, and ``last_model.pth``). The test uses
  ``best_model.pth``, as DeepDFT's own evaluation does.
- ``--seed`` seeds numpy and torch (DeepDFT draws unseeded).
- asap3 from PyPI (3.13) lacks ``FullNeighborList.get_neighbors_querypoint``, which DeepDFT
  uses when present (a patched asap3); DeepDFT then takes its own fallback, a neighbour list of
  the atoms plus the 1000 probes built at every step. That data time is part of the budget;
  ``timers`` in the result gives its share (DeepDFT's own ``data_timer``/``train_timer``).

Units: the benchmark files are VASP CHGCARs (rho x V_cell), which DeepDFT's reader divides by
the volume: its targets are e/Å^3, like ``dpcharge.chgcar.read_density``'s. Both stages check
that the two readers agree point for point and that mean x volume = 256 e. Positions are in Å.

Each stage runs in a subprocess of DeepDFT's virtualenv with ``OMP_NUM_THREADS=1``,
``MKL_NUM_THREADS=1``, ``torch.set_num_threads(1)`` and, by default, Debian's jemalloc
preloaded (``LD_PRELOAD``) and told never to return freed pages to the kernel
(``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``): with glibc's malloc or jemalloc's
defaults every step page-faults its large tensors in anew and a step costs 2.5 times as much
(``ALLOCATORS``). The result records the allocator and the library the process really mapped.
Work files go to ``benchmarks/runs/deepdft/<run>/`` (git-ignored), the result to
``benchmarks/results/deepdft/<run>.json``; ``--table`` prints a Markdown row per result.

Set-up (once; torch comes from the local CPU wheel, never a CUDA build; nothing is installed
into the project's own virtualenv)::

    python benchmarks/deepdft_peer.py --setup <DeepDFT git repository or clone URL>

which runs ``python -m venv benchmarks/runs/deepdft/venv``, ``venv/bin/pip install
torch==2.13.0 numpy ase lz4 asap3`` and ``git clone --no-checkout`` of the repository into
``benchmarks/runs/deepdft/DeepDFT``, checking out everything but the pretrained weights
(``*.pth``).

Usage::

    nice -n 10 python benchmarks/deepdft_peer.py                      # 30 CPU minutes
    nice -n 10 python benchmarks/deepdft_peer.py --name smoke --cpu-minutes 1 \\
        --test-points 20000 --results benchmarks/runs/deepdft/smoke   # a quick check
    python benchmarks/deepdft_peer.py --table
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DENSITIES = ROOT / "benchmarks" / "data" / "densities"
WORK = ROOT / "benchmarks" / "runs" / "deepdft"
RESULTS = ROOT / "benchmarks" / "results" / "deepdft"
TRAIN = DENSITIES / "CHGCAR_si64_seed1.gz"
TEST = DENSITIES / "CHGCAR_si64_seed6.gz"
ELECTRONS = 256.0
"""Valence electrons of Si64 (4 a Si atom, norm-conserving): the reference's mean x volume."""
TORCH = "torch==2.13.0"
"""The local CPU wheel: any other version would download a CUDA build."""
PACKAGES = (TORCH, "numpy", "ase", "lz4", "asap3")
"""DeepDFT's ``requirements.txt`` (numpy, asap3, ase, torch) and ``lz4``, which it imports."""
ALLOCATORS = {
    "jemalloc": ("libjemalloc.so.2", "dirty_decay_ms:-1,muzzy_decay_ms:-1"),
    "jemalloc_default": ("libjemalloc.so.2", None),
    "glibc": (None, None),
}
"""Library preloaded (None: glibc's malloc) and ``MALLOC_CONF`` of each allocator choice.

PaiNN's probe messages are tensors of tens of MB (edges x 3 x node size); jemalloc as Debian
configures it, like glibc's malloc, hands their pages back to the kernel and takes page faults
for them again at every step: half the CPU time was system time (0.6 CPU minutes beside two
other trainings: glibc 2.46 CPU s a step, Debian's jemalloc 2.54, jemalloc keeping freed pages
1.00)."""
POOL = 20
"""Entries of DeepDFT's rotating data pool (``RotatingPoolData(..., 20)``)."""
BATCH = 2
"""Structures a training step (DeepDFT's ``DataLoader`` batch size)."""
TRAIN_PROBES = 1000
"""Random grid points a structure per training step (``CollateFuncRandomSample``)."""
VALIDATION_PROBES = 5000
"""Random grid points of the preloaded validation batch."""
LOG_INTERVAL = 5000
"""Steps between validations and checkpoints (``runner.py``'s ``log_interval``)."""
PREDICT_PROBES = 5000
"""Grid points a prediction slice (``predict_with_model.py``'s ``--probe_count``)."""
LEARNING_RATE = 1e-4
"""Adam's rate in ``runner.py``, decayed by ``0.96 ** (step / 100000)``."""


def library_path(name: str) -> str | None:
    """Return the path of a shared library in the dynamic linker's cache, or None.

    Parameters
    ----------
    name
        File name of the library, e.g. ``libjemalloc.so.2``.
    """
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        cache = ""
    for line in cache.splitlines():
        if line.strip().startswith(name + " ") and "=>" in line:
            return line.split("=>")[-1].strip()
    for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64"):
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return None


def venv_python(venv: Path) -> Path:
    """Return the interpreter of a virtualenv."""
    return venv / "bin" / "python"


def setup(source: str, venv: Path, checkout: Path) -> None:
    """Create DeepDFT's virtualenv and checkout (each only if missing).

    Parameters
    ----------
    source
        DeepDFT's git repository: a local git directory or a clone URL.
    venv
        Virtualenv to create, apart from the project's.
    checkout
        Folder of the DeepDFT checkout.
    """
    if not venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv_python(venv)), "-m", "pip", "install", *PACKAGES], check=True)
    version = subprocess.run(
        [str(venv_python(venv)), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not version.endswith("+cpu"):
        raise RuntimeError(f"{venv} has torch {version}, not the CPU build")
    if not checkout.exists():
        subprocess.run(["git", "clone", "--no-checkout", source, str(checkout)], check=True)
        # the pretrained weights are large and not needed (a mirror may lack them)
        subprocess.run(
            ["git", "-C", str(checkout), "checkout", "HEAD", "--", ":(exclude)*.pth"], check=True
        )
    print(f"DeepDFT {deepdft_commit(checkout)} in {checkout}, torch {version} in {venv}")


def deepdft_commit(checkout: Path) -> str:
    """Return the commit of the DeepDFT checkout, or ``unknown``."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def loaded_allocator() -> str:
    """Return which malloc this process runs on: ``jemalloc`` if it is mapped, else ``glibc``."""
    maps = Path("/proc/self/maps").read_text()
    return "jemalloc" if "libjemalloc" in maps else "glibc"


def stage_command(args: argparse.Namespace, stage: str) -> list[str]:
    """Return the command line of one stage in DeepDFT's virtualenv."""
    command = [str(venv_python(args.venv)), str(Path(__file__).resolve()), "--stage", stage]
    command += ["--name", args.name, "--cpu-minutes", str(args.cpu_minutes)]
    command += ["--deepdft", str(args.deepdft), "--work", str(args.work)]
    command += ["--train", str(args.train), "--test", str(args.test)]
    command += ["--model", args.model, "--cutoff", str(args.cutoff), "--seed", str(args.seed)]
    command += ["--node-size", str(args.node_size)]
    command += ["--num-interactions", str(args.num_interactions)]
    if args.test_points:
        command += ["--test-points", str(args.test_points)]
    return command


def run_stage(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    """Run the training or test stage in a subprocess and return the JSON it writes.

    The subprocess gets one thread (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) and the chosen
    allocator preloaded; its output goes to ``<work>/<run>/<stage>.log``.
    """
    folder = args.work / args.name
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env.pop("LD_PRELOAD", None)
    env.pop("MALLOC_CONF", None)
    library, conf = ALLOCATORS[args.allocator]
    if library is not None:
        path = library_path(library)
        if path is None:
            raise RuntimeError(f"{library} not found: apt-get install -y libjemalloc2")
        env["LD_PRELOAD"] = path
    if conf is not None:
        env["MALLOC_CONF"] = conf
    log = folder / f"{stage}.log"
    command = stage_command(args, stage)
    print(f"$ {' '.join(command)}  > {log}", flush=True)
    with log.open("w") as stream:
        subprocess.run(command, env=env, stdout=stream, stderr=stream, check=True)
    return json.loads((folder / f"{stage}.json").read_text())


def import_deepdft(checkout: Path) -> None:
    """Make DeepDFT's modules (``dataset``, ``densitymodel``, ...) and ``dpcharge`` importable,
    on one torch thread."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    sys.path[:0] = [str(checkout), str(ROOT)]


def read_checked(path: Path, folder: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """Read a density with DeepDFT's reader and with dpcharge's, and check that they agree.

    Parameters
    ----------
    path
        A VASP CHGCAR (rho x V_cell), gzip-compressed.
    folder
        Folder that gets a link to ``path``: DeepDFT reads a directory of density files.

    Returns
    -------
    tuple
        DeepDFT's density dictionary (``density`` in e/Å^3, ``atoms``, ``grid_position`` in Å),
        dpcharge's density (e/Å^3, float64) and both electron counts (mean x volume, e).
    """
    import dataset  # DeepDFT's

    from dpcharge.chgcar import read_density

    folder.mkdir(parents=True, exist_ok=True)
    link = folder / path.name
    if not link.exists():
        link.symlink_to(path.resolve())
    entries = dataset.DensityData(str(folder))
    if len(entries) != 1:
        raise RuntimeError(f"{folder} holds {len(entries)} files, not one")
    entry = entries[0]
    atoms, density = read_density(path)
    volume = atoms.get_volume()
    electrons = {
        "dpcharge": float(density.mean() * volume),
        "deepdft": float(entry["density"].mean() * entry["atoms"].get_volume()),
    }
    for reader, count in electrons.items():
        if abs(count - ELECTRONS) > 1e-3:
            raise RuntimeError(f"{path}: {reader}'s reader counts {count} electrons, not 256")
    difference = float(np.abs(entry["density"] - density).max())
    moved = float(np.abs(entry["atoms"].get_positions() - atoms.get_positions()).max())
    if entry["density"].shape != density.shape or difference > 1e-9 or moved > 1e-9:
        raise RuntimeError(f"{path}: DeepDFT and dpcharge read it differently")
    return entry, density, electrons


def runner_arguments(args: argparse.Namespace, output: Path, data: Path) -> argparse.Namespace:
    """Return ``runner.py``'s parsed arguments for this run (its defaults elsewhere)."""
    import runner  # DeepDFT's

    argv = ["--cutoff", str(args.cutoff), "--num_interactions", str(args.num_interactions)]
    argv += ["--node_size", str(args.node_size), "--output_dir", str(output)]
    argv += ["--dataset", str(data), "--device", "cpu"]
    if args.model == "painn":
        argv.append("--use_painn_model")
    return runner.get_arguments(argv)


class Pool:
    """DeepDFT's rotating data pool of 20 entries, here all the one training structure.

    Parameters
    ----------
    structures
        Structures in memory (DeepDFT's ``BufferData``).
    size
        Entries of the pool.
    """

    def __init__(self, structures: Any, size: int = POOL) -> None:
        self.structures = structures
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.structures[index % len(self.structures)]


def train_stage(args: argparse.Namespace) -> None:
    """Train DeepDFT for ``--cpu-minutes`` of this process's CPU time; write ``train.json``.

    The loop is ``runner.main``'s, with the changes listed in the module docstring.
    """
    import_deepdft(args.deepdft)
    import dataset  # DeepDFT's
    import densitymodel
    import runner
    import torch
    import torch.utils.data

    np.random.seed(args.seed)  # noqa: NPY002 (DeepDFT samples probes with np.random.randint)
    torch.manual_seed(args.seed)
    folder = args.work / args.name
    output = folder / "model"
    output.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.DEBUG,
        format="%(asctime)s [%(levelname)-5.5s]  %(message)s",
        handlers=[logging.FileHandler(output / "printlog.txt", mode="w"), logging.StreamHandler()],
    )
    budget = args.cpu_minutes * 60.0
    start_wall = time.perf_counter()
    entry, _, electrons = read_checked(args.train, folder / "train_data")
    options = runner_arguments(args, output, folder / "train_data")
    (output / "arguments.json").write_text(json.dumps(vars(options)))
    logging.info("DeepDFT arguments %s; electrons %s", vars(options), electrons)

    structures = dataset.BufferData([entry])
    train_data = Pool(structures)
    train_loader = torch.utils.data.DataLoader(
        train_data,
        BATCH,
        num_workers=0,
        sampler=torch.utils.data.RandomSampler(train_data),
        collate_fn=dataset.CollateFuncRandomSample(
            options.cutoff, TRAIN_PROBES, pin_memory=False, set_pbc_to=None
        ),
    )
    val_loader = torch.utils.data.DataLoader(
        structures,
        BATCH,
        collate_fn=dataset.CollateFuncRandomSample(
            options.cutoff, VALIDATION_PROBES, pin_memory=False, set_pbc_to=None
        ),
        num_workers=0,
    )
    val_loader = list(val_loader)

    device = torch.device("cpu")
    if options.use_painn_model:
        net = densitymodel.PainnDensityModel(
            options.num_interactions, options.node_size, options.cutoff
        )
    else:
        net = densitymodel.DensityModel(options.num_interactions, options.node_size, options.cutoff)
    parameters = runner.count_parameters(net)
    logging.debug("model has %d parameters", parameters)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    criterion = torch.nn.MSELoss()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.96 ** (step / 100000))

    running_loss = torch.tensor(0.0)
    running_loss_count = torch.tensor(0)
    best_val_mae = np.inf
    history: list[dict[str, float]] = []
    timers = {name: runner.AverageMeter(name) for name in ("data", "train", "eval")}

    def checkpoint(step: int, path: Path) -> None:
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "best_val_mae": best_val_mae,
            },
            path,
        )

    def validate(step: int) -> None:
        nonlocal running_loss, running_loss_count, best_val_mae
        tstart = time.perf_counter()
        with torch.no_grad():
            train_loss = (running_loss / running_loss_count).item()
            running_loss = torch.tensor(0.0)
            running_loss_count = torch.tensor(0)
        val_mae, val_rmse = runner.eval_model(net, val_loader, device)
        logging.info(
            "step=%d, val_mae=%g, val_rmse=%g, sqrt(train_loss)=%g",
            step,
            val_mae,
            val_rmse,
            math.sqrt(train_loss),
        )
        history.append(
            {
                "step": step,
                "cpu_s": time.process_time(),
                "val_mae": val_mae,
                "val_rmse": val_rmse,
                "train_rmse": math.sqrt(train_loss),
            }
        )
        if val_mae < best_val_mae:
            best_val_mae = val_mae
            checkpoint(step, output / "best_model.pth")
        timers["eval"].update(time.perf_counter() - tstart)

    logging.info("start training, budget %.0f CPU s, %.1f s used", budget, time.process_time())
    start_cpu = time.process_time()
    step = 0
    endtime = time.perf_counter()
    done = False
    for _ in itertools.count():
        for batch in train_loader:
            timers["data"].update(time.perf_counter() - endtime)
            tstart = time.perf_counter()
            optimizer.zero_grad()
            outputs = net(batch)
            loss = criterion(outputs, batch["probe_target"])
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                running_loss += (
                    loss * batch["probe_target"].shape[0] * batch["probe_target"].shape[1]
                )
                running_loss_count += torch.sum(batch["num_probes"])
            timers["train"].update(time.perf_counter() - tstart)
            over = time.process_time() >= budget
            if step % LOG_INTERVAL == 0 or over:
                validate(step)
            step += 1
            scheduler.step()
            if over:
                done = True
                break
            endtime = time.perf_counter()
        if done:
            break
    checkpoint(step - 1, output / "last_model.pth")
    cpu = time.process_time()
    logging.info("budget reached after %d steps, %.1f CPU s", step, cpu)
    result = {
        "steps": step,
        "cpu_s": cpu,
        "cpu_s_training_loop": cpu - start_cpu,
        "cpu_s_per_step": (cpu - start_cpu) / step,
        "wall_s": time.perf_counter() - start_wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "best_val_mae": best_val_mae,
        "validation": history,
        "timers": {name: {"mean_s": t.avg, "count": t.count} for name, t in timers.items()},
        "parameters": parameters,
        "electrons": electrons,
        "allocator": loaded_allocator(),
        "torch_threads": torch.get_num_threads(),
        "deepdft_arguments": vars(options),
    }
    (folder / "train.json").write_text(json.dumps(result, indent=2))


def test_stage(args: argparse.Namespace) -> None:
    """Predict the test structure with ``best_model.pth`` and write ``test.json``.

    Every grid point, or ``--test-points`` random ones; the slices go through DeepDFT's
    ``DensityGridIterator.static_get_slice`` in this process (DeepDFT spreads them over 6).
    """
    import_deepdft(args.deepdft)
    import asap3
    import dataset  # DeepDFT's
    import densitymodel
    import predict_with_model
    import torch

    folder = args.work / args.name
    model, cutoff = predict_with_model.load_model(str(folder / "model"), "cpu")
    entry, reference, electrons = read_checked(args.test, folder / "test_data")
    atoms = entry["atoms"]
    grid = entry["grid_position"]
    target = reference.reshape(-1)
    if args.test_points:
        chosen = np.random.default_rng(args.seed).choice(
            target.size, args.test_points, replace=False
        )
        grid = grid.reshape(-1, 3)[chosen][:, None, None, :]
        target = target[chosen]
    points = target.size
    slices = math.ceil(points / PREDICT_PROBES)

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    predicted = []
    with torch.no_grad():
        graph = dataset.CollateFuncAtoms(cutoff=cutoff, pin_memory=False, set_pbc_to=None)
        batch = graph([entry])
        painn = isinstance(model, densitymodel.PainnDensityModel)
        atom_representation = model.atom_model(batch)
        neighborlist = asap3.FullNeighborList(cutoff, atoms)  # as grid_iterator_worker
        for index in range(slices):
            probes = dataset.DensityGridIterator.static_get_slice(
                index, atoms, grid, PREDICT_PROBES, cutoff, neighborlist=neighborlist
            )
            probes = {key: torch.tensor(value) for key, value in probes.items()}
            probes = dataset.collate_list_of_dicts([probes])
            for key in (
                "probe_edges",
                "probe_edges_displacement",
                "probe_xyz",
                "num_probe_edges",
                "num_probes",
            ):
                batch[key] = probes[key]
            if painn:
                density = model.probe_model(batch, *atom_representation)
            else:
                density = model.probe_model(batch, atom_representation)
            predicted.append(density.numpy().reshape(-1))
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    prediction = np.concatenate(predicted).astype(np.float64)
    error = prediction - target
    result = {
        "points": int(points),
        "all_points": not args.test_points,
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt(np.square(error).mean())),
        "nmae_percent": float(100 * np.abs(error).sum() / np.abs(target).sum()),
        "max_abs_error": float(np.abs(error).max()),
        "electrons_predicted": float(prediction.mean() * atoms.get_volume()),
        "electrons_reference": float(target.mean() * atoms.get_volume()),
        "electrons_file": electrons,
        "predict_wall_s": wall,
        "predict_cpu_s": cpu,
        "points_per_s": points / wall,
        "points_per_cpu_s": points / cpu,
        "model_step": int(torch.load(folder / "model" / "best_model.pth")["step"]),
        "allocator": loaded_allocator(),
        "torch_threads": torch.get_num_threads(),
    }
    (folder / "test.json").write_text(json.dumps(result, indent=2))


def versions(python: Path) -> dict[str, str]:
    """Return the versions of DeepDFT's dependencies in its virtualenv."""
    code = (
        "import json, torch, numpy, ase, asap3; print(json.dumps({'torch': torch.__version__,"
        " 'numpy': numpy.__version__, 'ase': ase.__version__, 'asap3': asap3.__version__}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def relative(path: str) -> str:
    """Return ``path`` relative to the repository (results name no machine's folders)."""
    return Path(path).resolve().relative_to(ROOT.resolve()).as_posix()


def run(args: argparse.Namespace) -> Path:
    """Train, test and write the run's result; return the result file."""
    for path in (args.train, args.test, venv_python(args.venv), args.deepdft / "runner.py"):
        if not path.exists():
            raise SystemExit(f"{path} is missing (see --setup)")
    start = time.perf_counter()
    train = run_stage(args, "train")
    print(
        f"trained {train['steps']} steps in {train['cpu_s']:.0f} CPU s "
        f"({train['steps'] / train['cpu_s_training_loop']:.2f} steps/CPU s)",
        flush=True,
    )
    test = run_stage(args, "test")
    result = {
        "name": args.name,
        "model": f"DeepDFT {args.model}",
        "train": args.train.name,
        "test": args.test.name,
        "cpu_minutes": args.cpu_minutes,
        "deepdft_commit": deepdft_commit(args.deepdft),
        "versions": versions(venv_python(args.venv)),
        "allocator": {
            "requested": args.allocator,
            "library": ALLOCATORS[args.allocator][0],
            "malloc_conf": ALLOCATORS[args.allocator][1],
            "training": train["allocator"],
            "test": test["allocator"],
        },
        "hyperparameters": {
            **train["deepdft_arguments"],
            # folders of this run, not this machine's paths
            "output_dir": relative(train["deepdft_arguments"]["output_dir"]),
            "dataset": relative(train["deepdft_arguments"]["dataset"]),
            "batch_structures": BATCH,
            "probes_per_structure": TRAIN_PROBES,
            "validation_probes": VALIDATION_PROBES,
            "log_interval": LOG_INTERVAL,
            "learning_rate": LEARNING_RATE,
            "lr_decay": "0.96 ** (step / 100000)",
            "loss": "mse",
            "pool": POOL,
            "predict_probes": PREDICT_PROBES,
            "seed": args.seed,
        },
        "training": {key: value for key, value in train.items() if key != "deepdft_arguments"},
        "test_metrics": test,
        "units": {"density": "e/Å^3", "length": "Å", "electrons": "e", "nmae": "%"},
        "total_wall_s": time.perf_counter() - start,
        "host": platform.node(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(
        f"{args.name}: MAE {test['mae']:.3e} e/Å^3, RMSE {test['rmse']:.3e}, "
        f"NMAE {test['nmae_percent']:.2f} %, {test['electrons_predicted']:.2f} e, "
        f"{test['points_per_s']:.0f} points/s -> {path}"
    )
    return path


def table(results: Path) -> None:
    """Print a Markdown table with a row per result file of ``results``."""
    print(
        "| run | model | cutoff (Å) | CPU min | steps | test points | MAE (e/Å^3) | RMSE (e/Å^3) "
        "| NMAE (%) | electrons | predict points/s | allocator |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        t, m = r["training"], r["test_metrics"]
        allocator = r["allocator"]["requested"]
        if r["allocator"]["training"] != allocator.split("_")[0]:
            allocator += f" (loaded {r['allocator']['training']})"
        print(
            f"| {r['name']} | {r['model']} ({r['hyperparameters']['node_size']}x"
            f"{r['hyperparameters']['num_interactions']}) | {r['hyperparameters']['cutoff']:g} "
            f"| {t['cpu_s'] / 60:.1f} | {t['steps']} | {m['points']} | {m['mae']:.2e} "
            f"| {m['rmse']:.2e} | {m['nmae_percent']:.2f} | {m['electrons_predicted']:.2f} "
            f"| {m['points_per_s']:.0f} | {allocator} |"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", help="run name (default si64_<model><minutes>)")
    parser.add_argument("--cpu-minutes", type=float, default=30.0, help="training CPU budget")
    parser.add_argument("--test-points", type=int, default=0, help="random test points (0: all)")
    parser.add_argument("--deepdft", type=Path, default=WORK / "DeepDFT", help="DeepDFT checkout")
    parser.add_argument("--venv", type=Path, default=WORK / "venv", help="DeepDFT's virtualenv")
    parser.add_argument("--work", type=Path, default=WORK, help="folder of the work files")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument("--train", type=Path, default=TRAIN, help="training CHGCAR")
    parser.add_argument("--test", type=Path, default=TEST, help="test CHGCAR")
    parser.add_argument("--model", choices=("painn", "schnet"), default="painn")
    parser.add_argument("--cutoff", type=float, default=4.0, help="cutoff, Å")
    parser.add_argument("--node-size", type=int, default=128)
    parser.add_argument("--num-interactions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="jemalloc")
    parser.add_argument("--setup", metavar="GIT", help="only set up the venv and checkout")
    parser.add_argument("--table", action="store_true", help="print the results' table only")
    parser.add_argument("--stage", choices=("train", "test"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.name = args.name or f"si64_{args.model}{args.cpu_minutes:g}"
    for key in ("deepdft", "venv", "work", "results", "train", "test"):
        setattr(args, key, getattr(args, key).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = parse(argv)
    if args.stage == "train":
        train_stage(args)
    elif args.stage == "test":
        test_stage(args)
    elif args.table:
        table(args.results)
    elif args.setup:
        setup(args.setup, args.venv, args.deepdft)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
