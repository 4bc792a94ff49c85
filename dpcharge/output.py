"""Where results go: files written whole or not at all, and never over what must stay.

Every file dpcharge writes goes through a temporary file in the target folder
and a rename, so an interrupted or failed run leaves no half-written file. An
output that already exists is refused unless the caller allows replacing it,
and an output that is one of the run's inputs is refused always. Folders
(``dpcharge convert``) are built in a hidden staging folder beside the target
and moved into place at the end; an existing folder is replaced only when it
carries the marker file that dpcharge leaves in the folders it writes.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dpcharge.errors import InputError

MARKER = "dpcharge.json"
"""File that marks a folder as written by dpcharge (and records how)."""


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    replace: bool = False,
    parameter: str = "output",
    new_folders: bool = False,
) -> Path:
    """Check that a file can be written at ``path`` before any slow work starts.

    Parameters
    ----------
    path
        The output file.
    inputs
        The run's input files; the output may be none of them.
    replace
        Allow replacing an existing output file.
    parameter
        Name of the parameter that gave ``path``, for the error message.
    new_folders
        The writer creates missing folders on the way (e.g. pw.x's
        ``<prefix>.save``): the nearest existing one must be writable.

    Returns
    -------
    pathlib.Path
        The output path.
    """
    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise InputError(f"{path} is also an input: it is never overwritten", parameter)
    if path.is_dir():
        raise InputError(f"{path} is a folder; name a file", parameter)
    if path.exists() and not replace:
        raise InputError(f"{path} already exists; allow replacing it or name another", parameter)
    folder = resolved.parent
    while new_folders and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe_folder(folder, parameter)
    return path


def probe_folder(folder: Path, parameter: str) -> None:
    """Refuse a folder that is missing or where no file can be created (read-only, full)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: the folder does not exist", parameter)
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise InputError(f"{folder}: cannot write there ({error.strerror})", parameter) from None


def write_atomically(
    path: str | os.PathLike, write: Callable[[io.TextIOBase], None], binary: bool = False
) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place.

    Parameters
    ----------
    path
        The file to write.
    write
        Called with the open temporary file (text, or bytes with ``binary``).
    binary
        Open the temporary file in binary mode.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as ``.npy`` (e.g. a density in e/Å^3) through a temporary file."""
    write_atomically(path, lambda stream: np.save(stream, array), binary=True)


def check_output_folder(folder: str | os.PathLike, replace: bool = False) -> Path:
    """Check that a folder of results can be created at ``folder``.

    Parameters
    ----------
    folder
        The folder to create.
    replace
        Allow replacing an existing folder, which must then be one that
        dpcharge wrote (it holds `MARKER`).

    Returns
    -------
    pathlib.Path
        The folder's path.
    """
    folder = Path(folder)
    if folder.exists():
        if not replace:
            raise InputError(f"{folder} already exists; allow replacing it or name another")
        if not (folder / MARKER).is_file():
            raise InputError(
                f"{folder} exists and was not written by dpcharge (no {MARKER}): "
                "it is never replaced"
            )
        if folder.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise InputError(f"{folder} holds the working folder: it is never replaced")
    probe_folder(folder.resolve().parent, "output")
    return folder


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """Build a folder beside ``folder`` and move it into place only if the block succeeds.

    An existing ``folder`` (already checked by `check_output_folder`) is
    replaced only at the very end; on any failure the staging folder is removed
    and ``folder`` is left as it was.

    Yields
    ------
    pathlib.Path
        The staging folder to fill.
    """
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    staging.chmod(0o755)
    try:
        yield staging
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
