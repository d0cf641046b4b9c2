"""Estimator parameters from the command line: ``--set NAME=VALUE``.

Every parameter of ``PathKernelClassifier`` / ``PathKernelRegressor`` is
settable, by the names and rules of their ``_parameter_constraints``. The
dedicated options (``--max-iter N`` and the like) store into the same
settings through ``SetParameter``.

Parsing and ``--help`` run before any command, and must not wait seconds
for torch and scikit-learn: the check of a name and the list in ``--help``
read ``PARAMETERS``, the estimators' parameters written out here.
``parameter_table()`` derives the same table from the estimators, and
``tests/test_cli_settings.py`` fails, printing the table to paste, whenever
the two differ: a new estimator parameter needs that paste and nothing else.

A value is turned into a Python value by ``parse_value`` (the rule is in
``VALUE_RULE``), then checked by scikit-learn's parameter validation
against the estimator's own constraints when the estimator is built
(``build_estimator``, when the command runs), so a bad value gets
scikit-learn's own message.
"""

import argparse
import difflib
import textwrap
from typing import NamedTuple

from ._errors import CLIError

VALUE_RULE = """\
values of --set NAME=VALUE (and of the options above that forward to it):
  none -> None; true / false -> True / False (any case); an integer (10, -1)
  -> int; another number (0.5, 1e-4) -> float; a comma-separated list
  (1,8,8) -> a tuple of such values, a trailing comma for one item (64,);
  'text' or "text" in quotes -> the string inside, as it is; anything else
  -> the string. A parameter whose default is a tuple (hidden_layer_sizes)
  always takes a tuple: 64 -> (64,), and none or () -> (). The estimator
  then checks the value as in Python, with scikit-learn's messages; the
  last setting of a name wins."""

TASKS = ("auto", "classification", "regression")


class Parameter(NamedTuple):
    """An estimator parameter as the command line lists and checks it.

    Attributes
    ----------
    allowed : str
        Its values as ``--help`` lists them: ``describe`` of its constraints.
    default : object
        The estimators' default.
    settable : bool, default=True
        False for a parameter that takes a Python object (see ``refusal``).
    """

    allowed: str
    default: object
    settable: bool = True


# parameter_table() as the estimators give it, in their order, written out
# so that parsing and --help import neither torch nor scikit-learn (a test
# compares the two and prints the new table when they differ).
PARAMETERS = {
    "hidden_layer_sizes": Parameter("checked at fit", (100,)),
    "activation": Parameter("'identity'|'logistic'|'relu'|'tanh'", "tanh"),
    "module": Parameter("None|callable", None, settable=False),
    "input_shape": Parameter("checked at fit", None),
    "tokens": Parameter("true|false", False),
    "solver": Parameter("'adam'|'adamw'|'lbfgs'|'sgd'", "sgd"),
    "learning_rate_init": Parameter("float in (0, inf)", 0.1),
    "learning_rate": Parameter("'adaptive'|'constant'|'invscaling'", "constant"),
    "power_t": Parameter("float in [0, inf)", 0.5),
    "momentum": Parameter("float in [0, 1)", 0.0),
    "nesterovs_momentum": Parameter("true|false", True),
    "beta_1": Parameter("float in [0, 1)", 0.9),
    "beta_2": Parameter("float in [0, 1)", 0.999),
    "epsilon": Parameter("float in (0, inf)", 1e-08),
    "max_iter": Parameter("int in [1, inf)", 200),
    "batch_size": Parameter("None|'auto'|int in [1, inf)", None),
    "shuffle": Parameter("true|false", True),
    "alpha": Parameter("float in [0, inf)", 0.0),
    "tol": Parameter("float in [0, inf)", 0.0001),
    "n_iter_no_change": Parameter("int in [1, inf)", 10),
    "early_stopping": Parameter("true|false", False),
    "validation_fraction": Parameter("float in (0, 1)", 0.1),
    "record_every": Parameter("int in [1, inf)", 1),
    "quadrature": Parameter("'adaptive'|'left'|'simpson'|'trapezoid'", "simpson"),
    "kernel_nodes": Parameter("None|int in [2, inf)|float in (0, 1]", 0.1),
    "adaptive_tol": Parameter("float in (0, inf)", 0.05),
    "trajectory_dir": Parameter("None|str|path", None),
    "device": Parameter("checked at fit", "auto"),
    "dtype": Parameter("'float32'|'float64'", "float32"),
    "engine": Parameter("'auto'|'hooks'|'jacobian'|'ntk_vp'|'structured'", "auto"),
    "kernel_normalize": Parameter("'cosine'|'mean_diagonal'|'none'", "none"),
    "working_memory": Parameter("None|float in (0, inf)", None),
    "n_jobs": Parameter("None|int", None),
    "random_state": Parameter("int (seed)|None", None),
    "verbose": Parameter("int", 0),
    "warm_start": Parameter("true|false", False),
    "max_fun": Parameter("int in [1, inf)", 15000),
    "loss": Parameter("'poisson'|'squared_error'", "squared_error"),
}

