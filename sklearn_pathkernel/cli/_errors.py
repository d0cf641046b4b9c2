"""The command line's user errors."""


class CLIError(Exception):
    """A user error: ``main`` prints the message and returns exit code 2.

    Raised for what the user can fix: a missing file or column, text where a
    number belongs, an output path that cannot be written.
    """


class DemoError(ValueError):
    """A user error of the demo; ``main`` prints it and returns exit code 2.

    Raised for an unknown dataset, and for figures that cannot be drawn (no
    matplotlib) or written.
    """
