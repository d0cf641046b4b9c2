"""GPU behaviour; every test skips when torch.cuda.is_available() is false."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor, path_kernel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(50, 4)
    return X, np.sin(X[:, 0]) + X[:, 1]


def _fit(device, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return PathKernelRegressor(
            (16,), max_iter=20, dtype="float64", device=device, random_state=0
        ).fit(X, y)


def test_training_and_kernel_run_on_the_gpu_and_agree_with_the_cpu(data):
    X, y = data
    gpu, cpu = _fit("cuda", X, y), _fit("cpu", X, y)
    assert next(gpu.module_.parameters()).device.type == "cuda"
    K_gpu = gpu.kernel(X)
    assert isinstance(K_gpu, np.ndarray) and K_gpu.dtype == np.float64
    np.testing.assert_allclose(K_gpu, cpu.kernel(X), rtol=1e-8)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), rtol=1e-8)


def test_auto_device_picks_the_gpu(data):
    X, y = data
    est = _fit("auto", X, y)
    assert next(est.module_.parameters()).device.type == "cuda"


def test_path_kernel_of_a_cpu_model_on_the_gpu(data):
    X, y = data
    cpu = _fit("cpu", X, y)
    K = path_kernel(cpu.module_, cpu.trajectory_, X, device="cuda")
    np.testing.assert_allclose(K, cpu.kernel(X), rtol=1e-8)
    assert next(cpu.module_.parameters()).device.type == "cpu"


def test_pickle_keeps_the_network_on_its_gpu(data):
    # The pickle holds the network on the CPU (it loads anywhere, see
    # test_base) and puts it back on the GPU it came from; the estimator
    # pickled does not move.
    X, y = data
    gpu = _fit("cuda", X, y)
    payload = pickle.dumps(gpu)
    assert next(gpu.module_.parameters()).device.type == "cuda"
    loaded = pickle.loads(payload)
    assert next(loaded.module_.parameters()).device.type == "cuda"
    assert np.array_equal(loaded.predict(X), gpu.predict(X))
    assert np.array_equal(loaded.kernel(X), gpu.kernel(X))


def _small_cnn(n_features, n_outputs):
    """Rows of 9 features reach it as 1x3x3 images (input_shape)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 2),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(8, n_outputs),
    )


def _fit_cnn(device="cpu"):
    rng = np.random.RandomState(0)
    X = rng.randn(30, 9)
    y = np.sin(X.sum(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            module=_small_cnn,
            input_shape=(1, 3, 3),
            max_iter=10,
            dtype="float64",
            device=device,
            random_state=0,
        ).fit(X, y)
    return est, X


def test_hooks_engine_on_the_gpu_agrees_with_the_cpu(device="cuda"):
    est, X = _fit_cnn()
    on_cpu = path_kernel(est.module_, est.trajectory_, X, engine="hooks")
    on_gpu = path_kernel(est.module_, est.trajectory_, X, engine="hooks", device=device)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-8)
    gpu_est, _ = _fit_cnn(device)
    np.testing.assert_allclose(gpu_est.kernel(X), est.kernel(X), rtol=1e-8)
