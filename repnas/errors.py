"""The one exception type for bad user input.

Library code raises :class:`UserError` (a ``ValueError``) with a message that names the problem;
the command line turns it into one line and exit code 2 instead of a traceback.
"""


class UserError(ValueError):
    """Bad input from a user: unknown name, impossible budget, malformed config, missing data."""
