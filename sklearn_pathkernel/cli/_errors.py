"""The command line's user errors."""


class CLIError(Exception):
    """A user error: ``main`` prints the message and returns exit code 2.

    Raised for what the user can fix: a missing file or column, text where a
    number belongs, an output path that cannot be written.
    """
