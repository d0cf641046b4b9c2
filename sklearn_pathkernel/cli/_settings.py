"""Estimator parameters from the command line: ``--set NAME=VALUE``.

Every parameter of ``PathKernelClassifier`` / ``PathKernelRegressor`` is
settable, by the names and rules of their ``_parameter_constraints``: the
list in ``--help``, the check of a name and the check of a value all come
from there, so a new estimator parameter needs no change here. The
dedicated options (``--max-iter N`` and the like) store into the same
settings through ``SetParameter``.

A value is turned into a Python value by ``parse_value`` (the rule is in
``VALUE_RULE``), then checked by scikit-learn's parameter validation
against the estimator's constraints when the estimator is built
(``build_estimator``), so a bad value gets scikit-learn's own message.

The estimators (and with them torch) are imported only when a parameter is
looked up, not when this module is.
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
        return (
            f"{name} takes a Python object (a callable, such as a torch module), "
            "which a command line cannot give; use the Python API"
        )
    return None


def check_name(name):
    """Raise ``ValueError`` unless ``name`` is a settable parameter.

    The message of an unknown name lists the valid names (and the closest).
    """
    constraints = parameter_constraints()
    if name in constraints:
        reason = refusal(name, constraints[name])
        if reason is not None:
            raise ValueError(f"cannot set {name}: {reason}")
        return
    valid = [n for n, c in constraints.items() if refusal(n, c) is None]
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
        sequence = isinstance(parameter_defaults().get(name), tuple)
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
    """The ``--help`` section listing every estimator parameter, generated.

    Each settable parameter with its allowed values and its default (the
    command's where ``COMMAND_DEFAULTS`` has one), then the refused ones,
    then the rule of values.
    """
    constraints = parameter_constraints()
    defaults = {**parameter_defaults(), **COMMAND_DEFAULTS}
    lines = ["estimator parameters (--set NAME=VALUE, repeatable):"]
    refused = []
    for name, allowed in constraints.items():
        if refusal(name, allowed) is not None:
            refused.append(name)
            continue
        text = f"{describe(allowed)} (default: {defaults.get(name)!r})"
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
