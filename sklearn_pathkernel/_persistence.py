"""Save and load fitted estimators without unpickling arbitrary objects.

``pickle`` (and ``joblib``) work on every estimator of this package, but
loading a pickle runs whatever code the file names: never unpickle a file you
do not trust. :func:`save` and :func:`load` are the safe alternative. The file
is written by ``torch.save`` and read by ``torch.load(..., weights_only=True)``,
whose restricted unpickler builds tensors and plain Python data (``str``,
``int``, ``float``, ``bool``, ``None``, lists, tuples and dicts) and refuses
everything else: a tampered file cannot make :func:`load` create an arbitrary
object or call a function. The objects of the estimator are rebuilt by this
module from that data, through a fixed table of the package's own classes.

Format (version 1). The file holds one dict::

    {
        "format": "sklearn_pathkernel",
        "format_version": 1,
        "sklearn_pathkernel_version": "...",   # who wrote it
        "torch_version": "...", "sklearn_version": "...",  # for information
        "estimator": <estimator>,
    }

An ``<estimator>`` is ``{"__kind__": "estimator", "class": name, "params":
{name: value}, "attributes": {name: value}}`` with ``params`` from
``get_params(deep=False)`` and ``attributes`` every other entry of the
estimator's ``__dict__``: the fitted attributes (``module_``,
``trajectory_``, ``classes_``, ``n_features_in_``...) and the private ones
(``_fit_X``, ``_fit_sample_weight``...), so that the loaded estimator is the
saved one, attribute for attribute; among them ``_optimizer_state`` (the
optimiser's per-parameter state, by index, from which ``partial_fit`` and
warm starts continue the path) and ``_rows_seen`` (``t_``), which files of
older versions lack. Values are plain data or tensors, or a
dict tagged with ``"__kind__"`` for what is neither:

- ``"ndarray"``: numeric and boolean arrays as a tensor (raw bytes as a
  ``uint8`` tensor for dtypes torch lacks), string and object arrays (e.g.
  ``classes_``, ``feature_names_in_``) as a list; with the dtype string, the
  shape and the memory order, so the array comes back bit for bit;
- ``"numpy_scalar"``, ``"dict"`` (as key-value pairs), ``"bytes"``,
  ``"path"`` (a ``pathlib.Path``, e.g. ``trajectory_dir``),
  ``"torch_device"``, ``"torch_dtype"``, ``"random_state"`` (a
  ``RandomState``'s exact state);
- ``"module"``: the trained network as its ``state_dict`` (on the CPU, so a
  model trained on a GPU loads anywhere), its dtype, the ``requires_grad`` of
  each parameter and the train/eval flag of each submodule; for the default
  MLP (``module=None``) also its layer widths and activation, from which
  :func:`load` rebuilds it;
- ``"custom_module"``: the estimator's ``module`` parameter when the user gave
  one. Code cannot be stored safely, so :func:`load` asks for it back
  (``load(path, module=...)``) and checks it against the saved weights. When
  the parameter was an ``nn.Module`` instance its (initial) weights are kept
  too, and the loaded estimator's ``module`` is a copy of the one passed to
  :func:`load` holding them, so that a refit starts where the saved one did;
- ``"trajectory"``: the :class:`Trajectory` in the packed form it pickles
  as: one tensor of checkpoints, one per step record, and lists of numbers.
  A trajectory kept in a memory-mapped file (``trajectory_dir``) is saved
  with its parameters embedded, never as a reference to that scratch file;
  loaded, they go to a new file in the directory :func:`load` is given (its
  ``trajectory_dir``, else the system's temporary one), never in one the
  file names;
- ``"estimator"``: a nested estimator (``PathKernelTransformer.estimator_``).

Anything else (a new attribute of a type this module does not know) makes
:func:`save` raise a ``TypeError`` naming it, rather than write a file that
would not round-trip.

The schema. :func:`load` checks the whole file before it builds anything
from it: the zip's checksums; the entries of each record, no more and no
fewer; the attributes of each class, the closed set that its ``fit`` sets
(``_FITTED``, and a few that only sometimes exist); the parameters, as
``fit`` checks them; and every shape and dtype, derived from a few numbers:
``_fit_X`` is ``(n_rows, n_features_in_)``, float32 or float64, and
``_fit_sample_weight`` ``(n_rows,)``; ``classes_`` has two labels for one
network output or ``n_outputs_`` labels; the network's weights follow from
its recorded widths (or from the ``module`` passed to :func:`load`); the
path's parameter names and shapes are the network's trainable ones, its
checkpoints ``(ceil(n_steps / record_every), n_parameters)`` in the
network's dtype (Adam's preconditioners ``(n_steps, n_parameters)``), each
step's batch rows within ``_fit_X`` and its loss derivatives ``(batch,
n_outputs_)``. Whatever differs is a ``ValueError`` that names the file and
the entry.
"""

import copy
import dataclasses
import io
import math
import os
import pathlib
import reprlib
import tempfile
import warnings
import zipfile

import numpy as np
import sklearn
import torch
from torch import nn

from ._base import BasePathKernelEstimator
from ._estimators import PathKernelClassifier, PathKernelRegressor
from ._kernel_approximation import PathKernelFeatures, PathKernelNystroem
from ._model._network import (
    ACTIVATIONS,
    adapt_input,
    build_module,
    make_mlp,
    trainable_parameters,
)
from ._model._validation import resolve_device
from ._training._quadrature import RULES, check_rule
from ._training._solvers import MOMENTUM_FORMS, SOLVERS, Solver
from ._training._trajectory import PACKED_KEYS, Trajectory
from ._transformers import PathKernelTransformer
from .exceptions import InconsistentVersionWarning

__all__ = ["save", "load"]

FORMAT = "sklearn_pathkernel"
FORMAT_VERSION = 1
# The top-level entries of a file: the version strings, and the rest.
_HEADER = ("sklearn_pathkernel_version", "torch_version", "sklearn_version")
_TOP = ("format", "format_version", "estimator")

# The only classes load() ever instantiates from a name in a file.
_CLASSES = {
    cls.__name__: cls
    for cls in (
        PathKernelRegressor,
        PathKernelClassifier,
        PathKernelTransformer,
        PathKernelFeatures,
        PathKernelNystroem,
    )
}

