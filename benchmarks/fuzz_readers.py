"""Fuzz dpcharge's file readers with mutations of real VASP files.

Each case takes a real file (tests/data, ../shared/data/vasp, ase's CHG test file,
a POSCAR of the real Si8 structure), mutates it once (cut at a byte, flip a byte,
delete or duplicate a line, change a count by one, insert a word, corrupt or cut
its gzip form) and reads it with `read_density` or `read_structures`. The reader
must either raise `InputError` or return what the original file gives. Two kinds
of edit change values in a form no reader can tell from a real file (a digit or
sign replaced by another, a blank turned into a digit, a letter of an element name
replaced by another letter: Si to Li); they may read with other values and are
counted apart. Any other exception is an escape, saved with a
reproducer::

    python benchmarks/fuzz_readers.py --cases 100000 --escapes fuzz_escapes

``tests/test_fuzz.py`` drives the same mutations with hypothesis.
"""

from __future__ import annotations

import argparse
import gzip
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import ase
import numpy as np

from dpcharge.chgcar import read_density
from dpcharge.errors import InputError
from dpcharge.structures import read_structures

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "tests/data/CHGCAR_Al4_lda_qe.gz",
    ROOT / "tests/data/vaspy_CoMonolayer_CHGCAR_spin_2",
    Path(ase.__file__).parent / "test/testdata/vasp/Li/CHG",
    ROOT.parent / "shared/data/vasp/vaspy_CoMonolayer_CHGCAR_spin",
]
"""Small real volumetric files: a few milliseconds per read."""

KINDS = (
    "cut",
    "flip",
    "delete_line",
    "duplicate_line",
    "change_count",
    "insert_word",
    "gzip_corrupt",
    "gzip_cut",
)
"""Mutations, each applied once per case."""

WORDS = (b"abc", b"NaN", b"inf", b"1.0E", b"\xc2\xb2", b"\x00", b"-", b"1,5", b"0x10", b"\n")
"""Inserted by ``insert_word``: non-numbers, non-finite values, broken numbers, binary bytes."""

_DIGITS = b"0123456789+-"


def load_sources() -> list[tuple[str, bytes]]:
    """Return the real files (decompressed) and a POSCAR of the real Si8 structure."""
    sources = []
    for path in SOURCES:
        if path.is_file():
            raw = path.read_bytes()
            sources.append((path.name, gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw))
    text = gzip.decompress((ROOT / "tests/data/CHGCAR_Si8_qe.gz").read_bytes())
    sources.append(("POSCAR_Si8", text[: text.index(b"\n\n") + 1]))
    return sources


def mutate(data: bytes, kind: str, where: float, value: int) -> bytes:
    """Return ``data`` mutated once.

    Parameters
    ----------
    data
        The file's (uncompressed) bytes.
    kind
        One of `KINDS`.
    where
        Position of the mutation as a fraction of the file (bytes or lines), in [0, 1).
    value
        A byte (0-255) for ``flip``, a word index for ``insert_word``, a sign for
        ``change_count``.
    """
    at = min(int(where * len(data)), len(data) - 1)
    lines = data.split(b"\n")
    line = min(int(where * len(lines)), len(lines) - 1)
    if kind == "cut":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([value]) + data[at + 1 :]
    if kind == "delete_line":
        return b"\n".join(lines[:line] + lines[line + 1 :])
    if kind == "duplicate_line":
        return b"\n".join(lines[: line + 1] + lines[line:])
    if kind == "change_count":
        integers = [m for m in re.finditer(rb"(?<![\d.Ee+-])\d+(?![\d.Ee])", data)]
        if not integers:
            return data
        match = integers[min(int(where * len(integers)), len(integers) - 1)]
        changed = str(max(0, int(match.group()) + (1 if value % 2 else -1))).encode()
        return data[: match.start()] + changed + data[match.end() :]
    if kind == "insert_word":
        return data[:at] + b" " + WORDS[value % len(WORDS)] + b" " + data[at:]
    compressed = bytearray(gzip.compress(data, mtime=0))
    at = 10 + min(int(where * (len(compressed) - 10)), len(compressed) - 11)
    if kind == "gzip_corrupt":
        compressed[at] ^= value or 1
        return bytes(compressed)
    if kind == "gzip_cut":
        return bytes(compressed[:at])
    raise ValueError(f"unknown mutation {kind}")


