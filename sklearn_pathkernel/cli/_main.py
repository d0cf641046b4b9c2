"""``main``: parse the arguments, run the command, map errors to exit codes.

Only the parser is imported with this module: a command's modules (and
with them numpy, scikit-learn and torch, seconds of imports) are imported
when the command runs, so ``--help`` and usage errors come back at once.
"""

import sys

from ._errors import CLIError, DemoError
from ._parser import PROG, build_parser


def main(argv=None):
    """Run the command line.

    User errors (a missing file or column, text where a number belongs, an
    output path that cannot be written, an unknown dataset) print one line
    on stderr, without a traceback.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    code : int
        The exit status: 0 on success, 2 for a usage or input error (the
        message goes to stderr), 130 when interrupted.

    Examples
    --------
    Write the path kernel of a small CSV file:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_pathkernel.cli import main
    >>> folder = tempfile.mkdtemp()
    >>> train = os.path.join(folder, "train.csv")
    >>> with open(train, "w") as f:
    ...     _ = f.write("x1,x2,label\\n0,1,a\\n1,0,b\\n1,1,a\\n0,0,b\\n2,1,a\\n")
    >>> out = os.path.join(folder, "K.npy")
    >>> main([
    ...     "kernel", train, "--target", "label", "--output", out,
    ...     "--hidden-layer-sizes", "8", "--max-iter", "20",
    ... ])  # doctest: +ELLIPSIS
    train.csv: 5 rows, 2 feature columns; target 'label': classification ...
    ...
    0
    >>> K = np.load(out)
    >>> K.shape, bool(np.allclose(K, K.T))
    ((5, 5), True)

    A user error is one line on stderr and exit code 2:

    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     main(["kernel", train, "--target", "y", "--output", out])
    2
    >>> print(err.getvalue().strip())  # doctest: +ELLIPSIS
    sklearn-pathkernel kernel: error: ...train.csv has no column 'y'; ...
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from .._compute._blocking import limit_threads  # torch: a command runs

        with limit_threads(args.threads):
            return _COMMANDS[args.command](args)
    except (CLIError, DemoError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def run_demo_command(args):
    """Run ``demo`` with parsed arguments ``args``; 0 on success."""
    from ._demo import check_plotting, run_demo
    from ._paths import check_writable

    if args.output is not None:  # fail before any work
        check_plotting()
        check_writable(args.output, "--output", directory=True)
    run_demo(
        args.datasets,
        quick=args.quick,
        output=args.output,
        random_state=args.random_state,
        verbose=args.verbose,
    )
    return 0


def run_kernel_command(args):
    """Run ``kernel`` with parsed arguments ``args``; 0 on success."""
    from ._kernel_command import run_kernel_command as run

    return run(args)


_COMMANDS = {"demo": run_demo_command, "kernel": run_kernel_command}
