"""Start pw.x SCF from a predicted density: iterations and wall time against the atomic start.

For structures no model was trained on, pw.x runs the same SCF input twice: once from Quantum
ESPRESSO's default start (superposition of atomic densities) and once with
``startingpot = 'file'`` from the density ``dpcharge reassemble MODEL scf.in --format espresso``
wrote. The inputs are those of ``benchmarks/data/make_densities.py`` (same structures, cutoffs,
k-points, smearing, ``conv_thr`` and mixing: the benchmark densities' settings), imported from
it. Each run records the SCF iterations, pw.x's and dpcharge's wall times, both total energies
(they must agree within ``conv_thr``), the load average, and whether pw.x said it read the
start from file; it writes ``benchmarks/results/scf_start/<system>_seed<seed>.json``.

``--md`` runs pw.x ``calculation = 'md'`` on a thermal Si64 (pw.x's own extrapolation of the
density from step to step, ``pot_extrapolation`` ``atomic`` or ``second_order``), then an SCF
from the predicted density, and optionally from atoms, at the positions of each MD step
(``benchmarks/results/scf_start/md_<extrapolation>.json``). ``--delta-steps`` then starts
steps of that MD from the previous step's converged density plus the predicted change
(``delta_start``).

``--train SYSTEM`` trains the model of a system with the workflow of
``benchmarks/accuracy.py`` (one structure, seed 1, 1e5 points, 20,000 steps, start_lr 3e-3,
``"baseline": {"basis": 8}``) in ``benchmarks/runs/scf_<system>/``.

Everything runs under ``nice -n 10``, pw.x as one process (no mpirun), dpcharge with
``--threads 1``, TensorFlow and OpenMP with one thread. Work folders are in
``benchmarks/runs/scf_start/`` (not committed).

Usage::

    python benchmarks/scf_start.py --train alslab
    python benchmarks/scf_start.py --systems si64 --seeds 2 3
    python benchmarks/scf_start.py --systems si64 si64hot alslab almg32
    python benchmarks/scf_start.py --md --md-steps 10 --md-extrapolation atomic
    python benchmarks/scf_start.py --md --md-steps 6 --md-only --md-extrapolation second_order \\
        --delta-steps 2 4      # then the predicted change on step k's density (delta_start)
    python benchmarks/scf_start.py --systems almg32input --displace 0.01   # finite displacement
    python benchmarks/scf_start.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ase.io import read

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_densities as md  # noqa: E402
from accuracy import execute, save, tool  # noqa: E402

WORK = ROOT / "benchmarks" / "runs" / "scf_start"
RESULTS = ROOT / "benchmarks" / "results" / "scf_start"
SI64_MODEL = "benchmarks/runs/si64_baseline_fixed8_20000/model.pb"
READ_FROM_FILE = "The initial density is read from file"
FROM_ATOMS = "Initial potential from superposition of free atoms"
DENSITY = "charge-density.dat"
WFC_FROM_FILE = "Starting wfcs from file"


@dataclass(frozen=True)
class Case:
    """A kind of structure to start pw.x on.

    Attributes
    ----------
    name : str
        Name in file names and on the command line.
    system : make_densities.System
        The benchmark system whose settings and structures are used.
    seeds : tuple of int
        Default held-out seeds (seed 1 trained the model).
    model : str
        Frozen model, relative to the repository.
    magnetization : str or None
        Frozen magnetisation model of a spin-polarised system, relative to the repository.
    """

    name: str
    system: md.System
    seeds: tuple[int, ...]
    model: str
    magnetization: str | None = None


CASES = {
    case.name: case
    for case in (
        Case("si64", md.SYSTEMS["si64"], (2, 3, 4, 5, 6), SI64_MODEL),
        Case("si64hot", md.SYSTEMS["si64hot"], (7,), SI64_MODEL),
        # the angular baseline's model (docs/benchmarks.md, section 5): 3x less error
        Case(
            "si64angular",
            md.SYSTEMS["si64"],
            (2,),
            "benchmarks/runs/si64_angular_2000/model.pb",
        ),
        # si.json's settings since 7 Dec 2026: the baseline's features as the network's input
        Case(
            "si64input",
            md.SYSTEMS["si64"],
            (2,),
            "benchmarks/runs/si64_angular_input_lr1e-3_20000/model.pb",
        ),
        # the same accuracy from si_fast.json's small network (budget.py), faster to predict
        Case(
            "si64fast",
            md.SYSTEMS["si64"],
            (2, 3, 4, 5, 6),
            "benchmarks/runs/si64_angular_small_2000/model.pb",
        ),
        Case(
            "alslab",
            md.SYSTEMS["alslab"],
            (2, 3, 4),
            "benchmarks/runs/scf_alslab/model.pb",
        ),
        Case(
            "almg32",
            md.SYSTEMS["almg32"],
            (2, 3),
            "benchmarks/runs/scf_almg32/model.pb",
        ),
        # Al-Mg from the ridge-penalised angular model (budget.py), 7.6e-4 against 9.8e-4
        Case(
            "almg32ridge",
            md.SYSTEMS["almg32"],
            (2, 3),
            "benchmarks/runs/almg32_angular_ridge1e-07_2000/model.pb",
        ),
        # the same with the features as the network's input (budget.py), 7.9e-4
        Case(
            "almg32input",
            md.SYSTEMS["almg32"],
            (2,),
            "benchmarks/runs/almg32_angular_ridge1e-07_input_lr1e-3_20000/model.pb",
        ),
        # amorphous Si: the angular model trained on seeds 1 and 2 (budget.py), seed 3 held out
        Case(
            "asi64",
            md.SYSTEMS["asi64"],
            (3,),
            "benchmarks/runs/asi64_angular_2000/model.pb",
        ),
        # PAW water: water.json trained on seeds 1, 2, 4 and 5 (budget.py), seed 3 held out
        Case(
            "water32",
            md.SYSTEMS["water32"],
            (3,),
            "benchmarks/runs/water32_angular_4structures_2000/model.pb",
        ),
        # spin-polarised: the density and magnetisation models of benchmarks/spin.py
        Case(
            "fe16",
            md.SYSTEMS["fe16"],
            (2,),
            "benchmarks/runs/spin_fe16_angular_total/model.pb",
            "benchmarks/runs/spin_fe16_angular_magnetization/model.pb",
        ),
    )
}


# ----------------------------------------------------------------------------- running


def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run ``nice -n 10 command`` on one thread in ``cwd``, its output alone in ``log``.

    Returns
    -------
    tuple of float
        Wall and CPU (user + system) seconds.
    """
    log.unlink(missing_ok=True)
    return execute(["nice", "-n", "10", *command], cwd, 1, log)