# The kernel command's defaults where they differ from the estimators': a
# fixed seed, so that the same command gives the same kernel.
COMMAND_DEFAULTS = {"random_state": 0}

_WORDS = {"none": None, "true": True, "false": False}

# How a constraint of _parameter_constraints reads in --help.
_CONSTRAINT_WORDS = {
    "boolean": "true|false",
    "random_state": "int (seed)|None",
    "verbose": "int",
    "no_validation": "checked at fit",
}
_TYPE_WORDS = {"Integral": "int", "Real": "float", "PathLike": "path"}


class Setting(NamedTuple):
    """A parameter's value and the option that gave it, for messages."""

    value: object
    source: str


def parse_value(text, *, sequence=False):
    """The Python value of ``text``, by the rule of ``VALUE_RULE``.

    Parameters
    ----------
    text : str
    sequence : bool, default=False
        Always a tuple (for a parameter whose default is a tuple).

    Examples
    --------
    >>> from sklearn_pathkernel.cli._settings import parse_value
    >>> parse_value("none"), parse_value("True"), parse_value("10")
    (None, True, 10)
    >>> parse_value("1e-4"), parse_value("simpson"), parse_value("'10'")
    (0.0001, 'simpson', '10')
    >>> parse_value("64,32"), parse_value("64,"), parse_value("64", sequence=True)
    ((64, 32), (64,), (64,))
    >>> parse_value("none", sequence=True), parse_value("()", sequence=True)
    ((), ())
    """
    text = text.strip()
    if sequence and text.lower() in ("", "none", "()"):
        return ()
    if "," in text or sequence:
        items = text.split(",")
        if len(items) > 1 and not items[-1].strip():
            items.pop()  # "64," is one item
        return tuple(_scalar(item.strip()) for item in items)
    return _scalar(text)


