"""Tables and figures of the accuracy benchmarks (``python benchmarks/accuracy.py --report``).

Reads ``benchmarks/results/*.json`` (written by ``accuracy.py``) and writes
``docs/benchmarks/results.md`` with one table per experiment, the learning-curve and
training-curve figures, and copies of the ``dpcharge test --plots`` figures of the best training
of each system and of every size-transfer test.
Densities and errors are in e/Å^3, NMAE in %, electron counts in e.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "| run | training data | points | steps | train wall / CPU | test | MAE | RMSE | NMAE % | R² "
    "| max err | e pred / DFT |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def load(results: Path) -> list[dict]:
    """Return every result, in the order of their run names."""
    return [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]


def row(result: dict, role: str) -> str:
    """Format one test of one run as a Markdown table row."""
    test = result["tests"][role]
    files = result["train_files"]
    data = files[0] if len(files) == 1 else f"{len(files)} structures"
    return (
        f"| {result['run']} | {data} | {result['points']:,} | {result['steps']:,} "
        f"| {result['train_wall_s'] / 60:.1f} / {result['train_cpu_s'] / 60:.1f} min "
        f"| {test['path']} ({test['points']:,} points) | {test['mae']:.2e} | {test['rmse']:.2e} "
        f"| {test['nmae']:.2f} | {test['r2']:.5f} | {test['max_error']:.3f} "
        f"| {test['electrons_predicted']:.2f} / {test['electrons_reference']:.2f} |"
    )


def summary(results: list[dict], systems: list[str]) -> list[str]:
    """Return the headline table: per system (in this order), the run with the lowest MAE."""
    lines = [
        "| system | paper MAE | our MAE | ratio | NMAE % | R² | training data | steps "
        "| train CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system in [name for name in systems if any(r["system"] == name for r in results)]:
        best = min(
            (r for r in results if r["system"] == system), key=lambda r: r["tests"]["unseen"]["mae"]
        )
        test = best["tests"]["unseen"]
        files = len(best["train_files"])
        data = f"{best['points']:,} points of {files} structure{'s' if files > 1 else ''}"
        lines.append(
            f"| {best['label']} | {best['paper_mae']:.1e} | {test['mae']:.2e} "
            f"| {test['mae'] / best['paper_mae']:.1f} | {test['nmae']:.2f} | {test['r2']:.5f} "
            f"| {data} | {best['steps']:,} | {best['train_cpu_s'] / 60:.0f} min |"
        )
    return lines


def learning_curve(results: list[dict], path: Path) -> None:
    """Plot the Si test MAE against training points, one line per number of structures."""
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.subplots()
    for count in sorted({len(r["train_files"]) for r in results}):
        runs = sorted(
            (r for r in results if len(r["train_files"]) == count), key=lambda r: r["points"]
        )
        label = f"{count} structure{'s' if count > 1 else ''}"
        points = [r["points"] for r in runs]
        axes.plot(points, [r["tests"]["unseen"]["mae"] for r in runs], "o-", label=label)
    axes.axhline(results[0]["paper_mae"], color="k", ls="--", lw=1, label="paper, 1 structure")
    axes.set(xscale="log", yscale="log", xlabel="training grid points", ylabel="test MAE (e/Å$^3$)")
    axes.set_title("Si64, unseen structure, whole grid", fontsize=10)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)


def structures_curve(results: list[dict], path: Path) -> None:
    """Plot the test MAE against the number of training structures, one line per system."""
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.subplots()
    for system in sorted({r["system"] for r in results}):
        runs = sorted(
            (r for r in results if r["system"] == system), key=lambda r: len(r["train_files"])
        )
        line = axes.plot(
            [len(r["train_files"]) for r in runs],
            [r["tests"]["unseen"]["mae"] for r in runs],
            "o-",
            label=runs[0]["label"],
        )
        axes.axhline(runs[0]["paper_mae"], color=line[0].get_color(), ls="--", lw=1)
    axes.set(
        yscale="log", xlabel="training structures (1e5 points each)", ylabel="test MAE (e/Å$^3$)"
    )
    axes.set_title("unseen structure, whole grid (dashed: paper)", fontsize=10)
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def training_curves(results: list[dict], path: Path) -> None:
    """Plot the training MAE (``lcurve.out``, one 200-point batch) against the step, per run."""
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.subplots()
    for result in results:
        curve = result["training_curve"]
        unseen = result["tests"]["unseen"]["mae"]
        label = f"{result['run']} (unseen {unseen:.2e})"
        axes.plot(curve["step"][1:], curve["mae"][1:], lw=1, label=label)
    axes.set(xscale="log", yscale="log", xlabel="training step", ylabel="training MAE (e/Å$^3$)")
    axes.set_title("one 200-point training batch per point", fontsize=10)
    axes.legend(fontsize=6)
    figure.savefig(path, dpi=120)


def write_report(results_dir: Path, docs: Path, systems: list[str]) -> None:
    """Write ``results.md``, the curves and copies of the test figures into ``docs``.

    ``systems`` names the systems in the order of the headline table.
    """
    results = [r for r in load(results_dir) if "unseen" in r["tests"]]
    docs.mkdir(parents=True, exist_ok=True)
    si = [r for r in results if r["experiment"] == "si"]
    by_structures = [r for r in results if r["experiment"] == "structures"]
    lines = [
        "# Accuracy benchmark results (generated by `benchmarks/accuracy.py --report`)",
        "",
        "Errors over every grid point of a structure none of the training data came from;",
        "MAE, RMSE and max err in e/Å^3. Training wall and CPU time on the shared 2-core machine.",
        "",
        "## Best run of each system",
        "",
        *summary(results, systems),
        "",
    ]
    if si:
        learning_curve(si, docs / "si_learning_curve.png")
        lines += ["## One-shot crystalline Si", "", "![](si_learning_curve.png)", "", COLUMNS]
        lines += [row(r, "unseen") for r in si] + [""]
    if by_structures:
        structures_curve(by_structures, docs / "structures.png")
        lines += ["## Training structures", "", "![](structures.png)", "", COLUMNS]
        lines += [row(r, "unseen") for r in by_structures] + [""]
    tuning = [r for r in results if r["experiment"] == "tuning"]
    if tuning:
        # results written before the curve was kept in them have none
        training_curves([r for r in results if "training_curve" in r], docs / "training_curves.png")
        lines += ["## Other settings (one structure, 1e5 points)", "", "![](training_curves.png)"]
        lines += ["", COLUMNS]
        for result in tuning:
            changes = ", ".join(f"{key} = {value}" for key, value in result["settings"].items())
            named = f"{result['run']} ({changes or 'start_lr 1e-3, as the paper'})"
            lines += [row(result, "unseen").replace(f"| {result['run']} |", f"| {named} |", 1)]
        lines += [""]
    transfer = [r for r in results if "large" in r["tests"]]
    if transfer:
        lines += ["## Size transfer", "", COLUMNS]
        lines += [row(r, role) for r in transfer for role in ("unseen", "large")] + [""]
    figures = docs / "figures"
    figures.mkdir(exist_ok=True)
    lines += ["## Figures of `dpcharge test --plots`", ""]
    for result in results:
        if not best_or_large(result, results):
            continue
        for role, test in result["tests"].items():
            stem = Path(test["path"]).name.removesuffix(".gz")
            links = []
            for kind in ("parity", "errors", "slice", "line"):
                source = (
                    ROOT / "benchmarks" / "runs" / result["run"] / "plots" / f"{stem}_{kind}.png"
                )
                target = f"{result['run']}_{stem}_{kind}.png"
                if source.exists():
                    compress(source, figures / target)
                if (figures / target).exists():  # kept from an earlier report if not re-run
                    links.append(f"[{kind}](figures/{target})")
            if links:  # none when the run's folder is gone and no earlier copy was kept
                lines.append(f"- {result['run']}, {role} ({test['path']}): {' '.join(links)}")
    (docs / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {docs / 'results.md'}")


def compress(source: Path, target: Path) -> None:
    """Copy a PNG figure as a 256-colour palette PNG (a quarter of the size, same look)."""
    with Image.open(source) as image:
        image.convert("RGB").quantize(256).save(target, optimize=True)


def best_or_large(result: dict, results: list[dict]) -> bool:
    """Whether a run has the lowest unseen-structure MAE of its system or tests a larger cell."""
    same = [r["tests"]["unseen"]["mae"] for r in results if r["system"] == result["system"]]
    return result["tests"]["unseen"]["mae"] == min(same) or "large" in result["tests"]
