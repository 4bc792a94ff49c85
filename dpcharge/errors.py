"""The one exception type for a user's mistake: bad input files, options or models.

The command line turns it into a one-line message and a non-zero exit status,
never a traceback.
"""


class InputError(Exception):
    """A problem with what the user gave: a file, an option or a model."""