def with_startingpot(text: str, wavefunctions: bool = False) -> str:
    """Return a pw.x input with ``startingpot = 'file'`` added to its &electrons namelist,
    and ``startingwfc = 'file'`` if ``wavefunctions``."""
    lines = "  startingpot = 'file'\n" + ("  startingwfc = 'file'\n" if wavefunctions else "")
    new, count = re.subn(r"(&electrons\s*\n)", lambda m: m.group(1) + lines, text, flags=re.I)
    if count != 1:
        raise ValueError("no &electrons namelist in the pw.x input")
    return new


def parse_pw(output: str) -> dict[str, object]:
    """Read what the benchmark needs from a pw.x SCF output.

    Parameters
    ----------
    output : str
        pw.x's standard output.

    Returns
    -------
    dict
        ``iterations`` (each SCF of the run, in order), ``energies_Ry`` (the "!" total
        energies), ``accuracy_Ry`` (the estimated SCF accuracy after each iteration of the
        first SCF), ``read_from_file`` and ``from_atoms`` (pw.x's own words about its start),
        ``pw_cpu_s`` and ``pw_wall_s`` (pw.x's own CPU and WALL times), ``h_psi_calls``
        (applications of the Hamiltonian: the work of the Davidson diagonalisations),
        ``dense_grid``.
    """
    iterations = [int(n) for n in re.findall(r"convergence has been achieved in\s+(\d+)", output)]
    energies = [float(e) for e in re.findall(r"^!\s+total energy\s+=\s+(\S+) Ry", output, re.M)]
    first = output.split("convergence has been achieved")[0]
    accuracy = [float(a) for a in re.findall(r"estimated scf accuracy\s+<\s+(\S+) Ry", first)]
    wall = re.search(r"PWSCF\s+:(.*)CPU\s+(.*)WALL", output)
    h_psi = re.search(r"^\s+h_psi\s+:.*\(\s*(\d+) calls\)", output, re.M)
    dense = re.search(r"Dense\s+grid:.*FFT dimensions:\s*\(\s*(\d+),\s*(\d+),\s*(\d+)\)", output)
    return {
        "iterations": iterations,
        "energies_Ry": energies,
        "accuracy_Ry": accuracy,
        "read_from_file": READ_FROM_FILE in output,
        "from_atoms": FROM_ATOMS in output,
        "pw_cpu_s": seconds(wall.group(1)) if wall else None,
        "pw_wall_s": seconds(wall.group(2)) if wall else None,
        "h_psi_calls": int(h_psi.group(1)) if h_psi else None,
        "dense_grid": [int(n) for n in dense.groups()] if dense else None,
        "job_done": "JOB DONE" in output,
    }


def seconds(text: str) -> float:
    """Convert pw.x's time ``1h 2m 3.45s`` (any of the parts) to seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)\s*([hms])", text))


def run_pw(
    folder: Path, text: str, keep_wavefunctions: bool = False
) -> tuple[dict[str, object], float, list[float]]:
    """Run pw.x (one process) on ``text`` in ``folder``; return its parse, wall time, load.

    The wavefunctions pw.x leaves in ``tmp/`` are deleted afterwards unless
    ``keep_wavefunctions``; its output stays in ``folder/pw.out``.
    """
    (folder / "scf.in").write_text(text)
    load = [round(x, 2) for x in os.getloadavg()]
    wall, _ = timed(["pw.x", "-in", "scf.in"], folder, folder / "pw.out")
    parsed = parse_pw((folder / "pw.out").read_text())
    if not parsed["job_done"] or not parsed["iterations"]:
        raise RuntimeError(f"pw.x did not converge in {folder}")
    if keep_wavefunctions:
        return parsed, wall, load
    for path in (folder / "tmp").glob("*.wfc*"):
        path.unlink()
    for path in (folder / "tmp").glob("*.save/wfc*.dat"):
        path.unlink()
    return parsed, wall, load


def predict(folder: Path, case: Case) -> tuple[float, float, str]:
    """Write ``folder/tmp/pw.save/charge-density.dat`` with dpcharge; return wall, CPU, log."""
    command = [tool("dpcharge"), "reassemble", str(ROOT / case.model), "scf.in"]
    command += ["--format", "espresso", "--threads", "1", "--force"]
    if case.magnetization is not None:
        command += ["--magnetization", str(ROOT / case.magnetization)]
    wall, cpu = timed(command, folder, folder / "dpcharge.log")
    return wall, cpu, (folder / "dpcharge.log").read_text()


def relative(text: str) -> str:
    """Return ``text`` with this machine's paths replaced (repository, pseudopotentials)."""
    return text.replace(str(ROOT) + "/", "").replace(md.PSEUDO_DIR, "$ESPRESSO_PSEUDO")


