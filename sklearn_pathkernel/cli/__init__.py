"""The command line: ``sklearn-pathkernel`` or ``python -m sklearn_pathkernel``.

An application on top of the library: it imports ``sklearn_pathkernel``, and
nothing in the library imports it. It starts at once: ``--help``,
``--version`` and usage errors import neither numpy, scikit-learn nor torch
(the package imports its public names on first use, ``main`` a command's
modules when the command runs, and the parser reads the estimators'
parameters from ``_settings.PARAMETERS``). Where to make a change:

``_main.py``
    ``main``: parse the arguments, run a command (importing it then), turn
    user errors into one line on stderr and exit code 2.
``_parser.py``
    The options of every command and their ``--help`` text.
``_settings.py``
    Estimator parameters from the command line: ``--set NAME=VALUE``, the
    options that forward to it, the rule of values, their check by the
    estimators' ``_parameter_constraints`` and their list in ``--help``
    (``PARAMETERS``, written out; a test compares it with the estimators).
``_errors.py``
    ``CLIError``, the user errors of the ``kernel`` command and of paths;
    ``DemoError``, those of the demo.
``_paths.py``
    Checking before any work that an output file or folder can be written,
    and writing ``.npy`` files.
``_warnings.py``
    Collecting the library's ``DivergenceWarning`` to report them.
``_csv.py``
    Reading a CSV file with a header row into a table of cells.
``_target.py``
    The target column: classification or regression (``--task auto``,
    decided by ``type_of_target``) and its values.
``_kernel_command.py``
    The ``kernel`` command: train on a CSV file, write the path kernel.
``_datasets.py``
    The demo's datasets, the network trained on each, and their split;
    the check of their names (numpy and scikit-learn wait for the data).
``_demo.py``
    The ``demo`` command: per dataset, train, measure the kernel and the
    kernel machine, score.
``_scores.py``
    The demo's cross-validated and held-out scores of the network, of the
    path-kernel machine and of an RBF baseline.
``_report.py``
    ``DemoResult`` and the text it prints: the table, notes, contributors.
``_figures.py``
    The demo's PNG figures (``--output``).
"""

from ._main import main

__all__ = ["main"]
