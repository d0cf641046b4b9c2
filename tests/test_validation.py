"""Device resolution and input conversion."""

import numpy as np
import pytest
import torch

from sklearn_pathkernel._validation import (
    check_kernel_input,
    resolve_device,
    to_tensor,
)


def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_a_gpu_is_refused(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        resolve_device(device)


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="only 1 CUDA device\\(s\\) exist"):
        resolve_device("cuda:3")


@pytest.mark.parametrize(
    "device, message",
    [("banana", "must be 'auto', 'cpu', 'cuda'"), ("meta", "CPU or CUDA device")],
)
def test_unknown_devices_name_the_parameter(device, message):
    with pytest.raises(ValueError, match=f"The 'device' parameter {message}|{message}"):
        resolve_device(device)


def test_to_tensor_casts_and_copies():
    X = np.arange(6.0).reshape(2, 3)
    X.setflags(write=False)  # read-only input must not warn or be shared
    tensor = to_tensor(X, dtype=torch.float32, device="cpu")
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 3)
    tensor[0, 0] = 42.0
    assert X[0, 0] == 0.0


def test_to_tensor_refuses_float32_overflow_and_names_the_array():
    with pytest.raises(ValueError, match="y contains values that are not finite"):
        to_tensor(np.array([[1e300]]), dtype=torch.float32, device="cpu", name="y")
    assert (
        to_tensor(np.array([[1e300]]), dtype=torch.float64, device="cpu").item()
        == 1e300
    )


def test_check_kernel_input_converts_integer_tensors():
    out = check_kernel_input(torch.ones(2, 3, dtype=torch.int64), name="X")
    assert out.is_floating_point()


def test_check_kernel_input_feature_mismatch_names_both():
    with pytest.raises(ValueError, match="Y has 2 features, but X has 3 features"):
        check_kernel_input(np.ones((1, 2)), name="Y", n_features=3)