def start_both(case: Case, seed: int, force: bool) -> dict[str, object] | None:
    """Run one structure from atoms and from the predicted density; write its JSON.

    Parameters
    ----------
    case : Case
        What to run.
    seed : int
        Structure seed.
    force : bool
        Run again when the JSON exists.

    Returns
    -------
    dict or None
        The record written, None when skipped.
    """
    result = RESULTS / f"{case.name}_seed{seed}.json"
    if result.exists() and not force:
        print(f"skip {relative(str(result))} (exists)")
        return None
    if not (ROOT / case.model).exists():
        raise RuntimeError(f"no model {case.model}: python benchmarks/scf_start.py --train ...")
    atoms, recipe = case.system.build(seed)
    settings, kpoints = case.system.settings, case.system.kpoints
    grid = md.fft_grid(atoms, settings)
    text = md.pw_input(atoms, settings, kpoints, grid, case.system.kpoint_shift)
    conv_thr = settings.conv_thr_per_8_atoms * len(atoms) / 8
    folder = WORK / f"{case.name}_seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "atomic").mkdir(parents=True)
    (folder / "predicted").mkdir()
    print(f"{case.name} seed {seed}: {atoms.get_chemical_formula()}, grid {grid}", flush=True)
    atomic, atomic_wall, atomic_load = run_pw(folder / "atomic", text)
    print(f"  atomic start: {atomic['iterations'][0]} iterations, {atomic_wall:.1f} s", flush=True)
    (folder / "predicted" / "scf.in").write_text(with_startingpot(text))
    predict_load = [round(x, 2) for x in os.getloadavg()]
    predict_wall, predict_cpu, predict_log = predict(folder / "predicted", case)
    predicted, predicted_wall, predicted_load = run_pw(folder / "predicted", with_startingpot(text))
    print(
        f"  predicted start: {predicted['iterations'][0]} iterations, pw.x {predicted_wall:.1f} s"
        f" + dpcharge {predict_wall:.1f} s",
        flush=True,
    )
    for name, parsed in (("atomic", atomic), ("predicted", predicted)):
        if parsed["dense_grid"] != list(grid):
            raise RuntimeError(f"{name}: pw.x grid {parsed['dense_grid']} is not {grid}")
    difference = predicted["energies_Ry"][-1] - atomic["energies_Ry"][-1]
    record = {
        "system": case.name,
        "settings_of": case.system.name,
        "seed": seed,
        "formula": atoms.get_chemical_formula(),
        "natoms": len(atoms),
        "structure_recipe": recipe,
        "model": case.model,
        "magnetization_model": case.magnetization,
        "fft_grid": list(grid),
        "kpoints": md.kpoints_label(kpoints, case.system.kpoint_shift),
        "conv_thr_Ry": conv_thr,
        "mixing_beta": settings.mixing_beta,
        "iterations_atomic": atomic["iterations"][0],
        "iterations_predicted": predicted["iterations"][0],
        "saved_percent": round(100 * (1 - predicted["iterations"][0] / atomic["iterations"][0]), 1),
        "pw_wall_atomic_s": round(atomic_wall, 1),
        "pw_wall_predicted_s": round(predicted_wall, 1),
        "pw_reported_wall_atomic_s": atomic["pw_wall_s"],
        "pw_reported_wall_predicted_s": predicted["pw_wall_s"],
        "dpcharge_wall_s": round(predict_wall, 1),
        "dpcharge_cpu_s": round(predict_cpu, 1),
        **work_fields(atomic, predicted),
        "energy_atomic_Ry": atomic["energies_Ry"][-1],
        "energy_predicted_Ry": predicted["energies_Ry"][-1],
        "energy_difference_Ry": round(difference, 10),
        # within conv_thr, plus the last of the 8 decimals pw.x prints
        "energy_within_conv_thr": abs(difference) <= conv_thr + 1e-8,
        "pw_read_density_from_file": predicted["read_from_file"],
        "atomic_run_started_from_atoms": atomic["from_atoms"],
        "scf_accuracy_atomic_Ry": atomic["accuracy_Ry"],
        "scf_accuracy_predicted_Ry": predicted["accuracy_Ry"],
        "dpcharge_output": relative(predict_log).strip().splitlines()[-6:],
        "load_average_before": {
            "atomic": atomic_load,
            "dpcharge": predict_load,
            "predicted": predicted_load,
        },
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "pw_input_predicted": relative(with_startingpot(text)),
        "commands": [
            "nice -n 10 pw.x -in scf.in   # atomic start",
            f"nice -n 10 dpcharge reassemble {case.model} scf.in --format espresso --threads 1"
            + ("" if case.magnetization is None else f" --magnetization {case.magnetization}"),
            "nice -n 10 pw.x -in scf.in   # with startingpot = 'file'",
        ],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "script": "benchmarks/scf_start.py",
    }
    save(record, result)
    return record


