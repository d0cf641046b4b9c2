"""A trained network's path kernel, usable everywhere scikit-learn takes a kernel.

Every model learned by gradient descent is approximately a kernel machine
whose kernel, the path kernel, sums the dot products of the model's parameter
gradients at two inputs along the path the parameters took while training
(P. Domingos, arXiv:2012.00152).
"""

from ._estimators import PathKernelClassifier, PathKernelRegressor
from ._explain._decompose import KernelMachine, decompose_path
from ._gaussian_process import PathKernel
from ._kernel_approximation import PathKernelFeatures, PathKernelNystroem
from ._kernels._features import path_features
from ._kernels._path import path_kernel, path_kernel_diagonal, tangent_kernel
from ._persistence import load, save
from ._training._trajectory import Trajectory
from ._transformers import PathKernelTransformer

__version__ = "0.1.0.dev0"

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
    "save",
    "load",
    "__version__",
]