# Array dtypes stored as typed tensors (readable with torch alone); other
# fixed-size dtypes travel as raw bytes.
_TENSOR_DTYPES = {
    np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
_RAW_KINDS = set("biufcmMS")
_FLOAT_DTYPES = {
    name: getattr(torch, name) for name in ("float16", "bfloat16", "float32", "float64")
}
_PLAIN = (str, int, float, bool, type(None))


# -- public API -------------------------------------------------------------
def save(estimator, path):
    """Save an estimator to a file that :func:`load` reads without unpickling.

    The file holds tensors and plain Python data only (see the module
    docstring), written by ``torch.save``; :func:`load` reads it with
    ``torch.load(weights_only=True)``, which cannot run code from the file.
    Fitted and unfitted estimators are both accepted: an unfitted one loads
    back unfitted, with the same parameters.

    Parameters
    ----------
    estimator : PathKernelRegressor, PathKernelClassifier, PathKernelTransformer \
or PathKernelFeatures
        The estimator to save; a transformer's ``estimator`` must be one of
        the first two (or None).
    path : str, os.PathLike or binary file object
        Where to write; an existing file is overwritten.

    Raises
    ------
    TypeError
        For another class of estimator, or an attribute or parameter that is
        not plain data (a ``random_state`` that is not an int, None or a
        ``RandomState``, for example).

    Notes
    -----
    What cannot be stored as data:

    - a user ``module`` (an ``nn.Module`` or a factory) is code: the file
      keeps the trained weights (``module_.state_dict()``), and those of an
      ``nn.Module`` parameter, and :func:`load` needs the module back
      (``load(path, module=...)``);
    - a ``random_state`` given as a ``RandomState`` is stored as its current
      state: the loaded estimator holds a new ``RandomState`` in that state,
      so that a refit draws what a refit of the saved estimator would have
      drawn.

    The network is stored on the CPU, whatever device it was trained on.

    See Also
    --------
    load : Read the file back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel import load, save
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(30, 3)
    >>> y = X[:, 0] - X[:, 1]
    >>> est = PathKernelRegressor((8,), max_iter=20, random_state=0).fit(X, y)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "model.pt")
    ...     save(est, path)
    ...     loaded = load(path)
    >>> bool(np.array_equal(loaded.predict(X), est.predict(X)))
    True
    >>> bool(np.array_equal(loaded.kernel(X), est.kernel(X)))
    True
    """
    from . import __version__

    if _CLASSES.get(type(estimator).__name__) is not type(estimator):
        raise TypeError(
            f"save supports {', '.join(_CLASSES)}; got "
            f"{type(estimator).__name__}: {estimator!r}. Use pickle or joblib "
            "for other objects (and load those from trusted files only)."
        )
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sklearn_pathkernel_version": str(__version__),
        "torch_version": str(torch.__version__),
        "sklearn_version": str(sklearn.__version__),
        "estimator": _encode_estimator(estimator, type(estimator).__name__),
    }
    torch.save(record, path)


def load(path, *, module=None, map_location="cpu", trajectory_dir=None):
    """Load an estimator written by :func:`save`, without unpickling objects.

    The file is read by ``torch.load(path, weights_only=True)``: only
    tensors and plain Python data come out of it, and the estimator is
    rebuilt from them. A file that holds anything else is refused.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The file.
    module : torch.nn.Module or callable, default=None
        Needed, and only allowed, when the estimator was fitted with its own
        ``module``: the same architecture (an ``nn.Module`` or a factory
        ``module(n_features, n_outputs)``), into which the saved weights are
        loaded. It becomes the loaded estimator's ``module`` parameter (and
        that of a nested estimator): a factory as it is, an ``nn.Module`` as
        a copy given the saved parameter's weights. The object passed is
        never changed.
    map_location : str or torch.device, default="cpu"
        Where to put the trained network: "cpu", "cuda", "cuda:1", or "auto"
        for a GPU when there is one. The trajectory stays on the CPU, as
        always. The estimator's ``device`` parameter is kept as saved; it
        only says where a refit trains.
    trajectory_dir : str, os.PathLike or None, default=None
        Where a path that was saved from a memory-mapped file (fitted with
        ``trajectory_dir``) goes back to such a file, a new, randomly named
        one readable by its owner only, removed with the estimator; created
        when missing. None: the system's temporary directory. The directory
        recorded in the file is never used: the loaded estimator keeps it as
        its ``trajectory_dir`` parameter, where a refit would write, but
        :func:`load` writes nothing there. Paths kept in memory stay there.

    Returns
    -------
    estimator : PathKernelRegressor, PathKernelClassifier, \
PathKernelTransformer or PathKernelFeatures
        The saved estimator: same parameters, same fitted attributes, and
        bit-identical predictions and kernels on the same device.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        When the file is not one :func:`save` writes: unreadable, truncated
        or with a wrong checksum, holding objects that ``weights_only``
        refuses, of another format version, or with an entry that does not
        fit the format (an attribute ``fit`` does not set, a value of the
        wrong type, a tensor whose shape or dtype does not follow from the
        rest); the message names the file and the entry. Also when
        ``module`` is missing, not needed, or does not fit the saved weights.
        Nothing is built, and no file written, before every check passed.

    Warns
    -----
    InconsistentVersionWarning
        When the file was written by another version of sklearn_pathkernel;
        the estimator is loaded all the same.

    See Also
    --------
    save : Write the file.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_pathkernel import PathKernelClassifier
    >>> from sklearn_pathkernel import load, save
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(30, 2)
    >>> y = np.where(X[:, 0] > 0, "yes", "no")
    >>> net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    >>> clf = PathKernelClassifier(module=net, max_iter=20, random_state=0)
    >>> clf = clf.fit(X, y)
    >>> buffer = io.BytesIO()
    >>> save(clf, buffer)
    >>> _ = buffer.seek(0)
    >>> same_architecture = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    >>> loaded = load(buffer, module=same_architecture)
    >>> loaded.classes_
    array(['no', 'yes'], dtype='<U3')
    >>> bool(np.array_equal(loaded.predict_proba(X), clf.predict_proba(X)))
    True

    A path kept on disk comes back in a directory of the caller's choice:

    >>> import os, tempfile
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     reg = PathKernelRegressor((6,), max_iter=5, random_state=0,
    ...                               trajectory_dir=os.path.join(folder, "fit"))
    ...     reg = reg.fit(X, X[:, 0])
    ...     save(reg, os.path.join(folder, "model.pt"))
    ...     scratch = os.path.join(folder, "scratch")
    ...     loaded = load(os.path.join(folder, "model.pt"), trajectory_dir=scratch)
    ...     print(sorted(name.split("-")[0] for name in os.listdir(scratch)))
    ...     del loaded, reg
    ['checkpoints', 'records']
    """
    name = _path_name(path)
    record = _read(path, name)
    loader = _Loader(
        name,
        module,
        resolve_device(map_location, parameter="map_location"),
        trajectory_dir,
    )
    try:
        estimator_record = _check_header(record, name)
        estimator = loader.decode(estimator_record, "estimator")
    except _LoadError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError(f"{name} is damaged or not ours: data nested too deeply")
    if not isinstance(estimator, tuple(_CLASSES.values())):
        raise ValueError(f"{name} does not hold an estimator.")
    if module is not None and not loader.module_used:
        raise ValueError(
            f"{name} was saved with the default network (module=None); do not "
            "pass module= to load it."
        )
    loader.finish()
    return estimator