def loose_first_diagonalisation(case: Case, seed: int, threshold: float) -> dict[str, object]:
    """Run the predicted start again with ``diago_thr_init = threshold``; add it to the JSON.

    From a file, pw.x 6.7 diagonalises the first time to ``ethr = 1e-5`` (``setup.f90``: "if
    you think that the starting potential is good do not spoil it with a lousy first
    diagonalization"), from atoms to 1e-2; ``diago_thr_init`` sets it. pw.x overwrites the
    density file with its converged density, so dpcharge predicts it again.

    Parameters
    ----------
    case : Case
        The system (its ``<system>_seed<seed>.json`` must exist).
    seed : int
        Structure seed.
    threshold : float
        ``diago_thr_init``.

    Returns
    -------
    dict
        What was added to the record under ``diago_thr_init_<threshold>``.
    """
    result = RESULTS / f"{case.name}_seed{seed}.json"
    record = json.loads(result.read_text())
    atoms, _ = case.system.build(seed)
    settings = case.system.settings
    grid = md.fft_grid(atoms, settings)
    text = md.pw_input(atoms, settings, case.system.kpoints, grid, case.system.kpoint_shift)
    text = with_startingpot(text).replace(
        "startingpot = 'file'\n", f"startingpot = 'file'\n  diago_thr_init = {threshold:.0e}\n"
    )
    folder = WORK / f"{case.name}_seed{seed}" / f"predicted_thr{threshold:.0e}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "scf.in").write_text(text)
    predict_wall, predict_cpu, _ = predict(folder, case)
    parsed, wall, load = run_pw(folder, text)
    variant = {
        "iterations": parsed["iterations"][0],
        "pw_wall_s": round(wall, 1),
        "pw_cpu_s": parsed["pw_cpu_s"],
        "h_psi_calls": parsed["h_psi_calls"],
        "dpcharge_wall_s": round(predict_wall, 1),
        "dpcharge_cpu_s": round(predict_cpu, 1),
        "energy_difference_Ry": round(parsed["energies_Ry"][-1] - record["energy_atomic_Ry"], 10),
        "pw_read_density_from_file": parsed["read_from_file"],
        "scf_accuracy_Ry": parsed["accuracy_Ry"],
        "load_average_before": load,
    }
    record[f"diago_thr_init_{threshold:.0e}"] = variant
    save(record, result)
    print(f"  {case.name} seed {seed}, diago_thr_init {threshold:.0e}: {variant}", flush=True)
    return variant


def work_fields(atomic: dict, predicted: dict) -> dict[str, object]:
    """Return pw.x's own CPU times and Hamiltonian applications of both runs."""
    return {
        "pw_cpu_atomic_s": atomic["pw_cpu_s"],
        "pw_cpu_predicted_s": predicted["pw_cpu_s"],
        "h_psi_calls_atomic": atomic["h_psi_calls"],
        "h_psi_calls_predicted": predicted["h_psi_calls"],
    }


def refresh() -> None:
    """Add `work_fields` to results written before they existed, from the kept pw.x outputs."""
    for path in sorted(RESULTS.glob("*_seed*.json")):
        record = json.loads(path.read_text())
        folder = WORK / path.stem
        if "iterations_atomic" not in record or not (folder / "predicted" / "pw.out").exists():
            continue
        atomic, predicted = (
            parse_pw((folder / name / "pw.out").read_text()) for name in ("atomic", "predicted")
        )
        if [atomic["iterations"][0], predicted["iterations"][0]] != [
            record["iterations_atomic"],
            record["iterations_predicted"],
        ]:
            raise RuntimeError(f"{folder} does not hold the runs of {path}")
        record.update(work_fields(atomic, predicted))
        save(record, path)


# ----------------------------------------------------------------------------- MD


def md_input(text: str, steps: int, extrapolation: str, dt: float) -> str:
    """Turn an SCF input into a pw.x MD input of ``steps`` steps of ``dt`` (Rydberg a.u.).

    Parameters
    ----------
    text : str
        SCF input from `make_densities.pw_input`.
    steps : int
        ``nstep``.
    extrapolation : str
        ``pot_extrapolation`` (``atomic`` is pw.x's default, or ``second_order``).
    dt : float
        Time step in Rydberg atomic units (pw.x's ``dt``; 1 a.u. = 4.8378e-17 s).

    Returns
    -------
    str
        The MD input (velocities start at zero; the rattled structure starts to move).
    """
    text, count = re.subn(r"calculation\s*=\s*'scf'", "calculation = 'md'", text, flags=re.I)
    if count != 1:
        raise ValueError("no calculation = 'scf' in the pw.x input")
    text = re.sub(
        r"(&control\s*\n)", rf"\1  nstep = {steps}\n  dt = {dt}\n", text, count=1, flags=re.I
    )
    line = f"  pot_extrapolation = '{extrapolation}'\n"
    if re.search(r"&ions\s*\n", text, flags=re.I):
        return re.sub(r"(&ions\s*\n)", rf"\1{line}", text, count=1, flags=re.I)
    return re.sub(r"(ATOMIC_SPECIES)", f"&ions\n{line}/\n" + r"\1", text, count=1)