def _scalar(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def estimator_classes():
    """``{"classification": PathKernelClassifier, "regression": ...Regressor}``."""
    from .. import PathKernelClassifier, PathKernelRegressor

    return {
        "classification": PathKernelClassifier,
        "regression": PathKernelRegressor,
    }


def parameter_constraints():
    """Every estimator parameter and its constraints, in the estimators' order.

    The union over both estimators, from their ``_parameter_constraints``.
    """
    constraints = {}
    for cls in estimator_classes().values():
        for name, allowed in cls._parameter_constraints.items():
            constraints.setdefault(name, allowed)
    return constraints


def parameter_defaults():
    """The estimators' defaults, by parameter name."""
    defaults = {}
    for cls in estimator_classes().values():
        for name, value in cls().get_params(deep=False).items():
            defaults.setdefault(name, value)
    return defaults


def refusal(name, constraints):
    """Why ``name`` cannot be set from a shell, or None when it can.

    A parameter that takes a callable (``module``) takes a Python object.
    """
    if isinstance(constraints, list) and any(
        c is callable or c == "callable" for c in constraints
    ):
        return _object_refusal(name)
    return None


def _object_refusal(name):
    return (
        f"{name} takes a Python object (a callable, such as a torch module), "
        "which a command line cannot give; use the Python API"
    )


def check_name(name):
    """Raise ``ValueError`` unless ``name`` is a settable parameter.

    The message of an unknown name lists the valid names (and the closest).
    The names are those of ``PARAMETERS``: no estimator is imported.

    Examples
    --------
    >>> from sklearn_pathkernel.cli._settings import check_name
    >>> check_name("max_iter")
    >>> check_name("max_iters")
    Traceback (most recent call last):
    ...
    ValueError: unknown estimator parameter 'max_iters' (did you mean max_iter?); ...
    """
    if name in PARAMETERS:
        if not PARAMETERS[name].settable:
            raise ValueError(f"cannot set {name}: {_object_refusal(name)}")
        return
    valid = [n for n, parameter in PARAMETERS.items() if parameter.settable]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(
        f"unknown estimator parameter {name!r}{hint}; valid names: {', '.join(valid)}"
    )


class SetParameter(argparse.Action):
    """Store an estimator parameter into ``namespace.estimator_params``.

    ``--set NAME=VALUE`` (``parameter=None``) names it; a dedicated option
    (``--max-iter N``) passes ``parameter="max_iter"``. The value is parsed
    by ``parse_value``; the estimator checks it in ``build_estimator``.
    """

    def __init__(self, option_strings, dest, parameter=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.parameter = parameter

    def __call__(self, parser, namespace, text, option_string=None):
        if self.parameter is None:
            name, equals, text = text.partition("=")
            name, source = name.strip(), f"{option_string} {name.strip()}={text}"
            if not equals:
                raise argparse.ArgumentError(
                    self, f"expected NAME=VALUE, such as max_iter=50; got {name!r}"
                )
        else:
            name, source = self.parameter, f"{option_string} {text}"
        try:
            check_name(name)
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        sequence = isinstance(PARAMETERS[name].default, tuple)
        settings = dict(getattr(namespace, self.dest, None) or {})
        settings[name] = Setting(parse_value(text, sequence=sequence), source)
        setattr(namespace, self.dest, settings)


def build_estimator(task, settings, **defaults):
    """The unfitted estimator of ``task``, with ``settings`` checked and set.

    Parameters
    ----------
    task : {"classification", "regression"}
    settings : dict of str to Setting
        By parameter name, as ``SetParameter`` stored them.
    **defaults
        Values for parameters that ``settings`` does not set.

    Raises
    ------
    CLIError
        With scikit-learn's message of the first value that breaks the
        estimator's ``_parameter_constraints``, after the option that gave it.
    """
    from sklearn.utils._param_validation import validate_parameter_constraints

    cls = estimator_classes()[task]
    for name, setting in settings.items():
        try:
            validate_parameter_constraints(
                {name: cls._parameter_constraints.get(name, "no_validation")},
                {name: setting.value},
                caller_name=cls.__name__,
            )
        except ValueError as exc:
            raise CLIError(f"{setting.source}: {exc}") from None
    values = {**defaults, **{name: s.value for name, s in settings.items()}}
    try:
        return cls().set_params(**values)
    except ValueError as exc:  # a parameter of the other estimator only
        raise CLIError(str(exc)) from None


def parameter_table():
    """``PARAMETERS`` as the estimators give it (imports them, and torch).

    Returns
    -------
    table : dict of str to Parameter
        Every parameter of either estimator, in their order, with
        ``describe`` of its constraints, its default and whether it is
        settable from a shell.
    """
    constraints, defaults = parameter_constraints(), parameter_defaults()
    return {
        name: Parameter(
            describe(allowed), defaults[name], refusal(name, allowed) is None
        )
        for name, allowed in constraints.items()
    }


def describe(constraints):
    """How ``constraints`` (of one parameter) read in ``--help``.

    Examples
    --------
    >>> from sklearn.utils._param_validation import Interval, StrOptions
    >>> from numbers import Integral
    >>> from sklearn_pathkernel.cli._settings import describe
    >>> at_least_1 = Interval(Integral, 1, None, closed="left")
    >>> describe([None, StrOptions({"b", "a"}), at_least_1])
    "None|'a'|'b'|int in [1, inf)"
    """
    if isinstance(constraints, str):
        constraints = [constraints]
    return "|".join(_describe_one(c) for c in constraints)


def _describe_one(constraint):
    if constraint is None:
        return "None"
    if constraint is callable:
        return "callable"
    if isinstance(constraint, str):
        return _CONSTRAINT_WORDS.get(constraint, constraint)
    if hasattr(constraint, "options"):  # StrOptions, Options
        return "|".join(repr(option) for option in sorted(constraint.options))
    if hasattr(constraint, "closed"):  # Interval
        kind = _TYPE_WORDS.get(constraint.type.__name__, constraint.type.__name__)
        left = "-inf" if constraint.left is None else constraint.left
        right = "inf" if constraint.right is None else constraint.right
        opening = "[" if constraint.closed in ("left", "both") else "("
        closing = "]" if constraint.closed in ("right", "both") else ")"
        return f"{kind} in {opening}{left}, {right}{closing}"
    if isinstance(constraint, type):
        return _TYPE_WORDS.get(constraint.__name__, constraint.__name__)
    return str(constraint)


def parameters_help(width=79):
    """The ``--help`` section listing every estimator parameter.

    Each settable parameter with its allowed values and its default (the
    command's where ``COMMAND_DEFAULTS`` has one), then the refused ones,
    then the rule of values. Read from ``PARAMETERS``: no estimator is
    imported.

    Examples
    --------
    >>> from sklearn_pathkernel.cli._settings import parameters_help
    >>> print(parameters_help())  # doctest: +ELLIPSIS
    estimator parameters (--set NAME=VALUE, repeatable):
      hidden_layer_sizes   checked at fit (default: (100,))
    ...
      random_state         int (seed)|None (default: 0)
    ...
    """
    lines = ["estimator parameters (--set NAME=VALUE, repeatable):"]
    refused = []
    for name, parameter in PARAMETERS.items():
        if not parameter.settable:
            refused.append(name)
            continue
        default = COMMAND_DEFAULTS.get(name, parameter.default)
        text = f"{parameter.allowed} (default: {default!r})"
        lines += textwrap.wrap(
            text,
            width,
            initial_indent=f"  {name:<20} ",
            subsequent_indent=" " * 25,
            break_on_hyphens=False,
        )
    if refused:
        lines.append(
            f"  not settable from a shell: {', '.join(refused)} (a Python "
            "object; use the Python API)"
        )
    return "\n".join([*lines, "", VALUE_RULE])
