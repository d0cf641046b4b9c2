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
saved one, attribute for attribute. Values are plain data or tensors, or a
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
  loaded, they go to a new file in the same directory (a temporary one when
  it is gone);
- ``"estimator"``: a nested estimator (``PathKernelTransformer.estimator_``).

Anything else (a new attribute of a type this module does not know) makes
:func:`save` raise a ``TypeError`` naming it, rather than write a file that
would not round-trip.
"""

import copy
import io
import os
import pathlib
import pickle
import warnings

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
from ._training._trajectory import Trajectory
from ._transformers import PathKernelTransformer
from .exceptions import InconsistentVersionWarning

__all__ = ["save", "load"]

FORMAT = "sklearn_pathkernel"
FORMAT_VERSION = 1

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


def load(path, *, module=None, map_location="cpu"):
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
        When the file was not written by :func:`save` (or holds objects that
        ``weights_only`` refuses), uses another format version, or when
        ``module`` is missing, not needed, or does not fit the saved weights.

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
    """
    from . import __version__

    name = _path_name(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(
            f"{name} is not a file written by sklearn_pathkernel.save, or holds "
            f"objects that a safe load refuses: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{name} is not a file written by sklearn_pathkernel.save.")
    version = record.get("format_version")
    saved_with = record.get("sklearn_pathkernel_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{name} uses format version {version!r} (written by "
            f"sklearn_pathkernel {saved_with}), but sklearn_pathkernel "
            f"{__version__} reads format version {FORMAT_VERSION} only. Load it "
            f"with sklearn_pathkernel {saved_with}, or refit the estimator."
        )
    estimator_record = record.get("estimator")
    if saved_with != __version__:
        estimator_name = (
            estimator_record.get("class", "an estimator")
            if isinstance(estimator_record, dict)
            else "an estimator"
        )
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name=estimator_name,
                current_version=__version__,
                original_version=saved_with,
                path=name,
                original_sklearn_version=record.get("sklearn_version"),
            ),
            stacklevel=2,
        )
    loader = _Loader(
        name, module, resolve_device(map_location, parameter="map_location")
    )
    estimator = loader.decode(estimator_record, "estimator")
    if not isinstance(estimator, tuple(_CLASSES.values())):
        raise ValueError(f"{name} does not hold an estimator.")
    if module is not None and not loader.module_used:
        raise ValueError(
            f"{name} was saved with the default network (module=None); do not "
            "pass module= to load it."
        )
    return estimator


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


