"""Property tests of the file readers on mutated real files (hypothesis, derandomized).

The mutations are those of ``benchmarks/fuzz_readers.py``, which runs them for
longer. Every mutated file must read to the original's values or raise
`InputError`; only one-byte edits that keep a valid form (a digit for a digit)
may read to other values.
"""

import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from fuzz_readers import KINDS, READERS, load_sources, run_case

SOURCES = load_sources()
FOLDER = Path(tempfile.mkdtemp(prefix="dpcharge_fuzz_"))


def originals(reader):
    """What each unmutated source reads to (None when the reader refuses it: a POSCAR)."""
    expected = {}
    for name, data in SOURCES:
        (FOLDER / "CHGCAR").write_bytes(data)
        try:
            expected[name] = READERS[reader](FOLDER / "CHGCAR")
        except Exception:
            expected[name] = None
    return expected


@pytest.mark.parametrize(("reader", "cases"), [("read_density", 1500), ("read_structures", 700)])
def test_mutated_real_files_read_right_or_raise_input_error(reader, cases):
    expected = originals(reader)
    assert sum(value is None for value in expected.values()) <= 1  # the POSCAR has no density

    @settings(
        max_examples=cases,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        source=st.sampled_from(SOURCES),
        kind=st.sampled_from(KINDS),
        where=st.floats(0, 1, exclude_max=True),
        value=st.integers(0, 255),
    )
    def check(source, kind, where, value):
        name, data = source
        outcome = run_case(FOLDER, reader, data, expected[name], kind, where, value)
        assert outcome in ("read", "changed") or outcome.startswith("error:"), outcome

    check()