def md_run(
    seed: int,
    steps: int,
    extrapolation: str,
    dt: float,
    atomic_every: int,
    force: bool,
    md_only: bool = False,
    predict_every: int = 1,
) -> None:
    """Run pw.x MD on Si64 ``seed``, then SCF from the prediction at each step's positions.

    Parameters
    ----------
    seed : int
        Si64 structure seed (make_densities.py's thermal snapshots).
    steps : int
        MD steps.
    extrapolation : str
        pw.x ``pot_extrapolation``.
    dt : float
        Time step (Rydberg a.u.).
    atomic_every : int
        Also run an SCF from atoms at every step that is a multiple of this (0: never; step 1
        of the MD starts from atoms anyway).
    force : bool
        Run again when the JSON exists.
    md_only : bool
        Only the MD (its iterations per step), no SCF at its positions.
    predict_every : int
        Run the SCF from the predicted density at steps that are multiples of this.
    """
    result = RESULTS / f"md_si64_seed{seed}_{extrapolation}.json"
    if result.exists() and not force:
        print(f"skip {relative(str(result))} (exists)")
        return
    case = CASES["si64"]
    atoms, recipe = case.system.build(seed)
    settings = case.system.settings
    grid = md.fft_grid(atoms, settings)
    text = md.pw_input(atoms, settings, None, grid)
    conv_thr = settings.conv_thr_per_8_atoms * len(atoms) / 8
    folder = WORK / f"md_si64_seed{seed}_{extrapolation}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "md").mkdir(parents=True)
    print(f"MD si64 seed {seed}, {steps} steps, pot_extrapolation {extrapolation}", flush=True)
    load = [round(x, 2) for x in os.getloadavg()]
    wall = timed_md(folder / "md", md_input(text, steps, extrapolation, dt))
    output = (folder / "md" / "pw.out").read_text()
    parsed = parse_pw(output)
    frames = read(folder / "md" / "pw.out", index=":", format="espresso-out")
    record: dict[str, object] = {
        "system": "si64",
        "seed": seed,
        "structure_recipe": recipe,
        "model": case.model,
        "md": {
            "steps": steps,
            "dt_Ry_au": dt,
            "dt_fs": round(dt * 4.8378e-2, 3),
            "pot_extrapolation": extrapolation,
            "wfc_extrapolation": "none (pw.x default: the previous step's wavefunctions)",
            "initial_velocities": "zero",
            "wall_s": round(wall, 1),
            "load_average_before": load,
            "iterations": parsed["iterations"],
            "pw_cpu_s": parsed["pw_cpu_s"],
            "energies_Ry": parsed["energies_Ry"],
            "frames_read": len(frames),
        },
        "conv_thr_Ry": conv_thr,
        "steps": [
            {"step": i + 1, "iterations_md_extrapolated": n, "energy_md_Ry": e}
            for i, (n, e) in enumerate(
                zip(parsed["iterations"], parsed["energies_Ry"], strict=True)
            )
        ]
        if md_only
        else [],
        "script": "benchmarks/scf_start.py",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }
    save(record, result)
    if md_only:
        print(f"  iterations per step: {parsed['iterations']}")
        return
    for index, (frame, iterations, energy) in enumerate(
        zip(frames, parsed["iterations"], parsed["energies_Ry"], strict=False)
    ):
        step_text = md.pw_input(frame, settings, None, grid)
        here = folder / f"step{index + 1:02d}"
        here.mkdir(parents=True)
        row: dict[str, object] = {
            "step": index + 1,
            "iterations_md_extrapolated": iterations,
            "energy_md_Ry": energy,
        }
        if (index + 1) % predict_every == 0:
            (here / "predicted").mkdir()
            (here / "predicted" / "scf.in").write_text(with_startingpot(step_text))
            predict_wall, predict_cpu, _ = predict(here / "predicted", case)
            predicted, predicted_wall, _ = run_pw(here / "predicted", with_startingpot(step_text))
            row.update(
                iterations_predicted=predicted["iterations"][0],
                pw_read_density_from_file=predicted["read_from_file"],
                energy_difference_Ry=round(predicted["energies_Ry"][-1] - energy, 10),
                pw_wall_predicted_s=round(predicted_wall, 1),
                dpcharge_wall_s=round(predict_wall, 1),
                dpcharge_cpu_s=round(predict_cpu, 1),
                pw_cpu_predicted_s=predicted["pw_cpu_s"],
                h_psi_calls_predicted=predicted["h_psi_calls"],
            )
        if index == 0:
            row["iterations_atomic"] = iterations  # the MD's first step starts from atoms
        elif atomic_every and (index + 1) % atomic_every == 0:
            (here / "atomic").mkdir()
            atomic, atomic_wall, _ = run_pw(here / "atomic", step_text)
            row.update(
                iterations_atomic=atomic["iterations"][0],
                energy_atomic_difference_Ry=round(atomic["energies_Ry"][-1] - energy, 10),
                pw_wall_atomic_s=round(atomic_wall, 1),
                pw_cpu_atomic_s=atomic["pw_cpu_s"],
                h_psi_calls_atomic=atomic["h_psi_calls"],
            )
        print(f"  step {index + 1}: {row}", flush=True)
        record["steps"].append(row)
        record["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        save(record, result)


def timed_md(folder: Path, text: str) -> float:
    """Run the MD input in ``folder`` (output ``pw.out``); return the wall time."""
    (folder / "md.in").write_text(text)
    wall, _ = timed(["pw.x", "-in", "md.in"], folder, folder / "pw.out")
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return wall


def delta_start(seed: int, extrapolation: str, steps: list[int], force: bool) -> None:
    """Start MD step k + 1 from step k's converged density plus the predicted change.

    The start ``rho_k + rho_pred(k + 1) - rho_pred(k)`` (in G space, both predictions scaled
    to the valence electrons, so the change holds none) is what pw.x's
    ``pot_extrapolation = 'atomic'`` does with the superposition of atomic densities in place
    of the predictions. For each k in ``steps``, at the positions of the MD of ``--md
    --md-extrapolation EXTRAPOLATION`` (run first): an SCF at step k from atoms (kept: its
    density and wavefunctions), then SCFs at step k + 1 from ``previous`` (``rho_k`` alone,
    as ``pot_extrapolation = 'none'``) and ``delta`` (the start above), both with
    ``startingwfc = 'file'`` (step k's wavefunctions, as pw.x's MD keeps them), and both
    again from pw.x's default start of the wavefunctions (``*_atomic_wfc``). Their
    iterations are set beside the MD's own at step k + 1; the model is ``si64input``'s.
    Writes ``benchmarks/results/scf_start/delta_si64_seed<seed>.json``.
    """
    import numpy as np

    from dpcharge.espresso import read_charge_density, write_charge_density_coefficients

    result = RESULTS / f"delta_si64_seed{seed}.json"
    if result.exists() and not force:
        print(f"skip {relative(str(result))} (exists)")
        return
    md_result = RESULTS / f"md_si64_seed{seed}_{extrapolation}.json"
    md_output = WORK / f"md_si64_seed{seed}_{extrapolation}" / "md" / "pw.out"
    if not md_output.exists() or not md_result.exists():
        raise SystemExit(f"no MD: run --md --md-seed {seed} --md-extrapolation {extrapolation}")
    md_iterations = json.loads(md_result.read_text())["md"]["iterations"]
    frames = read(md_output, index=":", format="espresso-out")
    case = CASES["si64input"]
    settings = case.system.settings
    grid = md.fft_grid(frames[0], settings)
    record: dict[str, object] = {
        "system": "si64",
        "seed": seed,
        "model": case.model,
        "md_pot_extrapolation": extrapolation,
        "conv_thr_Ry": settings.conv_thr_per_8_atoms * len(frames[0]) / 8,
        "pairs": [],
        "script": "benchmarks/scf_start.py",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }
    for k in steps:
        if k + 1 > len(frames):
            raise SystemExit(f"the MD has {len(frames)} steps: no step {k + 1}")
        texts = [md.pw_input(frames[i], settings, None, grid) for i in (k - 1, k)]
        here = WORK / f"delta_si64_seed{seed}" / f"step{k:02d}"
        shutil.rmtree(here, ignore_errors=True)
        for name in ("converged", "predicted_k", "predicted_next"):
            (here / name).mkdir(parents=True)
        converged, _, _ = run_pw(here / "converged", texts[0], keep_wavefunctions=True)
        densities, predict_cpu = {}, 0.0
        for name, text in (("predicted_k", texts[0]), ("predicted_next", texts[1])):
            (here / name / "scf.in").write_text(text)
            _, cpu, _ = predict(here / name, case)
            predict_cpu += cpu
            densities[name] = read_charge_density(here / name / "tmp" / "pw.save" / DENSITY)
        densities["converged"] = read_charge_density(
            here / "converged" / "tmp" / "pw.save" / DENSITY
        )
        miller, rho_k, header = densities["converged"]
        for name in ("predicted_k", "predicted_next"):
            if not np.array_equal(densities[name][0], miller):
                raise RuntimeError(f"{name}: other G vectors than pw.x's")
        change = densities["predicted_next"][1] - densities["predicted_k"][1]
        row: dict[str, object] = {
            "step": k + 1,
            "iterations_md": md_iterations[k],
            "iterations_converged_step_k_from_atoms": converged["iterations"][0],
            "dpcharge_cpu_s_both_predictions": round(predict_cpu, 1),
            # the L2 norm of the change's coefficients rho(G) (e/bohr^3): how far it moved
            "predicted_change_norm": float(np.sqrt(np.sum(np.abs(change) ** 2))),
        }
        variants = [
            (f"{name}{'' if wavefunctions else '_atomic_wfc'}", start, wavefunctions)
            for wavefunctions in (True, False)
            for name, start in (("previous", rho_k), ("delta", rho_k + change))
        ]
        for name, start, wavefunctions in variants:
            (here / name).mkdir(exist_ok=True)
            shutil.copytree(here / "converged" / "tmp", here / name / "tmp")
            write_charge_density_coefficients(
                here / name / "tmp" / "pw.save" / DENSITY, miller, start, header
            )
            text = with_startingpot(texts[1], wavefunctions=wavefunctions)
            parsed, wall, _ = run_pw(here / name, text)
            row.update(
                {
                    f"iterations_{name}": parsed["iterations"][0],
                    f"pw_cpu_{name}_s": parsed["pw_cpu_s"],
                    f"pw_wall_{name}_s": round(wall, 1),
                    f"h_psi_calls_{name}": parsed["h_psi_calls"],
                    f"energy_{name}_Ry": parsed["energies_Ry"][-1],
                    f"read_from_file_{name}": parsed["read_from_file"],
                    f"wavefunctions_from_file_{name}": WFC_FROM_FILE
                    in (here / name / "pw.out").read_text(),
                    f"scf_accuracy_{name}_Ry": parsed["accuracy_Ry"],
                }
            )
        print(f"  step {k + 1}: {row}", flush=True)
        record["pairs"].append(row)
        save(record, result)


def displaced_start(case: Case, seed: int, distance: float, force: bool) -> None:
    """Start pw.x on a structure with its first atom displaced from the previous one's density.

    A finite-displacement step (phonons): pw.x converges structure ``seed`` from atoms
    (``previous``), then the same structure with atom 0 moved by ``distance`` Å along x runs
    from atoms (``atomic``), from the previous converged density alone (``restart``), and
    from ``dpcharge reassemble MODEL scf.in --format espresso --previous previous.in``
    (``delta``: the previous density plus the predicted change), each with pw.x's default
    start of the wavefunctions. Writes
    ``benchmarks/results/scf_start/displaced_<case>_seed<seed>.json``.
    """
    result = RESULTS / f"displaced_{case.name}_seed{seed}.json"
    if result.exists() and not force:
        print(f"skip {relative(str(result))} (exists)")
        return
    atoms, recipe = case.system.build(seed)
    settings, kpoints, shift = case.system.settings, case.system.kpoints, case.system.kpoint_shift
    grid = md.fft_grid(atoms, settings)
    moved = atoms.copy()
    moved.positions[0, 0] += distance
    texts = [md.pw_input(a, settings, kpoints, grid, shift) for a in (atoms, moved)]
    folder = WORK / f"displaced_{case.name}_seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("previous", "atomic", "restart", "delta"):
        (folder / name).mkdir(parents=True)
    print(f"{case.name} seed {seed}, atom 0 moved by {distance} Å", flush=True)
    previous, _, _ = run_pw(folder / "previous", texts[0])
    record: dict[str, object] = {
        "system": case.name,
        "seed": seed,
        "structure_recipe": recipe,
        "displacement_A": [distance, 0.0, 0.0],
        "displaced_atom": 0,
        "model": case.model,
        "conv_thr_Ry": settings.conv_thr_per_8_atoms * len(atoms) / 8,
        "kpoints": md.kpoints_label(kpoints, shift),
        "iterations_previous_from_atoms": previous["iterations"][0],
        "script": "benchmarks/scf_start.py",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }
    shutil.copytree(folder / "previous" / "tmp", folder / "restart" / "tmp")
    previous_input, count = re.subn(
        r"outdir\s*=\s*'\./tmp'", "outdir = '../previous/tmp'", texts[0]
    )
    if count != 1:
        raise RuntimeError("no outdir = './tmp' in the pw.x input")
    (folder / "delta" / "previous.in").write_text(previous_input)
    (folder / "delta" / "scf.in").write_text(with_startingpot(texts[1]))
    command = [tool("dpcharge"), "reassemble", str(ROOT / case.model), "scf.in"]
    command += ["--format", "espresso", "--previous", "previous.in", "--threads", "1"]
    predict_wall, predict_cpu = timed(command, folder / "delta", folder / "delta" / "dpcharge.log")
    record.update(dpcharge_wall_s=round(predict_wall, 1), dpcharge_cpu_s=round(predict_cpu, 1))
    for name, text in (
        ("atomic", texts[1]),
        ("restart", with_startingpot(texts[1])),
        ("delta", with_startingpot(texts[1])),
    ):
        parsed, wall, load = run_pw(folder / name, text)
        record[name] = {
            "iterations": parsed["iterations"][0],
            "pw_cpu_s": parsed["pw_cpu_s"],
            "pw_wall_s": round(wall, 1),
            "h_psi_calls": parsed["h_psi_calls"],
            "energy_Ry": parsed["energies_Ry"][-1],
            "read_from_file": parsed["read_from_file"],
            "scf_accuracy_Ry": parsed["accuracy_Ry"],
            "load_average_before": load,
        }
        print(f"  {name}: {parsed['iterations'][0]} iterations, pw.x CPU {parsed['pw_cpu_s']} s")
        save(record, result)
    record["dpcharge_output"] = relative((folder / "delta" / "dpcharge.log").read_text())
    record["dpcharge_output"] = record["dpcharge_output"].strip().splitlines()[-4:]
    save(record, result)


# ----------------------------------------------------------------------------- training


def train(name: str) -> None:
    """Train the model of ``name`` (alslab, almg32) as ``benchmarks/accuracy.py`` does.

    One structure (seed 1), 1e5 points, 20,000 steps, start_lr 3e-3, the fitting's baseline
    ``{"basis": 8}``, one thread; folder ``benchmarks/runs/scf_<name>/``, its result JSON in
    ``benchmarks/runs/scf_results/`` (not committed).
    """
    import accuracy

    accuracy.RESULTS = accuracy.RUNS / "scf_results"
    settings = (("learning_rate.start_lr", 3e-3), ("model.fitting_net.baseline", {"basis": 8}))
    run = accuracy.Run(
        f"scf_{name}", "scf_start", accuracy.SYSTEMS[name], (1,), 100_000, settings, 20_000
    )
    print(accuracy.perform(run, 20_000, 1))


# ----------------------------------------------------------------------------- report


def table() -> str:
    """Return the Markdown tables of every result in `RESULTS`."""
    lines = [
        "| system | structure | iterations atomic → predicted | saved | pw.x atomic (s) "
        "| pw.x predicted (s) | dpcharge (s) | predicted + dpcharge (s) "
        "| pw.x CPU atomic → predicted (s) | h_psi calls atomic → predicted | ΔE (Ry) "
        "| read from file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*_seed*.json"))]
    for r in (r for r in records if "iterations_atomic" in r):
        total = r["pw_wall_predicted_s"] + r["dpcharge_wall_s"]
        lines.append(
            f"| {r['system']} | seed {r['seed']} ({r['formula']}) | {r['iterations_atomic']} → "
            f"{r['iterations_predicted']} | {r['saved_percent']:.0f} % | "
            f"{r['pw_wall_atomic_s']:.0f} | {r['pw_wall_predicted_s']:.0f} | "
            f"{r['dpcharge_wall_s']:.0f} | {total:.0f} | "
            f"{r.get('pw_cpu_atomic_s', 0):.0f} → {r.get('pw_cpu_predicted_s', 0):.0f} | "
            f"{r.get('h_psi_calls_atomic')} → {r.get('h_psi_calls_predicted')} | "
            f"{r['energy_difference_Ry']:+.1e} "
            f"(conv_thr {r['conv_thr_Ry']:.0e}) | "
            f"{'yes' if r['pw_read_density_from_file'] else 'NO'} |"
        )
    for path in sorted(RESULTS.glob("md_*.json")):
        r = json.loads(path.read_text())
        lines += [
            "",
            f"MD: Si64 seed {r['seed']}, pot_extrapolation = '{r['md']['pot_extrapolation']}', "
            f"dt {r['md']['dt_fs']} fs, {len(r['steps'])} steps",
            "",
            "| step | pw.x MD (extrapolated) | predicted start | atomic start "
            "| ΔE predicted − MD (Ry) |",
            "|---|---|---|---|---|",
        ]
        for s in r["steps"]:
            atomic = s.get("iterations_atomic", "")
            difference = f"{s['energy_difference_Ry']:+.1e}" if "energy_difference_Ry" in s else ""
            lines.append(
                f"| {s['step']} | {s['iterations_md_extrapolated']} "
                f"| {s.get('iterations_predicted', '')} "
                f"| {atomic} | {difference} |"
            )
    for path in sorted(RESULTS.glob("displaced_*.json")):
        r = json.loads(path.read_text())
        lines += [
            "",
            f"{r['system']} seed {r['seed']}, atom {r['displaced_atom']} moved by "
            f"{r['displacement_A']} Å; dpcharge {r['dpcharge_cpu_s']:.0f} CPU s",
            "",
            "| start | iterations | pw.x CPU (s) | h_psi calls | first estimated accuracy (Ry) "
            "| energy (Ry) |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("atomic", "restart", "delta"):
            run = r[name]
            lines.append(
                f"| {name} | {run['iterations']} | {run['pw_cpu_s']:.0f} | {run['h_psi_calls']} "
                f"| {run['scf_accuracy_Ry'][0]:.1e} | {run['energy_Ry']:.8f} |"
            )
    for path in sorted(RESULTS.glob("delta_*.json")):
        r = json.loads(path.read_text())
        lines += [
            "",
            f"Si64 seed {r['seed']}: step k + 1 of the MD ('{r['md_pot_extrapolation']}') "
            "from step k's converged density, with step k's wavefunctions",
            "",
            "| step | pw.x MD | previous density | previous + predicted change "
            "| pw.x CPU previous → delta (s) | h_psi previous → delta | ΔE delta − previous (Ry) "
            "| the same, atomic wavefunctions: previous → delta | pw.x CPU (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in r["pairs"]:
            atomic_wfc = "| | |"
            if "iterations_delta_atomic_wfc" in s:
                atomic_wfc = (
                    f"| {s['iterations_previous_atomic_wfc']} → {s['iterations_delta_atomic_wfc']} "
                    f"| {s['pw_cpu_previous_atomic_wfc_s']:.0f} → "
                    f"{s['pw_cpu_delta_atomic_wfc_s']:.0f} |"
                )
            lines.append(
                f"| {s['step']} | {s['iterations_md']} | {s['iterations_previous']} "
                f"| {s['iterations_delta']} | {s['pw_cpu_previous_s']:.0f} → "
                f"{s['pw_cpu_delta_s']:.0f} | {s['h_psi_calls_previous']} → "
                f"{s['h_psi_calls_delta']} | "
                f"{s['energy_delta_Ry'] - s['energy_previous_Ry']:+.1e} " + atomic_wfc
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", choices=list(CASES), default=[])
    parser.add_argument("--seeds", type=int, nargs="+", help="structure seeds (default: each's)")
    parser.add_argument("--train", choices=("alslab", "almg32"), help="train this model only")
    parser.add_argument("--md", action="store_true", help="the MD experiment")
    parser.add_argument("--md-seed", type=int, default=2, help="Si64 seed of the MD (2)")
    parser.add_argument("--md-steps", type=int, default=10)
    parser.add_argument("--md-dt", type=float, default=40.0, help="Rydberg a.u. (40 = 1.94 fs)")
    parser.add_argument(
        "--md-extrapolation", choices=("atomic", "second_order", "first_order"), default="atomic"
    )
    parser.add_argument(
        "--md-atomic-every",
        type=int,
        default=0,
        help="SCF from atoms at steps that are multiples of N",
    )
    parser.add_argument(
        "--md-predict-every", type=int, default=1, help="predicted start every N steps (1)"
    )
    parser.add_argument(
        "--md-only", action="store_true", help="only the MD, no SCF at its positions"
    )
    parser.add_argument(
        "--displace",
        type=float,
        metavar="Å",
        help="with --systems: the first atom of each seed moved by this along x, started "
        "from the undisplaced structure's density plus the predicted change",
    )
    parser.add_argument(
        "--delta-steps",
        type=int,
        nargs="+",
        help="after the MD: start step k + 1 from step k's density plus the predicted change",
    )
    parser.add_argument(
        "--diago-thr-init",
        type=float,
        help="only run the predicted start again with this diago_thr_init (after the others)",
    )
    parser.add_argument("--force", action="store_true", help="run again when results exist")
    parser.add_argument(
        "--refresh", action="store_true", help="add pw.x CPU times and h_psi calls to old results"
    )
    parser.add_argument("--table", action="store_true", help="print the Markdown tables")
    args = parser.parse_args(argv)
    if args.refresh:
        refresh()
    if args.table:
        print(table())
        return 0
    if args.train:
        train(args.train)
        return 0
    for name in args.systems:
        for seed in args.seeds or CASES[name].seeds:
            if args.displace is not None:
                displaced_start(CASES[name], seed, args.displace, args.force)
            elif args.diago_thr_init is not None:
                loose_first_diagonalisation(CASES[name], seed, args.diago_thr_init)
            else:
                start_both(CASES[name], seed, args.force)
    if args.md:
        md_run(
            args.md_seed,
            args.md_steps,
            args.md_extrapolation,
            args.md_dt,
            args.md_atomic_every,
            args.force,
            args.md_only,
            args.md_predict_every,
        )
    if args.delta_steps:
        delta_start(args.md_seed, args.md_extrapolation, args.delta_steps, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