# -- decoding -----------------------------------------------------------------
class _Loader:
    """Rebuild objects from the tagged data of a file, nothing else."""

    def __init__(self, name, module, device):
        self.name = name
        self.module = module
        self.device = device
        self.module_used = False

    def fail(self, where, why):
        raise ValueError(f"{self.name} is damaged or not ours: {where}: {why}")

    def decode(self, value, where):
        if type(value) in _PLAIN or type(value) is torch.Tensor:
            return value
        if type(value) in (list, tuple):
            items = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return items if type(value) is list else tuple(items)
        if type(value) is not dict or "__kind__" not in value:
            self.fail(where, f"unexpected {type(value).__name__}")
        kind = value["__kind__"]
        method = getattr(self, f"_decode_{kind}", None)
        if not isinstance(kind, str) or method is None:
            self.fail(where, f"unknown entry {kind!r}")
        try:
            return method(value, where)
        except (KeyError, TypeError, IndexError) as exc:
            self.fail(where, f"{type(exc).__name__}: {exc}")

    def _decode_dict(self, value, where):
        return {
            self.decode(k, f"{where} key"): self.decode(v, f"{where}[{k!r}]")
            for k, v in value["items"]
        }

    def _decode_numpy_scalar(self, value, where):
        return self._decode_ndarray(value["array"], where)[()]

    def _decode_bytes(self, value, where):
        return value["data"].numpy().tobytes()

    def _decode_path(self, value, where):
        return pathlib.Path(value["value"])

    def _decode_torch_device(self, value, where):
        return torch.device(value["value"])

    def _decode_torch_dtype(self, value, where):
        dtype = getattr(torch, value["value"], None)
        if not isinstance(dtype, torch.dtype):
            self.fail(where, f"unknown torch dtype {value['value']!r}")
        return dtype

    def _decode_random_state(self, value, where):
        rng = np.random.RandomState()
        rng.set_state(self.decode(value["state"], where))
        return rng

    def _decode_ndarray(self, value, where):
        dtype = np.dtype(value["dtype"])
        shape = tuple(value["shape"])
        if "tensor" in value:
            array = value["tensor"].numpy()
        elif "bytes" in value:
            array = value["bytes"].numpy().view(dtype)
        elif dtype.kind == "O":
            items = [
                self.decode(v, f"{where}[{i}]") for i, v in enumerate(value["list"])
            ]
            array = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):
                array[i] = item
        else:
            array = np.array(value["list"], dtype=dtype)
        if array.dtype != dtype:
            self.fail(where, f"array of {array.dtype} where {dtype} was stored")
        array = array.reshape(shape)
        return np.asfortranarray(array) if value["fortran"] else array

    def _decode_trajectory(self, value, where):
        trajectory = Trajectory.__new__(Trajectory)
        trajectory.__setstate__(self.decode(value["state"], where))
        return trajectory

    def _decode_custom_module(self, value, where):
        if self.module is None:
            raise ValueError(
                f"{self.name} was saved with a custom module ({value['type']}); "
                "pass module=... to load: the same architecture, as an "
                "nn.Module or a factory module(n_features, n_outputs)."
            )
        self.module_used = True
        if value["state"] is None or not isinstance(self.module, nn.Module):
            return self.module
        module = copy.deepcopy(self.module)  # the caller's object stays as it is
        self._restore(module, value["state"], where)
        return module

    def _decode_estimator(self, value, where):
        name = value["class"]
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            self.fail(where, f"unknown estimator class {name!r}")
        where = f"{where} ({name})"
        params = {
            key: self.decode(v, f"{where}.{key}") for key, v in value["params"].items()
        }
        estimator = cls(**params)
        for key, v in value["attributes"].items():
            if not isinstance(key, str) or not key.isidentifier() or key[:2] == "__":
                self.fail(where, f"not an attribute name: {key!r}")
            if key == "module_":
                setattr(estimator, key, self._module(v, params, f"{where}.{key}"))
            else:
                setattr(estimator, key, self.decode(v, f"{where}.{key}"))
        module = getattr(estimator, "module_", None)
        trajectory = getattr(estimator, "trajectory_", None)
        if module is not None and trajectory is not None:
            names = [n for n, _ in trainable_parameters(module)]
            if names != trajectory.parameter_names:
                raise ValueError(
                    f"{self.name}: the module's trainable parameters {names} are "
                    f"not those of the saved path {trajectory.parameter_names}."
                )
        return estimator

    def _module(self, value, params, where):
        if type(value) is not dict or value.get("__kind__") != "module":
            self.fail(where, "not a module entry")
        n_features, n_outputs = value["n_features"], value["n_outputs"]
        architecture = value["architecture"]
        if architecture is not None:
            module = make_mlp(
                n_features,
                n_outputs,
                architecture["hidden_layer_sizes"],
                architecture["activation"],
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
        self._restore(module, value["state"], where)
        return module.to(self.device)

    def _restore(self, module, state, where):
        """Give ``module`` the saved dtype, weights and flags, in place."""
        dtype = state["dtype"]
        if dtype is not None:
            if dtype not in _FLOAT_DTYPES:
                self.fail(where, f"unknown dtype {dtype!r}")
            module.to(dtype=_FLOAT_DTYPES[dtype])
        state_dict = {
            key: self.decode(v, f"{where}[{key!r}]")
            for key, v in state["state_dict"].items()
        }
        self._check_state_dict(module, state_dict, where)
        module.load_state_dict(state_dict, strict=True)
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(state["requires_grad"].get(name, True))
        for name, submodule in module.named_modules():
            submodule.training = state["training"].get(name, submodule.training)

    def _check_state_dict(self, module, state_dict, where):
        """Refuse weights that do not fit ``module``, with what differs."""
        expected = module.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"{self.name}: the module does not fit the saved weights: keys "
                f"missing from the file {missing}, keys the module lacks "
                f"{unexpected}. Pass the architecture the estimator was fitted "
                "with as module=."
            )
        for key, tensor in state_dict.items():
            if type(tensor) is not torch.Tensor:
                continue  # extra state: the module's own load handles it
            own = expected[key]
            if tuple(own.shape) != tuple(tensor.shape) or own.dtype != tensor.dtype:
                raise ValueError(
                    f"{self.name}: the module does not fit the saved weights: "
                    f"{key!r} has shape {tuple(own.shape)} and dtype {own.dtype} "
                    f"in the module, but shape {tuple(tensor.shape)} and dtype "
                    f"{tensor.dtype} in the file. Pass the architecture the "
                    "estimator was fitted with as module=."
                )
