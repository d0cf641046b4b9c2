"""A trained network's path kernel, usable everywhere scikit-learn takes a kernel.

Every model learned by gradient descent is approximately a kernel machine
whose kernel, the path kernel, sums the dot products of the model's parameter
gradients at two inputs along the path the parameters took while training
(P. Domingos, arXiv:2012.00152).
"""

import importlib

__version__ = "0.1.0.dev0"

# The public names are imported on first use (PEP 562), not with the package:
# they bring torch and scikit-learn, seconds of imports that the command line
# (``python -m sklearn_pathkernel --help``) need not pay. Name -> its module.
_WHERE = {
    "PathKernelClassifier": "._estimators",
    "PathKernelRegressor": "._estimators",
    "PathKernelTransformer": "._transformers",
    "PathKernelFeatures": "._kernel_approximation",
    "PathKernelNystroem": "._kernel_approximation",
    "PathKernel": "._gaussian_process",
    "KernelMachine": "._explain._decompose",
    "Trajectory": "._training._trajectory",
    "path_kernel": "._kernels._path",
    "path_kernel_diagonal": "._kernels._path",
    "tangent_kernel": "._kernels._path",
    "path_features": "._kernels._features",
    "decompose_path": "._explain._decompose",
    "path_influence": "._explain._influence",
    "path_self_influence": "._explain._influence",
    "save": "._persistence",
    "load": "._persistence",
}

# Public modules, attributes of the package once asked for: the eager imports
# made ``engines`` and ``exceptions`` attributes, and code may rely on it.
_SUBMODULES = ("cli", "engines", "exceptions", "plotting")

__all__ = [
    "PathKernelClassifier",
    "PathKernelRegressor",
    "PathKernelTransformer",
    "PathKernelFeatures",
    "PathKernelNystroem",
    "PathKernel",
    "KernelMachine",
    "Trajectory",
    "path_kernel",
    "path_kernel_diagonal",
    "tangent_kernel",
    "path_features",
    "decompose_path",
    "path_influence",
    "path_self_influence",
    "save",
    "load",
    "__version__",
]


def __getattr__(name):
    """Import a public name (or subpackage) the first time it is asked for."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    """The public names and subpackages, imported or not yet."""
    return sorted({*globals(), *__all__, *_SUBMODULES})