def _read(path, name):
    """The file's record, by the safe loader, once its zip checksums are right.

    ``torch.load`` does not check the CRC-32 of the zip members it reads: a
    flipped bit in a tensor's bytes would load as another number. Python's
    ``zipfile`` checks them first, reading the file through once.
    """
    opened = None
    if isinstance(path, str | os.PathLike):
        opened = path = open(path, "rb")  # FileNotFoundError stays what it is
    try:
        start = path.tell()
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"the checksum of its member {damaged!r} is wrong")
        path.seek(start)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever the reader meets in a damaged file
        raise ValueError(
            f"{name} is not a file written by sklearn_pathkernel.save, is "
            "damaged, or holds objects that a safe load refuses: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if opened is not None:
            opened.close()


def _check_header(record, name):
    """The file's top-level entries; returns the estimator's record."""
    from . import __version__

    if type(record) is not dict or not _is(record.get("format"), FORMAT):
        raise ValueError(f"{name} is not a file written by sklearn_pathkernel.save.")
    version = record.get("format_version")
    saved_with = record.get("sklearn_pathkernel_version")
    if not _is(version, FORMAT_VERSION):
        raise ValueError(
            f"{name} uses format version {version!r} (written by "
            f"sklearn_pathkernel {saved_with}), but sklearn_pathkernel "
            f"{__version__} reads format version {FORMAT_VERSION} only. Load it "
            f"with sklearn_pathkernel {saved_with}, or refit the estimator."
        )
    for key in _HEADER:
        if type(record.get(key)) is not str:
            raise _LoadError(
                f"{name} is damaged or not ours: {key}: expected a str, got "
                f"{_show(record.get(key))}"
            )
    unknown = [key for key in record if key not in _HEADER and key not in _TOP]
    if unknown or "estimator" not in record:
        raise _LoadError(
            f"{name} is damaged or not ours: unexpected entries "
            f"{reprlib.repr(unknown)}, or no estimator"
        )
    estimator_record = record["estimator"]
    if saved_with != __version__:
        estimator_name = (
            estimator_record.get("class", "an estimator")
            if isinstance(estimator_record, dict)
            else "an estimator"
        )
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name=str(estimator_name),
                current_version=__version__,
                original_version=saved_with,
                path=name,
                original_sklearn_version=record.get("sklearn_version"),
            ),
            stacklevel=3,
        )
    return estimator_record


# -- encoding -----------------------------------------------------------------
def _path_name(path):
    if isinstance(path, str | os.PathLike):
        return repr(os.fspath(path))
    if isinstance(path, io.BytesIO):
        return "the buffer"
    return repr(getattr(path, "name", path))


def _encode_estimator(estimator, where):
    cls = type(estimator)
    if _CLASSES.get(cls.__name__) is not cls:
        raise TypeError(
            f"Cannot save {where}: {cls.__name__} is not one of {', '.join(_CLASSES)}."
        )
    params = estimator.get_params(deep=False)
    has_network = isinstance(estimator, BasePathKernelEstimator)
    encoded_params = {}
    for name, value in params.items():
        if has_network and name == "module":
            encoded_params[name] = _encode_module_spec(value, f"{where}.{name}")
        else:
            encoded_params[name] = _encode(value, f"{where}.{name}")
    unknown = _unknown_attributes(cls.__name__, vars(estimator).keys() - params.keys())
    if unknown:
        raise TypeError(
            f"Cannot save {where}: {unknown} are not attributes that "
            f"{cls.__name__}.fit sets, and load() restores those only. Delete "
            "them before saving, or use pickle (and load it from trusted files "
            "only)."
        )
    attributes = {}
    for name, value in vars(estimator).items():
        if name in params:
            continue
        if has_network and name == "module_":
            attributes[name] = _encode_module(estimator, value, f"{where}.{name}")
        else:
            attributes[name] = _encode(value, f"{where}.{name}")
    return {
        "__kind__": "estimator",
        "class": cls.__name__,
        "params": encoded_params,
        "attributes": attributes,
    }


def _encode_module_spec(spec, where):
    """The ``module`` parameter: its weights when it is an instance, never code."""
    if spec is None:
        return None
    kind = type(spec) if isinstance(spec, nn.Module) else spec
    return {
        "__kind__": "custom_module",
        "type": getattr(kind, "__qualname__", type(spec).__qualname__),
        # An instance's initial weights: a refit of the loaded estimator
        # starts where the saved one did.
        "state": _module_state(spec, where) if isinstance(spec, nn.Module) else None,
    }


def _module_state(module, where):
    floating = [p.dtype for p in module.parameters() if p.is_floating_point()]
    return {
        "dtype": str(floating[0]).removeprefix("torch.") if floating else None,
        "state_dict": {
            key: _encode(value, f"{where}.state_dict()[{key!r}]")
            for key, value in module.state_dict().items()
        },
        "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
        "training": {n: m.training for n, m in module.named_modules()},
    }


def _encode_module(estimator, module, where):
    if not isinstance(module, nn.Module):
        raise TypeError(f"Cannot save {where}: not a torch.nn.Module.")
    record = {
        "__kind__": "module",
        "n_features": int(estimator.n_features_in_),
        "n_outputs": int(estimator.n_outputs_),
        "state": _module_state(module, where),
        "architecture": None,
    }
    if estimator.module is None:
        record["architecture"] = _mlp_architecture(module, estimator, where)
    return record


def _mlp_architecture(module, estimator, where):
    """Widths and activation of a default MLP, read from the module itself."""
    layers = list(module) if type(module) is nn.Sequential else []
    linears, activations = layers[0::2], layers[1::2]
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    kinds = {names.get(type(layer)) for layer in activations}
    if (
        len(layers) % 2 == 0
        or any(type(layer) is not nn.Linear for layer in linears)
        or None in kinds
        or len(kinds) > 1
    ):
        raise TypeError(
            f"Cannot save {where}: the estimator's module is None, but module_ is "
            "not the default MLP (Linear layers separated by one activation)."
        )
    return {
        "hidden_layer_sizes": [layer.out_features for layer in linears[:-1]],
        "activation": kinds.pop() if kinds else "identity",
    }


