"""GPU behaviour; every test skips when torch.cuda.is_available() is false."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import (
    PathKernelRegressor,
    path_features,
    path_influence,
    path_kernel,
    path_kernel_diagonal,
    tangent_kernel,
)
from sklearn_pathkernel._explain import _decompose
from sklearn_pathkernel._explain._decompose import decompose_path
from sklearn_pathkernel._kernels import _features, _path

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


def test_transformer_kernel_on_the_gpu_agrees_with_the_cpu():
    # The attention rule's batched backward, on the GPU against the CPU.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=6, dropout=0.0, batch_first=True
        ),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 5, 2),
    ).double()
    X = torch.randn(12, 5, 8, dtype=torch.float64)
    on_cpu = tangent_kernel(net, None, X, engine="hooks", trace=False)
    on_gpu = tangent_kernel(net, None, X, engine="hooks", trace=False, device="cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-10, atol=1e-12)
    assert next(net.parameters()).device.type == "cpu"  # worked on a copy


def test_decompose_path_places_numpy_rows_on_the_gpu(data):
    X, y = data
    gpu = _fit("cuda", X, y)
    from_arrays = decompose_path(gpu.module_, gpu.trajectory_, X, X[:3])
    np.testing.assert_allclose(
        from_arrays.contributions, gpu.decompose(X[:3]).contributions, rtol=1e-10
    )


def test_a_dataframe_gives_the_bits_of_its_array_on_the_gpu(data):
    # A DataFrame's values are column-major: without C-contiguous tensors,
    # cuBLAS takes another kernel and float32 results round differently.
    pd = pytest.importorskip("pandas")
    X, y = data
    est = PathKernelRegressor((16,), max_iter=10, device="cuda", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert np.array_equal(est.predict(pd.DataFrame(X)), est.predict(X))
    column_major = np.asfortranarray(X)
    assert np.array_equal(est.predict(column_major), est.predict(X))
    assert np.array_equal(est.kernel(column_major), est.kernel(X))


def test_every_path_on_the_gpu_agrees_with_the_cpu(data, device="cuda"):
    # Issue 21 item 2: the diagonal, the features, both decompositions and
    # TracIn run on the device's grid there, and agree with the CPU's.
    X, y = data
    results = []
    for est in (_fit(device, X, y), _fit("cpu", X, y)):
        module, trajectory = est.module_, est.trajectory_
        results.append(
            (
                path_kernel_diagonal(module, trajectory, X),
                *path_features(module, trajectory, X, n_components=8, seed=0),
                est.decompose(X[:5]).contributions,
                est.decompose(X[:5], exact=True).contributions,
                path_influence(module, trajectory, X, y, loss="squared_error"),
            )
        )
    for on_gpu, on_cpu in zip(*results):
        np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-8, atol=1e-12)


def test_no_operation_in_the_gpu_loops_waits_for_the_host(
    data, monkeypatch, device="cuda"
):
    # Issue 21 items 1 and 4 on the device itself: inside the tasks of the
    # kernel, the diagonal, the sketch and the decomposition, no copy to the
    # host and no scalar read back.
    X, y = data
    est = _fit(device, X, y)
    waits = []
    for module, name in [
        (_path, "_strip_part"),
        (_path, "_diagonal_part"),
        (_features, "_sketch_part"),
        (_decompose, "_checkpoint_part"),
    ]:

        def counted(*args, task=getattr(module, name), name=name):
            with Dispatched() as mode:
                result = task(*args)
            waits.extend(f"{name}: {op}" for op in mode.synchronising)
            return result

        monkeypatch.setattr(module, name, counted)
    est.kernel(X)
    path_kernel_diagonal(est.module_, est.trajectory_, X)
    path_features(est.module_, est.trajectory_, X, n_components=8, seed=0)
    est.decompose(X[:5])
    path_influence(est.module_, est.trajectory_, X, y, loss="squared_error")
    assert waits == []


# -- strips through pinned buffers (issue 21 item 1, _compute/_transfer.py) -------


def _transfer_modules():
    from sklearn_pathkernel._compute import _blocking, _result, _transfer

    return _blocking, _result, _transfer


def test_strips_reach_the_host_through_pinned_buffers_after_their_compute():
    # Each strip is handed in while its product still runs: the copy must
    # wait for it (the event), and the strip's memory, freed at once and
    # filled by the next allocation, must not be reused before the copy has
    # read it (record_stream).
    _, _result, _transfer = _transfer_modules()
    A = torch.randn(4096, 4096, device="cuda", generator=torch.Generator("cuda"))
    result = _result.open_result(
        None, (12, 4096), dtype=np.float64, fingerprint=None, what="K", remedy=""
    )
    kept = []
    with _transfer.StripWriter(result, torch.device("cuda")) as writer:
        for r0 in range(0, 12, 4):
            strip = (A @ A)[r0 : r0 + 4].double()
            kept.append(strip.clone())
            writer.put(strip, r0, r0 + 4, 0)
            del strip
            torch.full((4, 4096), float("nan"), dtype=torch.float64, device="cuda")
    assert not writer._pending and result.is_done(0, 4) and result.is_done(8, 12)
    assert np.array_equal(result.array, torch.cat(kept).cpu().numpy())
    assert len(writer._free) == 2 and all(b.is_pinned() for b in writer._free)


def _small_device_tiles(monkeypatch):
    """8-row device tiles, one tile a strip: 50 rows make 7 strips."""
    _blocking, _, _ = _transfer_modules()
    monkeypatch.setattr(_blocking, "DEVICE_TILE_ROWS", 8)
    return {"working_memory": 1e-4}


class _Synchronous:
    """A copier that copies at once into pageable memory: today's ``.cpu()``."""

    def allocate(self, numel):
        return torch.empty(numel, dtype=torch.float64)

    def start(self, strip, target):
        target.copy_(strip)
        return type(
            "Done", (), {"done": lambda self: True, "wait": lambda self: None}
        )()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("trace", [True, False])
