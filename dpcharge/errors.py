"""The one exception type for a user's mistake: bad input files, options or models.

The command line turns it into a one-line message and exit status 2, never a
traceback. A library function that refuses one of its parameters names it
(``parameter``), so that the command line can speak of the flag that set it.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with what the user gave: a file, an option or a model.

    Parameters
    ----------
    message
        What is wrong, in one line.
    parameter
        The library parameter that was refused, if one was; its name then
        starts the message (``"chunk: must be positive, got 0"``).
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter

    def __str__(self) -> str:
        return f"{self.parameter}: {self.message}" if self.parameter else self.message