def _encode(value, where):
    """Plain data and tensors as they are; other known types as tagged dicts."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic):
        return {"__kind__": "numpy_scalar", "array": _encode_array(np.asarray(value))}
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if type(value) in (torch.Tensor, nn.Parameter):
        return value.detach().cpu()
    if type(value) in (list, tuple):
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        return {
            "__kind__": "dict",
            "items": [
                (_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]"))
                for k, v in value.items()
            ],
        }
    if type(value) is bytes:
        return {
            "__kind__": "bytes",
            "data": torch.tensor(list(value), dtype=torch.uint8),
        }
    if isinstance(value, pathlib.PurePath):
        return {"__kind__": "path", "value": os.fspath(value)}
    if isinstance(value, torch.device):
        return {"__kind__": "torch_device", "value": str(value)}
    if isinstance(value, torch.dtype):
        return {"__kind__": "torch_dtype", "value": str(value).removeprefix("torch.")}
    if type(value) is np.random.RandomState:
        return {
            "__kind__": "random_state",
            "state": _encode(value.get_state(), f"{where}.get_state()"),
        }
    if type(value) is Trajectory:
        return {
            "__kind__": "trajectory",
            "state": _encode(value.__getstate__(), f"{where}.__getstate__()"),
        }
    if type(value).__name__ in _CLASSES:
        return _encode_estimator(value, where)
    raise TypeError(
        f"Cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} "
        "is not plain data that sklearn_pathkernel.save knows how to store. Use "
        "pickle for this estimator (and load it from trusted files only)."
    )


def _encode_array(array, where="array"):
    dtype = array.dtype
    record = {
        "__kind__": "ndarray",
        "dtype": dtype.str,
        "shape": list(array.shape),
        "fortran": bool(array.flags.f_contiguous and not array.flags.c_contiguous),
    }
    flat = array.reshape(-1, order="C")  # C order whatever the memory order
    if dtype in _TENSOR_DTYPES:
        record["tensor"] = torch.from_numpy(np.array(flat, copy=True))
    elif dtype.kind == "U":
        record["list"] = flat.tolist()
    elif dtype.kind == "O":
        record["list"] = [_encode(v, f"{where}[{i}]") for i, v in enumerate(flat)]
    elif dtype.kind in _RAW_KINDS and dtype.fields is None:
        raw = np.ascontiguousarray(flat).view(np.uint8)
        record["bytes"] = torch.from_numpy(np.array(raw, copy=True))
    else:
        raise TypeError(
            f"Cannot save {where}: arrays of dtype {dtype} are not supported."
        )
    return record


# -- the schema ---------------------------------------------------------------
# The attributes fit sets, per class: the only names load() restores. A file
# with any other name, or with some of these and not the others, is refused.
_NETWORK_FITTED = frozenset(
    {
        "n_features_in_",
        "module_",
        "trajectory_",
        "loss_curve_",
        "best_loss_",
        "validation_scores_",
        "best_validation_score_",
        "n_iter_",
        "n_outputs_",
        "_fit_X",
        "_fit_sample_weight",
    }
)
_FITTED = {
    "PathKernelRegressor": _NETWORK_FITTED | {"_y_ndim"},
    "PathKernelClassifier": _NETWORK_FITTED | {"classes_"},
    "PathKernelTransformer": frozenset(
        {"n_features_in_", "estimator_", "X_fit_", "n_samples_fit_", "_n_features_out"}
    ),
    "PathKernelNystroem": frozenset(
        {
            "n_features_in_",
            "estimator_",
            "normalization_",
            "component_indices_",
            "components_",
            "_n_features_out",
        }
    ),
    "PathKernelFeatures": frozenset(
        {"n_features_in_", "estimator_", "seed_", "_n_features_out"}
    ),
}
# Set only sometimes: feature_names_in_ (fitted on a DataFrame), the
# _fit_diagonal cache (filled by the first "mean_diagonal" kernel),
# _fit_mode_changed, _fit_targets, the regressor's _fit_loss, the
# classifier's _multilabel, and what a continuation (partial_fit, warm_start)
# starts from, _optimizer_state and _rows_seen (all absent from files of older
# versions, which load but continue a path only for plain sgd), and
# set_output's configuration (on fitted and unfitted transformers alike).
_NETWORK_OPTIONAL = frozenset(
    {
        "feature_names_in_",
        "_fit_diagonal",
        "_fit_mode_changed",
        "_fit_targets",
        "_fit_loss",
        "_multilabel",
        "_optimizer_state",
        "_rows_seen",
    }
)
_TRANSFORMER_OPTIONAL = frozenset({"feature_names_in_"})
_ANY_TIME = frozenset({"_sklearn_output_config"})
_FIT_X_DTYPES = {np.dtype("float32"), np.dtype("float64")}
_FLOAT64 = {np.dtype("float64")}

# The defaults of the packed keys that paths saved by older versions lack (as
# Trajectory.__setstate__ has).
_TRAJECTORY_DEFAULTS = {
    "quadrature": "left",
    "_kernel_nodes": None,
    "_adaptive_steps": None,
    "_packed_preconditioners": None,
}
_NETWORKS = frozenset({"PathKernelRegressor", "PathKernelClassifier"})
_CONTENT = ("tensor", "bytes", "list")  # what an "ndarray" entry holds
_SOLVER_FIELDS = {field.name: field.type for field in dataclasses.fields(Solver)}


def _unknown_attributes(name, attributes):
    """The names among ``attributes`` that a fitted ``name`` does not have."""
    optional = _NETWORK_OPTIONAL if name in _NETWORKS else _TRANSFORMER_OPTIONAL
    known = _FITTED[name] | optional | _ANY_TIME
    return sorted((k for k in attributes if k not in known), key=repr)


def _is(value, expected):
    """``value == expected``, of the same type (never a tensor's elementwise ==)."""
    return type(value) is type(expected) and value == expected


def _show(value):
    """A short description of a value for an error message."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _shape_text(shape):
    return "(" + ", ".join("any" if n is None else str(n) for n in shape) + ")"


# -- decoding -----------------------------------------------------------------
class _LoadError(ValueError):
    """A file load() refuses; load() re-raises it as a plain ValueError."""


class _Loader:
    """Check the tagged data of a file against the format, then rebuild it.

    Every value is checked before anything is built from it, and the
    trajectories, the only objects that may write (scratch files), are
    built by :meth:`finish`, once the whole file has been checked.
    """

    def __init__(self, name, module, device, trajectory_dir):
        self.name = name
        self.module = module
        self.device = device
        self.trajectory_dir = trajectory_dir
        self.module_used = False
        self.pending = []  # (estimator, checked packed trajectory)

    def fail(self, where, why):
        raise _LoadError(f"{self.name} is damaged or not ours: {where}: {why}")

    def finish(self):
        """Build the checked trajectories; scratch files go where load says."""
        for estimator, state in self.pending:
            if state["_directory"] is not None:
                directory = self.trajectory_dir or tempfile.gettempdir()
                os.makedirs(directory, exist_ok=True)
                state["_directory"] = os.fspath(directory)
            trajectory = Trajectory.__new__(Trajectory)
            trajectory.__setstate__(state)
            estimator.trajectory_ = trajectory
        self.pending = []

    # -- checks of plain values ---------------------------------------------
    def keys(self, value, where, required, optional=()):
        """``value`` is a dict: all the keys ``required``, some ``optional``."""
        if type(value) is not dict:
            self.fail(where, f"expected a dict, got {_show(value)}")
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            self.fail(where, f"unexpected entries {reprlib.repr(unknown)}")
        missing = sorted(k for k in required if k not in value)
        if missing:
            self.fail(where, f"missing entries {missing}")
        return value

    def integer(self, value, where, low=0, high=None):
        if type(value) is not int or value < low or (high is not None and value > high):
            limit = f"an int >= {low}" + ("" if high is None else f" and <= {high}")
            self.fail(where, f"expected {limit}, got {_show(value)}")
        return value

    def integers(self, value, where, low=0):
        if type(value) not in (list, tuple):
            self.fail(where, f"expected a list of ints, got {_show(value)}")
        for i, item in enumerate(value):
            self.integer(item, f"{where}[{i}]", low)
        return list(value)

    def number(self, value, where, *, none=False):
        if (value is None and none) or type(value) in (int, float):
            return value
        wanted = "a number or None" if none else "a number"
        self.fail(where, f"expected {wanted}, got {_show(value)}")

    def numbers(self, value, where, *, none=False):
        if value is None and none:
            return value
        if type(value) is not list:
            self.fail(where, f"expected a list of numbers, got {_show(value)}")
        for i, item in enumerate(value):
            self.number(item, f"{where}[{i}]")
        return value

    def boolean(self, value, where):
        if type(value) is not bool:
            self.fail(where, f"expected True or False, got {_show(value)}")
        return value

    def string(self, value, where, choices=None):
        if type(value) is not str or (choices is not None and value not in choices):
            wanted = "a str" if choices is None else f"one of {sorted(choices)}"
            self.fail(where, f"expected {wanted}, got {_show(value)}")
        return value

    def array(self, value, where, dtypes, shape):
        """An ndarray of one of ``dtypes`` (None: any) and ``shape`` (None: any)."""
        if type(value) is not np.ndarray:
            self.fail(where, f"expected an array, got {_show(value)}")
        if dtypes is not None and value.dtype not in dtypes:
            wanted = ", ".join(sorted(str(d) for d in dtypes))
            self.fail(where, f"an array of {value.dtype}, expected {wanted}")
        self._shape(value.shape, where, shape)
        return value

    def tensor(self, value, where, dtype, shape, *, none=False):
        """A tensor of ``dtype`` and ``shape`` (None: any length), or None."""
        if value is None and none:
            return value
        if type(value) is not torch.Tensor:
            self.fail(where, f"expected a tensor, got {_show(value)}")
        if value.dtype != dtype:
            self.fail(where, f"a tensor of {value.dtype}, expected {dtype}")
        self._shape(tuple(value.shape), where, shape)
        return value

    def _shape(self, got, where, shape):
        if len(got) != len(shape) or any(
            want is not None and n != want for n, want in zip(got, shape)
        ):
            self.fail(where, f"shape {tuple(got)}, expected {_shape_text(shape)}")

    # -- generic values -----------------------------------------------------
    def decode(self, value, where):
        if type(value) in _PLAIN:
            return value
        if type(value) is torch.Tensor:
            if value.requires_grad or value.layout != torch.strided:
                self.fail(where, "a tensor that requires grad or is not dense")
            return value
        if type(value) in (list, tuple):
            items = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return items if type(value) is list else tuple(items)
        if type(value) is not dict or "__kind__" not in value:
            self.fail(where, f"unexpected {type(value).__name__}")
        kind = value["__kind__"]
        method = getattr(self, f"_decode_{kind}", None) if type(kind) is str else None
        if method is None:
            self.fail(where, f"unknown entry {reprlib.repr(kind)}")
        try:
            return method(value, where)
        except _LoadError:
            raise
        except (
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
            ValueError,
            OverflowError,
            RuntimeError,
        ) as exc:
            self.fail(where, f"{type(exc).__name__}: {exc}")

    def _decode_dict(self, value, where):
        self.keys(value, where, {"__kind__", "items"})
        pairs = value["items"]
        if type(pairs) is not list or any(
            type(p) not in (list, tuple) or len(p) != 2 for p in pairs
        ):
            self.fail(where, "items are not a list of key-value pairs")
        return {
            self.decode(k, f"{where} key"): self.decode(v, f"{where}[{k!r}]")
            for k, v in pairs
        }

    def _decode_numpy_scalar(self, value, where):
        self.keys(value, where, {"__kind__", "array"})
        array = self._decode_ndarray(value["array"], where)
        if array.ndim:
            self.fail(where, f"a scalar of shape {array.shape}")
        return array[()]

    def _decode_bytes(self, value, where):
        self.keys(value, where, {"__kind__", "data"})
        return self.tensor(value["data"], where, torch.uint8, (None,)).numpy().tobytes()

    def _decode_path(self, value, where):
        self.keys(value, where, {"__kind__", "value"})
        return pathlib.Path(self.string(value["value"], where))

    def _decode_torch_device(self, value, where):
        self.keys(value, where, {"__kind__", "value"})
        return torch.device(self.string(value["value"], where))

    def _decode_torch_dtype(self, value, where):
        self.keys(value, where, {"__kind__", "value"})
        dtype = getattr(torch, self.string(value["value"], where), None)
        if not isinstance(dtype, torch.dtype):
            self.fail(where, f"unknown torch dtype {value['value']!r}")
        return dtype

    def _decode_random_state(self, value, where):
        self.keys(value, where, {"__kind__", "state"})
        rng = np.random.RandomState()
        rng.set_state(self.decode(value["state"], where))
        return rng

    def _decode_ndarray(self, value, where):
        self.keys(value, where, {"__kind__", "dtype", "shape", "fortran"}, _CONTENT)
        if sum(key in value for key in _CONTENT) != 1:
            self.fail(where, f"an array needs exactly one of {sorted(_CONTENT)}")
        dtype = np.dtype(self.string(value["dtype"], f"{where}.dtype"))
        shape = tuple(self.integers(value["shape"], f"{where}.shape"))
        count = math.prod(shape)
        if "tensor" in value:
            array = self.tensor(value["tensor"], where, value["tensor"].dtype, (count,))
            array = array.numpy()
        elif "bytes" in value:
            if dtype.kind not in _RAW_KINDS or dtype.fields is not None:
                self.fail(where, f"dtype {dtype} is not stored as bytes")
            raw = self.tensor(
                value["bytes"], where, torch.uint8, (count * dtype.itemsize,)
            )
            array = raw.numpy().view(dtype)
        else:
            array = self._list_array(value["list"], dtype, count, where)
        if array.dtype != dtype:
            self.fail(where, f"array of {array.dtype} where {dtype} was stored")
        array = array.reshape(shape)
        if self.boolean(value["fortran"], f"{where}.fortran"):
            return np.asfortranarray(array)
        return array

    def _list_array(self, items, dtype, count, where):
        """String and object arrays, stored as lists."""
        if type(items) is not list or len(items) != count:
            self.fail(where, f"expected a list of {count} items, got {_show(items)}")
        if dtype.kind == "U":
            longest = max((len(s) for s in items if type(s) is str), default=0)
            if any(type(s) is not str for s in items) or dtype.itemsize > 4 * max(
                longest, 64
            ):
                self.fail(where, f"not a list of strings of dtype {dtype}")
            return np.array(items, dtype=dtype)
        if dtype.kind != "O":
            self.fail(where, f"dtype {dtype} is not stored as a list")
        array = np.empty(count, dtype=object)
        for i, item in enumerate(items):
            array[i] = self.decode(item, f"{where}[{i}]")
        return array

    def _decode_custom_module(self, value, where):
        self.keys(value, where, {"__kind__", "type", "state"})
        if self.module is None:
            raise _LoadError(
                f"{self.name} was saved with a custom module "
                f"({reprlib.repr(value['type'])}); pass module=... to load: the "
                "same architecture, as an nn.Module or a factory "
                "module(n_features, n_outputs)."
            )
        self.module_used = True
        if value["state"] is None or not isinstance(self.module, nn.Module):
            return self.module
        module = copy.deepcopy(self.module)  # the caller's object stays as it is
        self._restore(module, self._module_state(value["state"], where), where)
        return module

    # -- estimators ---------------------------------------------------------
    def _decode_estimator(self, value, where):
        self.keys(value, where, {"__kind__", "class", "params", "attributes"})
        name = value["class"]
        cls = _CLASSES.get(name) if type(name) is str else None
        if cls is None:
            self.fail(where, f"unknown estimator class {reprlib.repr(name)}")
        where = f"{where} ({name})"
        params = value["params"]
        self.keys(params, f"{where}.params", (), set(cls._get_param_names()))
        params = {
            key: self.decode(v, f"{where}.params.{key}") for key, v in params.items()
        }
        estimator = cls(**params)
        self._check_params(estimator, f"{where}.params")
        attributes = value["attributes"]
        fitted = type(attributes) is dict and any(
            k not in _ANY_TIME for k in attributes
        )
        unknown = _unknown_attributes(name, attributes if fitted else ())
        if unknown:
            self.fail(
                f"{where}.attributes",
                f"{reprlib.repr(unknown)}: not attributes that {name}.fit sets",
            )
        optional = _ANY_TIME | (
            _NETWORK_OPTIONAL if name in _NETWORKS else _TRANSFORMER_OPTIONAL
        )
        self.keys(
            attributes,
            f"{where}.attributes",
            _FITTED[name] if fitted else (),
            optional if fitted else _ANY_TIME,
        )
        values = {
            key: self.decode(v, f"{where}.{key}")
            for key, v in attributes.items()
            if key not in ("module_", "trajectory_")
        }
        if "_sklearn_output_config" in values:
            self._check_output_config(values, f"{where}._sklearn_output_config")
        if fitted and name in _NETWORKS:
            self._check_network(values, attributes, params, where)
        elif fitted:
            self._check_transformer(name, values, where)
        if "trajectory_" in values:  # built by finish(), after every check
            self.pending.append((estimator, values.pop("trajectory_")))
        for key, v in values.items():
            setattr(estimator, key, v)
        return estimator

    def _check_params(self, estimator, where):
        """The parameters as fit would check them (InvalidParameterError)."""
        try:
            estimator._validate_params()
            if isinstance(estimator, BasePathKernelEstimator):
                estimator._hidden_layer_sizes()
                estimator._input_shape()
        except (ValueError, TypeError) as exc:
            self.fail(where, str(exc))

    def _check_output_config(self, values, where):
        config = values["_sklearn_output_config"]
        if type(config) is not dict:
            self.fail(where, f"expected a dict, got {_show(config)}")
        for key, v in config.items():
            self.string(key, f"{where} key")
            self.string(v, f"{where}[{key!r}]")

    def _check_network(self, values, attributes, params, where):
        """A fitted regressor's or classifier's attributes, checked together.

        Every shape follows from the training rows ``_fit_X`` and the two
        widths ``n_features_in_`` and ``n_outputs_``; the network from the
        recorded architecture or the ``module`` passed to load; the path
        from the network and the rows.
        """
        n_features = self.integer(
            values["n_features_in_"], f"{where}.n_features_in_", 1
        )
        n_outputs = self.integer(values["n_outputs_"], f"{where}.n_outputs_", 1)
        X = self.array(
            values["_fit_X"], f"{where}._fit_X", _FIT_X_DTYPES, (None, n_features)
        )
        n_rows = self.integer(len(X), f"{where}._fit_X rows", 1)
        self.array(
            values["_fit_sample_weight"],
            f"{where}._fit_sample_weight",
            _FLOAT64,
            (n_rows,),
        )
        if values.get("_fit_diagonal") is not None:
            self.array(
                values["_fit_diagonal"], f"{where}._fit_diagonal", _FLOAT64, (n_rows,)
            )
        if "_fit_mode_changed" in values:
            self.boolean(values["_fit_mode_changed"], f"{where}._fit_mode_changed")
        if "_fit_targets" in values:
            self.array(
                values["_fit_targets"],
                f"{where}._fit_targets",
                _FLOAT64,
                (n_rows, n_outputs),
            )
        if "feature_names_in_" in values:
            self._check_feature_names(values["feature_names_in_"], n_features, where)
        self.numbers(values["loss_curve_"], f"{where}.loss_curve_")
        self.number(values["best_loss_"], f"{where}.best_loss_", none=True)
        self.numbers(
            values["validation_scores_"], f"{where}.validation_scores_", none=True
        )
        self.number(
            values["best_validation_score_"],
            f"{where}.best_validation_score_",
            none=True,
        )
        self.integer(values["n_iter_"], f"{where}.n_iter_")
        self._check_targets(values, n_outputs, where)
        module = self._module(
            attributes["module_"], params, n_features, n_outputs, f"{where}.module_"
        )
        values["module_"] = module
        if "_rows_seen" in values:
            self.integer(values["_rows_seen"], f"{where}._rows_seen")
        if values.get("_optimizer_state") is not None:
            self._optimizer_state(
                values["_optimizer_state"], module, f"{where}._optimizer_state"
            )
        values["trajectory_"] = self._trajectory(
            attributes["trajectory_"], module, n_rows, n_outputs, f"{where}.trajectory_"
        )

    def _optimizer_state(self, state, module, where):
        """The optimiser's state per trainable parameter (by index), as torch keeps it.

        Each entry a tensor shaped and typed as its parameter (momentum
        buffers, Adam's moments), a scalar tensor (Adam's step count), a
        number or None.
        """
        trainable = [p for _, p in trainable_parameters(module)]
        if type(state) is not dict:
            self.fail(where, f"expected a dict, got {_show(state)}")
        for index, entries in state.items():
            at = f"{where}[{index!r}]"
            self.integer(index, f"{where} key", 0, len(trainable) - 1)
            if type(entries) is not dict:
                self.fail(at, f"expected a dict, got {_show(entries)}")
            parameter = trainable[index]
            for key, value in entries.items():
                self.string(key, f"{at} key")
                if value is None or type(value) in (int, float, bool):
                    continue
                if type(value) is torch.Tensor and value.ndim == 0:
                    if not value.is_floating_point():
                        self.fail(f"{at}[{key!r}]", f"a {value.dtype} scalar")
                    continue
                self.tensor(
                    value, f"{at}[{key!r}]", parameter.dtype, tuple(parameter.shape)
                )

    def _check_feature_names(self, names, n_features, where):
        where = f"{where}.feature_names_in_"
        self.array(names, where, {np.dtype(object)}, (n_features,))
        for i, item in enumerate(names):
            self.string(item, f"{where}[{i}]")

    def _check_targets(self, values, n_outputs, where):
        """What the targets were: the regressor's y and loss, the classes."""
        if "_y_ndim" in values:
            ndim = self.integer(values["_y_ndim"], f"{where}._y_ndim", 1, 2)
            if ndim == 1 and n_outputs != 1:
                self.fail(f"{where}._y_ndim", f"1-D targets but {n_outputs} outputs")
        if "_fit_loss" in values:
            choices = {"squared_error", "poisson"}
            self.string(values["_fit_loss"], f"{where}._fit_loss", choices)
        multilabel = "_multilabel" in values and self.boolean(
            values["_multilabel"], f"{where}._multilabel"
        )
        if "classes_" in values:
            self._check_classes(
                values["classes_"], n_outputs, f"{where}.classes_", multilabel
            )

    def _check_classes(self, classes, n_outputs, where, multilabel=False):
        """As the classifier's _encode_targets: 2 classes, 1 output; K > 2, K;
        L labels of a multilabel fit, L."""
        self.array(classes, where, None, (None,))
        n_classes = len(classes)
        if n_classes < 2:
            self.fail(where, f"{n_classes} classes; a classifier has at least 2")
        expected = 1 if n_classes == 2 and not multilabel else n_classes
        if n_outputs != expected:
            self.fail(
                where,
                f"{n_classes} classes need {expected} network outputs, but "
                f"n_outputs_ is {n_outputs}",
            )
        try:
            distinct = len(set(classes.tolist()))
        except TypeError:  # unhashable labels
            distinct = -1
        if distinct != n_classes:
            self.fail(where, "the classes are not distinct labels")

    def _check_transformer(self, name, values, where):
        inner = values["estimator_"]
        if not isinstance(inner, BasePathKernelEstimator) or "module_" not in vars(
            inner
        ):
            self.fail(f"{where}.estimator_", "not a fitted path-kernel estimator")
        n_features = self.integer(
            values["n_features_in_"], f"{where}.n_features_in_", 1
        )
        if n_features != inner.n_features_in_:
            self.fail(
                f"{where}.n_features_in_",
                f"{n_features}, but the estimator's is {inner.n_features_in_}",
            )
        if "feature_names_in_" in values:
            self._check_feature_names(values["feature_names_in_"], n_features, where)
        n_out = self.integer(values["_n_features_out"], f"{where}._n_features_out", 1)
        if name == "PathKernelTransformer":
            n_rows = self.integer(
                values["n_samples_fit_"], f"{where}.n_samples_fit_", 1
            )
            shape = (n_rows, n_features)
            self.array(values["X_fit_"], f"{where}.X_fit_", _FIT_X_DTYPES, shape)
        elif name == "PathKernelNystroem":
            shape = (n_out, n_features)
            self.array(
                values["components_"], f"{where}.components_", _FIT_X_DTYPES, shape
            )
            indices = values["component_indices_"]
            where_indices = f"{where}.component_indices_"
            self.array(indices, where_indices, {np.dtype(np.int64)}, (n_out,))
            if indices.size and indices.min() < 0:
                self.fail(where_indices, "negative row indices")
            shape = (n_out, n_out)
            self.array(
                values["normalization_"], f"{where}.normalization_", _FLOAT64, shape
            )
        else:
            self.integer(values["seed_"], f"{where}.seed_", 0, np.iinfo(np.int32).max)
        if name == "PathKernelTransformer" and n_out != n_rows:
            self.fail(f"{where}._n_features_out", f"{n_out}, expected {n_rows}")

    # -- the network --------------------------------------------------------
    def _module(self, value, params, n_features, n_outputs, where):
        self.keys(
            value,
            where,
            {"__kind__", "n_features", "n_outputs", "state", "architecture"},
        )
        if not _is(value["__kind__"], "module"):
            self.fail(where, "not a module entry")
        for key, expected, attribute in (
            ("n_features", n_features, "n_features_in_"),
            ("n_outputs", n_outputs, "n_outputs_"),
        ):
            if type(value[key]) is not int or value[key] != expected:
                self.fail(
                    f"{where}.{key}",
                    f"{_show(value[key])}, but {attribute} is {expected}",
                )
        state = self._module_state(value["state"], where)
        architecture = value["architecture"]
        if architecture is not None:
            widths, activation = self._architecture(
                architecture, n_features, n_outputs, state["state_dict"], where
            )
            module = make_mlp(
                n_features,
                n_outputs,
                widths,
                activation,
                generator=torch.Generator().manual_seed(0),
            )
        else:
            spec = params.get("module")
            if spec is None:
                self.fail(where, "a custom network without a module parameter")
            module = build_module(spec, n_features, n_outputs, seed=0)
            # As fit wraps it: rows reshaped, token ids cast (same names).
            module = adapt_input(
                module, params.get("input_shape"), params.get("tokens", False)
            )
        self._restore(module, state, where)
        return module.to(self.device)

    def _module_state(self, state, where):
        """The saved dtype, weights and flags of a network, checked as data."""
        where = f"{where}.state"
        self.keys(state, where, {"dtype", "state_dict", "requires_grad", "training"})
        if state["dtype"] is not None:
            self.string(state["dtype"], f"{where}.dtype", _FLOAT_DTYPES)
        checked = {"dtype": state["dtype"]}
        for key in ("state_dict", "requires_grad", "training"):
            entries = self.keys(state[key], f"{where}.{key}", (), state[key])
            checked[key] = {}
            for name, v in entries.items():
                at = f"{where}.{key}[{name!r}]"
                self.string(name, f"{where}.{key} key")
                checked[key][name] = (
                    self.decode(v, at) if key == "state_dict" else self.boolean(v, at)
                )
        for name, v in checked["state_dict"].items():
            if type(v) is not torch.Tensor and not name.endswith("_extra_state"):
                self.fail(f"{where}.state_dict[{name!r}]", f"not a tensor: {_show(v)}")
        return checked

    def _architecture(self, architecture, n_features, n_outputs, state_dict, where):
        """The default MLP's widths, checked against the saved weights' shapes."""
        where = f"{where}.architecture"
        self.keys(architecture, where, {"hidden_layer_sizes", "activation"})
        hidden = self.integers(
            architecture["hidden_layer_sizes"], f"{where}.hidden_layer_sizes", 1
        )
        activation = self.string(
            architecture["activation"], f"{where}.activation", ACTIVATIONS
        )
        widths = [n_features, *hidden, n_outputs]
        expected = {}
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            expected[f"{2 * i}.weight"] = (fan_out, fan_in)
            expected[f"{2 * i}.bias"] = (fan_out,)
        got = {
            key: tuple(v.shape) if type(v) is torch.Tensor else None
            for key, v in state_dict.items()
        }
        if got != expected:
            self.fail(
                where,
                f"widths {widths} need weights of shapes {expected}, but the file "
                f"holds {reprlib.repr(got)}",
            )
        return hidden, activation

    def _restore(self, module, state, where):
        """Give ``module`` the checked dtype, weights and flags, in place."""
        if state["dtype"] is not None:
            module.to(dtype=_FLOAT_DTYPES[state["dtype"]])
        self._check_state_dict(module, state["state_dict"])
        module.load_state_dict(state["state_dict"], strict=True)
        for key, items in (
            ("requires_grad", dict(module.named_parameters())),
            ("training", dict(module.named_modules())),
        ):
            unknown = [name for name in state[key] if name not in items]
            if unknown:
                self.fail(f"{where}.state.{key}", f"names the module lacks: {unknown}")
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(state["requires_grad"].get(name, True))
        for name, submodule in module.named_modules():
            submodule.training = state["training"].get(name, submodule.training)

    def _check_state_dict(self, module, state_dict):
        """Refuse weights that do not fit ``module``, with what differs."""
        expected = module.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise _LoadError(
                f"{self.name}: the module does not fit the saved weights: keys "
                f"missing from the file {missing}, keys the module lacks "
                f"{unexpected}. Pass the architecture the estimator was fitted "
                "with as module=."
            )
        for key, tensor in state_dict.items():
            own = expected[key]
            if type(own) is not torch.Tensor:
                continue  # extra state: the module's own load handles it
            if type(tensor) is not torch.Tensor:
                raise _LoadError(
                    f"{self.name}: the module does not fit the saved weights: "
                    f"{key!r} is a tensor in the module, a {type(tensor).__name__} "
                    "in the file."
                )
            if tuple(own.shape) != tuple(tensor.shape) or own.dtype != tensor.dtype:
                raise _LoadError(
                    f"{self.name}: the module does not fit the saved weights: "
                    f"{key!r} has shape {tuple(own.shape)} and dtype {own.dtype} "
                    f"in the module, but shape {tuple(tensor.shape)} and dtype "
                    f"{tensor.dtype} in the file. Pass the architecture the "
                    "estimator was fitted with as module=."
                )

    # -- the path -----------------------------------------------------------
    def _trajectory(self, value, module, n_rows, n_outputs, where):
        """The packed path, checked against the network and the training rows.

        Returned as the packed state for :meth:`finish` to build: its
        ``_directory`` says only whether the path was kept on disk.
        """
        self.keys(value, where, {"__kind__", "state"})
        if not _is(value["__kind__"], "trajectory"):
            self.fail(where, "not a trajectory entry")
        state = self.decode(value["state"], where)
        if type(state) is dict:  # the defaults of paths saved by older versions
            if "solver" not in state:
                state["solver"] = {"alpha": state.pop("alpha", 0.0)}
            for key, default in _TRAJECTORY_DEFAULTS.items():
                state.setdefault(key, default)
        self.keys(state, where, PACKED_KEYS)
        solver = self._solver(state["solver"], f"{where}.solver")
        trainable = trainable_parameters(module)
        dtype = trainable[0][1].dtype if trainable else torch.float32
        width = self._layout(state, trainable, where)
        n_steps = self._steps(
            state["_packed_steps"], dtype, n_rows, n_outputs, f"{where}._packed_steps"
        )
        self._checkpoints(state, solver, n_steps, width, dtype, where)
        if state["_directory"] is not None:
            self.string(state["_directory"], f"{where}._directory")
        return state

    def _solver(self, value, where):
        self.keys(value, where, (), _SOLVER_FIELDS)
        for key, v in value.items():
            at = f"{where}.{key}"
            if key == "name":
                self.string(v, at, SOLVERS)
            elif key == "nesterov":
                self.boolean(v, at)
            elif key == "momentum_form":  # absent in older files: "buffer"
                self.string(v, at, MOMENTUM_FORMS)
            elif not (self.number(v, at) >= 0 and math.isfinite(v)):
                self.fail(at, f"expected a finite number >= 0, got {v!r}")
        return Solver(**value)

    def _layout(self, state, trainable, where):
        """Names, shapes and sizes of the parameters: the network's trainable ones."""
        names = [name for name, _ in trainable]
        shapes = [tuple(p.shape) for _, p in trainable]
        got = state["_names"]
        if (
            type(got) is not list
            or any(type(n) is not str for n in got)
            or got != names
        ):
            self.fail(
                f"{where}._names",
                f"{reprlib.repr(got)}, but the network's trainable parameters are "
                f"{names}",
            )
        got = state["_shapes"]
        if type(got) is not list:
            self.fail(f"{where}._shapes", f"expected a list, got {_show(got)}")
        got = [
            tuple(self.integers(s, f"{where}._shapes[{i}]")) for i, s in enumerate(got)
        ]
        if got != shapes:
            self.fail(f"{where}._shapes", f"{got}, but the network's are {shapes}")
        numels = [math.prod(shape) for shape in shapes]
        if self.integers(state["_numels"], f"{where}._numels") != numels:
            self.fail(f"{where}._numels", f"{state['_numels']}, expected {numels}")
        state["_shapes"] = got
        return sum(numels)

    def _steps(self, packed, dtype, n_rows, n_outputs, where):
        """Every step's size, batch, batch weights and loss derivatives."""
        if type(packed) not in (list, tuple) or len(packed) != 5:
            self.fail(where, f"expected 5 entries, got {_show(packed)}")
        sizes, lengths, batches, weights, gradients = packed
        self.numbers(sizes, f"{where}[0] (step sizes)")
        lengths = self.integers(lengths, f"{where}[1] (batch lengths)", 1)
        n_steps = len(sizes)
        if len(lengths) != n_steps or any(n > n_rows for n in lengths):
            self.fail(
                f"{where}[1] (batch lengths)",
                f"{len(lengths)} batches of up to {max(lengths, default=0)} rows, "
                f"expected {n_steps} (one per step) of at most {n_rows} rows",
            )
        if n_steps == 0:
            if any(t is not None for t in (batches, weights, gradients)):
                self.fail(where, "records of steps on a path of none")
            return 0
        total = sum(lengths)
        self.tensor(batches, f"{where}[2] (batch rows)", torch.int64, (total,))
        if batches.min() < 0 or batches.max() >= n_rows:
            self.fail(
                f"{where}[2] (batch rows)",
                f"row indices outside the {n_rows} training rows of _fit_X",
            )
        self.tensor(weights, f"{where}[3] (batch weights)", dtype, (total,))
        shape = (total, n_outputs)
        self.tensor(gradients, f"{where}[4] (loss derivatives)", dtype, shape)
        return n_steps

    def _checkpoints(self, state, solver, n_steps, width, dtype, where):
        """The stored parameters: every ``record_every``-th step's, and w_T."""
        record_every = self.integer(state["record_every"], f"{where}.record_every", 1)
        steps = list(range(0, n_steps, record_every))
        if (
            self.integers(state["_checkpoint_steps"], f"{where}._checkpoint_steps")
            != steps
        ):
            self.fail(
                f"{where}._checkpoint_steps",
                f"expected every {record_every}th of the {n_steps} steps",
            )
        at = f"{where}._packed_checkpoints"
        self.tensor(
            state["_packed_checkpoints"], at, dtype, (len(steps), width), none=not steps
        )
        at = f"{where}._packed_preconditioners"
        if solver.diagonal:
            shape = (n_steps, width)
            self.tensor(
                state["_packed_preconditioners"], at, dtype, shape, none=not n_steps
            )
        elif state["_packed_preconditioners"] is not None:
            self.fail(at, f"solver {solver.name!r} keeps no preconditioners")
        self.tensor(state["_final"], f"{where}._final", dtype, (width,))
        self.string(state["quadrature"], f"{where}.quadrature", RULES)
        try:
            check_rule(state["quadrature"], state["_kernel_nodes"])
        except (ValueError, TypeError) as exc:
            self.fail(f"{where}._kernel_nodes", str(exc))
        adaptive = state["_adaptive_steps"]
        if adaptive is not None:
            at = f"{where}._adaptive_steps"
            adaptive = self.integers(adaptive, at)
            if adaptive and (
                adaptive[0] != 0
                or any(b <= a for a, b in zip(adaptive, adaptive[1:]))
                or not set(adaptive) <= set(steps)
            ):
                self.fail(at, "not increasing recorded steps from 0")