def test_overlapped_strips_give_the_kernel_of_a_synchronous_write(
    data, monkeypatch, symmetric, trace
):
    X, y = data
    est = _fit("cuda", X, y)
    options = {**_small_device_tiles(monkeypatch), "trace": trace}
    Y = None if symmetric else X[:21] * 0.5
    overlapped = path_kernel(est.module_, est.trajectory_, X, Y, **options)
    _, _, _transfer = _transfer_modules()
    writers = []

    def synchronous(result, device, n_strips):
        writers.append(_transfer.StripWriter(result, device, copier=_Synchronous()))
        return writers[-1]

    monkeypatch.setattr(_path, "StripWriter", synchronous)
    plain = path_kernel(est.module_, est.trajectory_, X, Y, **options)
    assert writers and not writers[0]._pending
    assert np.array_equal(overlapped, plain)  # same device and tiles: same bits
    on_cpu = path_kernel(est.module_, est.trajectory_, X, Y, device="cpu", **options)
    np.testing.assert_allclose(overlapped, on_cpu, rtol=1e-8, atol=1e-12)


def test_an_interrupted_gpu_kernel_resumes_to_the_same_bits(
    data, monkeypatch, tmp_path
):
    # KeyboardInterrupt with a strip in flight: only strips whose bytes
    # arrived are recorded, so the resumed file equals an uninterrupted run.
    X, y = data
    est = _fit("cuda", X, y)
    options = _small_device_tiles(monkeypatch)
    whole = path_kernel(est.module_, est.trajectory_, X, **options)
    _, _, _transfer = _transfer_modules()

    class Interrupted(_transfer.StripWriter):
        def put(self, *args):
            super().put(*args)
            if len(self.result._done) == 2:  # the third strip in flight
                raise KeyboardInterrupt

    path = tmp_path / "K.npy"
    with monkeypatch.context() as patch:
        patch.setattr(_path, "StripWriter", Interrupted)
        with pytest.raises(KeyboardInterrupt):
            path_kernel(est.module_, est.trajectory_, X, out=path, **options)
    import json

    progress = json.loads((tmp_path / "K.npy.progress.json").read_text())
    assert 2 <= len(progress["done"]) <= 3
    resumed = path_kernel(est.module_, est.trajectory_, X, out=path, **options)
    assert np.array_equal(np.asarray(resumed), whole)