def undetectable(original: bytes, mutated: bytes, kind: str) -> bool:
    """Whether a mutation may change values in a form no reader can tell from a real file.

    That is a single byte flipped from a digit, sign or blank to a digit or sign
    (``7.31`` to ``7.81``, ``E+01`` to ``E-01``, `` 7.31`` to ``17.31``), or from
    a letter to a letter (``Si`` to ``Li``).
    """
    if kind != "flip" or len(original) != len(mutated):
        return False
    at = next((i for i, (a, b) in enumerate(zip(original, mutated, strict=True)) if a != b), None)
    if at is None:
        return False
    if chr(original[at]).isalpha() and chr(mutated[at]).isalpha():
        return True
    return mutated[at] in _DIGITS and (original[at] in _DIGITS or original[at] in b" \t")


def read_volumetric(path: Path) -> tuple:
    """Read with `read_density`; return what must equal the original's."""
    atoms, density = read_density(path)
    return atoms.get_chemical_symbols(), atoms.cell.array, atoms.positions, density


def read_structure_file(path: Path) -> tuple:
    """Read with `read_structures`; return what must equal the original's.

    The density is left out: a volumetric file cut right after its header is a
    POSCAR, byte for byte, and reads as the same structure without a density.
    """
    structures, _ = read_structures(path)
    atoms = structures[0]
    return atoms.get_chemical_symbols(), atoms.cell.array, atoms.positions


READERS: dict[str, Callable[[Path], tuple]] = {
    "read_density": read_volumetric,
    "read_structures": read_structure_file,
}


def same(first: tuple, second: tuple) -> bool:
    """Whether two reads give the same structure and values."""
    return all(
        a == b if isinstance(a, list) else a is b or np.array_equal(a, b)
        for a, b in zip(first, second, strict=True)
    )


def message_class(error: InputError, path: Path) -> str:
    """Return an error message without its file name, numbers and quoted text."""
    text = str(error).replace(f"{path}: ", "").replace(str(path), "FILE")
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\([^)]*\)", "...", text)
    return re.sub(r"\d+(x\d+)*", "N", text)[:100]


def run_case(folder: Path, reader: str, source: bytes, expected, kind, where, value) -> str:
    """Run one case; return its outcome: 'read', 'error: <class>', 'changed', 'wrong', 'escape'."""
    mutated = mutate(source, kind, where, value)
    path = folder / "CHGCAR"
    path.write_bytes(mutated)
    try:
        result = READERS[reader](path)
    except InputError as error:
        return "error: " + message_class(error, path)
    except Exception as error:  # an escape: what the fuzzing looks for
        return f"escape: {type(error).__name__}: {error}"
    if expected is not None and same(result, expected):
        return "read"
    return "changed" if undetectable(source, mutated, kind) else "wrong"


def main() -> None:
    """Run the cases and print the counts of each outcome."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--escapes", type=Path, default=Path("fuzz_escapes"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sources = load_sources()
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        expected = {}
        for name, data in sources:
            (Path(folder) / "CHGCAR").write_bytes(data)
            for reader in READERS:
                try:
                    expected[name, reader] = READERS[reader](Path(folder) / "CHGCAR")
                except InputError:
                    expected[name, reader] = None  # a POSCAR has no density
        for case in range(args.cases):
            name, data = sources[rng.integers(len(sources))]
            reader = list(READERS)[rng.integers(len(READERS))]
            kind = KINDS[rng.integers(len(KINDS))]
            where, value = float(rng.random()), int(rng.integers(256))
            outcome = run_case(
                Path(folder), reader, data, expected[name, reader], kind, where, value
            )
            outcomes[outcome.split(":")[0] if outcome.startswith("escape") else outcome] += 1
            if outcome.startswith(("escape", "wrong")):
                args.escapes.mkdir(exist_ok=True)
                (args.escapes / f"case{case}").write_bytes(mutate(data, kind, where, value))
                (args.escapes / f"case{case}.txt").write_text(
                    f"{reader} {name} {kind} where={where!r} value={value}\n{outcome}\n"
                )
    seconds = time.perf_counter() - start
    errors = sum(n for outcome, n in outcomes.items() if outcome.startswith("error"))
    print(f"cases run: {args.cases} in {seconds:.0f} s (seed {args.seed})")
    print(f"read with the original values: {outcomes['read']}")
    print(f"read with changed values, undetectable one-byte edits: {outcomes['changed']}")
    print(f"InputError: {errors}")
    for outcome, n in sorted(outcomes.items(), key=lambda item: -item[1]):
        if outcome.startswith("error"):
            print(f"  {n:7d}  {outcome[7:]}")
    print(f"escapes (other exceptions): {outcomes['escape']}")
    print(f"wrong values read silently: {outcomes['wrong']}")
    if outcomes["escape"] or outcomes["wrong"]:
        print(f"reproducers in {args.escapes}/")


if __name__ == "__main__":
    main()
