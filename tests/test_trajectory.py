"""Tests for Trajectory, built by hand through its recording methods."""

import gc
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_pathkernel._training._solvers import Solver
from sklearn_pathkernel._training._trajectory import (
    PACKED_KEYS,
    Step,
    Trajectory,
    flatten_parameters,
)

SHAPES = {"a": (2, 3), "b": (4,)}
N_PARAMETERS = 10


def _step(step_size, t=0):
    batch = torch.tensor([t, t + 1], dtype=torch.int64)
    return Step(
        float(step_size),
        batch,
        torch.tensor([0.25, 0.75], dtype=torch.float64),
        torch.full((2, 1), float(t), dtype=torch.float64),
    )


def _flat(t):
    # Parameters at step t: distinct entries, shifted by t, so every
    # checkpoint is recognisable.
    return torch.arange(N_PARAMETERS, dtype=torch.float64) + 100.0 * t


def _build(step_sizes, record_every=1, final=True):
    traj = Trajectory(SHAPES, record_every=record_every)
    for t, eps in enumerate(step_sizes):
        traj._append_step(_flat(t), _step(eps, t))
    if final:
        traj._set_final(_flat(len(step_sizes)))
    return traj


def test_empty_trajectory():
    traj = Trajectory(SHAPES)
    assert len(traj) == 0
    assert traj.n_steps == 0
    assert traj.n_parameters == N_PARAMETERS
    assert traj.weights.shape == (0,)
    assert traj.checkpoint_steps.shape == (0,)
    assert traj.step_sizes.shape == (0,)
    assert traj.parameter_names == ["a", "b"]


def test_weights_record_every_one_are_step_sizes():
    sizes = [0.1, 0.2, 0.05, 0.4, 0.3]
    traj = _build(sizes)
    assert len(traj) == 5
    assert traj.n_steps == 5
    np.testing.assert_array_equal(traj.checkpoint_steps, np.arange(5))
    np.testing.assert_allclose(traj.weights, sizes, rtol=1e-15)
    np.testing.assert_array_equal(traj.step_sizes, sizes)
    assert traj.weights.dtype == np.float64
    assert traj.step_sizes.dtype == np.float64
    assert traj.checkpoint_steps.dtype == np.int64


@pytest.mark.parametrize(
    "n_steps, expected_steps, expected_weights",
    [
        # 7 steps in groups of 3: the last group holds a single step.
        (7, [0, 3, 6], [0.1 + 0.2 + 0.3, 0.4 + 0.5 + 0.6, 0.7]),
        # 8 steps: last group of 2.
        (8, [0, 3, 6], [0.1 + 0.2 + 0.3, 0.4 + 0.5 + 0.6, 0.7 + 0.8]),
        # 6 steps: even groups.
        (6, [0, 3], [0.1 + 0.2 + 0.3, 0.4 + 0.5 + 0.6]),
        # fewer steps than record_every.
        (2, [0], [0.1 + 0.2]),
    ],
)
def test_weights_record_every_three(n_steps, expected_steps, expected_weights):
    sizes = [0.1 * (t + 1) for t in range(n_steps)]
    traj = _build(sizes, record_every=3)
    assert traj.record_every == 3
    assert len(traj) == len(expected_steps)
    assert traj.n_steps == n_steps
    np.testing.assert_array_equal(traj.checkpoint_steps, expected_steps)
    np.testing.assert_allclose(traj.weights, expected_weights, rtol=1e-12)
    assert traj.weights.sum() == pytest.approx(sum(sizes), rel=1e-12)
    # Checkpoint k holds the parameters of step checkpoint_steps[k].
    for k, t in enumerate(expected_steps):
        assert torch.equal(traj.flat_parameters(k), _flat(t))


def test_step_records_and_sizes():
    traj = _build([0.3, 0.1, 0.2], record_every=2)
    for t in range(3):
        step = traj.step(t)
        assert isinstance(step, Step)
        assert step.step_size == [0.3, 0.1, 0.2][t]
        assert torch.equal(step.batch, torch.tensor([t, t + 1]))
        assert torch.equal(step.output_gradients, torch.full((2, 1), float(t)).double())
    np.testing.assert_array_equal(traj.step_sizes, [0.3, 0.1, 0.2])
    np.testing.assert_allclose(traj.weights, [0.4, 0.2])


def test_append_step_copies_parameters():
    traj = Trajectory(SHAPES)
    flat = _flat(0)
    traj._append_step(flat, _step(0.1))
    flat += 1.0  # the caller goes on training in place
    assert torch.equal(traj.flat_parameters(0), _flat(0))
    final = _flat(1)
    traj._set_final(final)
    final.zero_()
    assert torch.equal(traj.final_parameters()["b"], _flat(1)[6:])


def test_append_step_without_copy_keeps_the_host_tensors_it_is_given():
    # Training hands over fresh host tensors (its records are copied off the
    # device once): copy=False keeps them, the preconditioner too; copy=True
    # copies both.
    traj = Trajectory(SHAPES, solver=Solver("adam"))
    flat, P = _flat(0), _flat(1).abs() + 1.0
    traj._append_step(flat, _step(0.1), preconditioner=P, copy=False)
    assert traj.flat_parameters(0) is flat and traj.preconditioner(0) is P
    traj._append_step(flat, _step(0.1), preconditioner=P)
    assert traj.preconditioner(1) is not P and torch.equal(traj.preconditioner(1), P)


def test_append_step_detaches():
    traj = Trajectory(SHAPES)
    flat = _flat(0).requires_grad_(True) * 1.0
    traj._append_step(flat, _step(0.1))
    assert not traj.flat_parameters(0).requires_grad


def test_parameters_names_shapes_values():
    traj = _build([0.1, 0.2, 0.3])
    for k in range(3):
        params = traj.parameters(k)
        assert list(params) == ["a", "b"]
        assert params["a"].shape == (2, 3)
        assert params["b"].shape == (4,)
        assert params["a"].dtype == torch.float64
        flat = _flat(k)
        assert torch.equal(params["a"], flat[:6].view(2, 3))
        assert torch.equal(params["b"], flat[6:])


def test_parameters_are_views_of_the_checkpoint():
    traj = _build([0.1, 0.2])
    params = traj.parameters(1)
    flat = traj.flat_parameters(1)
    for value in params.values():
        assert value.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    assert params["b"].storage_offset() == 6


@pytest.mark.parametrize("k", [-1, -2, -3])
def test_parameters_negative_index(k):
    traj = _build([0.1, 0.2, 0.3])
    got = traj.parameters(k)
    expected = traj.parameters(3 + k)
    for name in SHAPES:
        assert torch.equal(got[name], expected[name])
    assert torch.equal(got["a"], _flat(3 + k)[:6].view(2, 3))


def test_parameters_index_out_of_range():
    traj = _build([0.1, 0.2])
    with pytest.raises(IndexError):
        traj.parameters(2)


def test_parameters_device_argument():
    traj = _build([0.1, 0.2])
    cpu = traj.parameters(0, device="cpu")
    assert all(v.device.type == "cpu" for v in cpu.values())
    assert torch.equal(cpu["a"], _flat(0)[:6].view(2, 3))
    meta = traj.parameters(0, device=torch.device("meta"))
    assert all(v.device.type == "meta" for v in meta.values())
    assert meta["a"].shape == (2, 3)
    assert meta["b"].shape == (4,)
    final = traj.final_parameters(device="meta")
    assert all(v.device.type == "meta" for v in final.values())
    # The stored checkpoints stay on the CPU.
    assert traj.flat_parameters(0).device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parameters_on_cuda():
    traj = Trajectory(SHAPES)
    traj._append_step(_flat(0).cuda(), _step(0.1))
    traj._set_final(_flat(1).cuda())
    assert traj.flat_parameters(0).device.type == "cpu"
    params = traj.parameters(0, device="cuda")
    assert all(v.device.type == "cuda" for v in params.values())
    assert torch.equal(params["b"].cpu(), _flat(0)[6:])
    assert traj.final_parameters(device="cuda")["a"].device.type == "cuda"


def test_final_parameters():
    traj = _build([0.1, 0.2, 0.3])
    final = traj.final_parameters()
    assert list(final) == ["a", "b"]
    assert torch.equal(final["a"], _flat(3)[:6].view(2, 3))
    assert torch.equal(final["b"], _flat(3)[6:])
    assert all(v.device.type == "cpu" for v in final.values())


def test_parameters_usable_with_functional_call():
    module = nn.Linear(3, 2).double()
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    traj = Trajectory(shapes)
    w = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    traj._append_step(flatten_parameters([w, b]), _step(0.1))
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    out = torch.func.functional_call(module, traj.parameters(0), (x,))
    torch.testing.assert_close(out, x @ w.T + b)


@pytest.mark.parametrize(
    "n_keep, expected_steps, expected_weights",
    [
        (7, [0, 3, 6], [0.6, 1.5, 0.7]),
        (6, [0, 3], [0.6, 1.5]),
        (5, [0, 3], [0.6, 0.4 + 0.5]),
        (4, [0, 3], [0.6, 0.4]),
        (3, [0], [0.6]),
        (1, [0], [0.1]),
        (0, [], []),
    ],
)
def test_truncate(n_keep, expected_steps, expected_weights):
    sizes = [0.1 * (t + 1) for t in range(7)]
    traj = _build(sizes, record_every=3)
    steps_before = [traj.step(t) for t in range(7)]
    traj._truncate(n_keep)
    assert traj.n_steps == n_keep
    assert len(traj) == len(expected_steps)
    np.testing.assert_array_equal(traj.checkpoint_steps, expected_steps)
    np.testing.assert_allclose(traj.weights, expected_weights, rtol=1e-12)
    np.testing.assert_allclose(traj.step_sizes, sizes[:n_keep])
    for t in range(n_keep):
        _assert_same_step(traj.step(t), steps_before[t])
    for k, t in enumerate(expected_steps):
        assert torch.equal(traj.flat_parameters(k), _flat(t))
    with pytest.raises(IndexError):
        traj.step(n_keep)


def _assert_same_step(a, b):
    assert type(a) is Step and a.step_size == b.step_size
    for x, y in zip(a[1:], b[1:]):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_truncate_then_append_continues_grouping():
    traj = _build([0.1] * 5, record_every=2, final=False)  # checkpoints at 0, 2, 4
    traj._truncate(3)  # steps 0..2, checkpoints 0, 2
    traj._append_step(_flat(3), _step(0.5, 3))  # step 3 joins checkpoint 2
    traj._append_step(_flat(4), _step(0.5, 4))  # step 4 opens checkpoint 4
    np.testing.assert_array_equal(traj.checkpoint_steps, [0, 2, 4])
    np.testing.assert_allclose(traj.weights, [0.2, 0.6, 0.5])


def test_len_counts_checkpoints():
    assert len(_build([0.1] * 10, record_every=1)) == 10
    assert len(_build([0.1] * 10, record_every=4)) == 3
    assert len(_build([0.1] * 10, record_every=10)) == 1
    assert len(_build([0.1] * 10, record_every=11)) == 1


def test_repr():
    traj = _build([0.1] * 7, record_every=3)
    assert repr(traj) == (
        "Trajectory(n_checkpoints=3, n_steps=7, n_parameters=10, record_every=3)"
    )
    assert repr(Trajectory({"w": (5, 2)})) == (
        "Trajectory(n_checkpoints=0, n_steps=0, n_parameters=10, record_every=1)"
    )


def test_n_parameters_and_names_order():
    traj = Trajectory({"z": (3,), "a": (2, 2), "m": ()})
    assert traj.parameter_names == ["z", "a", "m"]
    assert traj.n_parameters == 3 + 4 + 1
    traj._append_step(torch.arange(8.0), _step(0.1))
    params = traj.parameters(0)
    assert list(params) == ["z", "a", "m"]
    assert params["m"].shape == ()
    assert params["m"].item() == 7.0
    # parameter_names is a copy: mutating it does not change the trajectory.
    traj.parameter_names.append("x")
    assert traj.parameter_names == ["z", "a", "m"]


def test_flatten_parameters():
    a = torch.ones(2, 2, requires_grad=True)
    b = torch.tensor([5.0, 6.0])
    flat = flatten_parameters([a, b])
    assert torch.equal(flat, torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0, 6.0]))
    assert not flat.requires_grad


def test_pickle_round_trip_of_a_recorded_path_is_exact_and_packed():
    import pickle
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from sklearn_pathkernel import PathKernelClassifier

    rng = np.random.RandomState(0)
    X, y = rng.randn(30, 3), np.arange(30) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        traj = (
            PathKernelClassifier(
                (4,), batch_size=7, max_iter=3, record_every=2, random_state=0
            )
            .fit(X, y)
            .trajectory_
        )
    loaded = pickle.loads(pickle.dumps(traj))
    assert len(loaded) == len(traj) and loaded.n_steps == traj.n_steps == 15
    np.testing.assert_array_equal(loaded.weights, traj.weights)
    for k in range(len(traj)):
        assert torch.equal(loaded.flat_parameters(k), traj.flat_parameters(k))
    for t in range(traj.n_steps):
        for a, b in zip(loaded.step(t), traj.step(t)):
            assert a == b if isinstance(a, float) else torch.equal(a, b)
    for name, value in traj.final_parameters().items():
        assert torch.equal(loaded.final_parameters()[name], value)
    assert loaded.alpha == traj.alpha and loaded.record_every == 2
    empty = pickle.loads(pickle.dumps(Trajectory({"w": (2,)})))
    assert len(empty) == 0 and empty.n_steps == 0


# -- kernel nodes (quadrature) and storage -----------------------------------


def _with_rule(traj, quadrature, kernel_nodes=None):
    return traj.with_quadrature(quadrature, kernel_nodes)


@pytest.mark.parametrize("rule", ["left", "trapezoid", "simpson"])
def test_every_checkpoint_a_node_is_the_left_sum_whatever_the_rule(rule):
    sizes = [0.1, 0.2, 0.05, 0.4, 0.3]
    nodes = _with_rule(_build(sizes), rule).kernel_nodes()
    assert [n.step for n in nodes] == [0, 1, 2, 3, 4]  # w_T weighs 0: left out
    np.testing.assert_allclose([n.weight for n in nodes], sizes, rtol=1e-12)


def test_kernel_nodes_of_a_rule_and_their_parameters():
    traj = _build([0.1] * 20)
    simpson = traj.with_quadrature("simpson", 5)
    nodes = simpson.kernel_nodes()
    assert [n.step for n in nodes] == [0, 5, 10, 15, 20]
    assert sum(n.weight for n in nodes) == pytest.approx(2.0, rel=1e-12)
    assert torch.equal(simpson.parameters_at(5)["b"], _flat(5)[6:])
    assert torch.equal(simpson.parameters_at(20)["b"], _flat(20)[6:])  # w_T
    # The view shares the records; the original keeps its own rule.
    assert traj.quadrature == "left" and len(traj.kernel_nodes()) == 20
    with pytest.raises(ValueError, match="step 21 was not recorded"):
        traj.parameters_at(21)


def test_nodes_of_a_subsampled_path_are_kept_checkpoints():
    traj = _build([0.1] * 10, record_every=4)  # checkpoints 0, 4, 8
    nodes = traj.with_quadrature("trapezoid", None).kernel_nodes()
    assert [n.step for n in nodes] == [0, 4, 8, 10]
    assert sum(n.weight for n in nodes) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="step 3 was not recorded"):
        traj.parameters_at(3)


def test_bad_rules_are_refused_with_the_parameter_named():
    traj = _build([0.1] * 3)
    with pytest.raises(ValueError, match="quadrature must be one of"):
        traj.with_quadrature("gauss")
    with pytest.raises(ValueError, match="kernel_nodes must be a count"):
        Trajectory(SHAPES, quadrature="simpson", kernel_nodes=0)
    with pytest.raises(ValueError, match="needs the nodes that training chose"):
        traj.with_quadrature("adaptive")


def test_adaptive_nodes_are_the_recorded_ones_plus_w_T():
    traj = Trajectory(SHAPES, quadrature="adaptive")
    for t in range(10):
        traj._append_step(_flat(t), _step(0.1, t))
        if t in (0, 3, 4):
            traj._add_adaptive_node(t)
    traj._set_final(_flat(10))
    nodes = traj.kernel_nodes()
    assert [n.step for n in nodes] == [0, 3, 4, 10]
    assert sum(n.weight for n in nodes) == pytest.approx(1.0, rel=1e-12)
    traj._truncate(4)  # a divergence drops the nodes it drops the steps of
    assert traj._adaptive_steps == [0, 3]


def test_on_disk_path_equals_the_in_memory_one_and_pickles_embedded(tmp_path):
    import pickle

    memory = _build([0.1, 0.2, 0.3] * 10)
    disk = Trajectory(SHAPES, directory=tmp_path / "scratch")
    for t, eps in enumerate([0.1, 0.2, 0.3] * 10):
        disk._append_step(_flat(t), _step(eps, t))
    disk._set_final(_flat(30))
    assert disk.on_disk and not memory.on_disk
    assert _scratch_files(tmp_path / "scratch") == ["checkpoints", "records"]
    for k in range(len(memory)):
        assert torch.equal(disk.flat_parameters(k), memory.flat_parameters(k))
    # The pickle embeds the parameters; loaded, they go to a new file there.
    payload = pickle.dumps(disk)
    del disk
    gc.collect()
    assert os.listdir(tmp_path / "scratch") == []
    loaded = pickle.loads(payload)
    assert loaded.on_disk
    assert _scratch_files(tmp_path / "scratch") == ["checkpoints", "records"]
    for k in range(len(memory)):
        assert torch.equal(loaded.flat_parameters(k), memory.flat_parameters(k))


def _scratch_files(directory):
    return sorted(name.split("-")[0] for name in os.listdir(directory))


def test_a_path_pickled_before_quadrature_rules_keeps_its_left_sum():
    traj = _build([0.1] * 20)
    state = traj.__getstate__()
    for key in ("quadrature", "_kernel_nodes", "_adaptive_steps", "_directory"):
        state.pop(key)
    old = Trajectory.__new__(Trajectory)
    old.__setstate__(state)
    assert old.quadrature == "left" and len(old.kernel_nodes()) == 20


def test_a_disk_path_whose_directory_is_gone_loads_into_a_temporary_one(tmp_path):
    import pickle

    disk = Trajectory(SHAPES, directory=tmp_path / "gone")
    disk._append_step(_flat(0), _step(0.1))
    disk._set_final(_flat(1))
    payload = pickle.dumps(disk)
    del disk
    gc.collect()
    os.rmdir(tmp_path / "gone")
    loaded = pickle.loads(payload)
    assert loaded.on_disk and torch.equal(loaded.flat_parameters(0), _flat(0))
    assert os.path.dirname(loaded._checkpoints.path) != str(tmp_path / "gone")
    empty = pickle.loads(pickle.dumps(Trajectory(SHAPES, directory=tmp_path / "x")))
    assert len(empty) == 0


# -- solvers: effective step sizes and Adam's metric --------------------------


def _build_adam(step_sizes, beta_1=0.8):
    solver = Solver("adam", beta_1=beta_1)
    traj = Trajectory(SHAPES, solver=solver, quadrature="trapezoid", kernel_nodes=3)
    for t, eps in enumerate(step_sizes):
        P = 1.0 + torch.arange(N_PARAMETERS, dtype=torch.float64) * (t + 1) / 10
        traj._append_step(_flat(t), _step(eps, t), preconditioner=P)
    traj._set_final(_flat(len(step_sizes)))
    return traj


def test_kernel_metric_is_the_effective_preconditioned_step_over_its_weight():
    eps = [0.1, 0.2, 0.05, 0.1, 0.1]
    traj = _build_adam(eps)
    b1 = 0.8
    for s in [0, 2, 4]:
        # Ptilde_s = sum_{t>=s} eps_t (1 - b1) b1^(t-s) / (1 - b1^(t+1)) P_t
        beta = [(1 - b1) * b1 ** (t - s) / (1 - b1 ** (t + 1)) for t in range(5)]
        ptilde = sum(eps[t] * beta[t] * traj.preconditioner(t) for t in range(s, 5))
        p = sum(eps[t] * beta[t] for t in range(s, 5))
        assert traj.effective_step_sizes[s] == pytest.approx(p, rel=1e-14)
        metric = traj.kernel_metric_at(s)
        flat = torch.cat([metric["a"].reshape(-1), metric["b"]])
        torch.testing.assert_close(flat, ptilde / p, rtol=1e-14, atol=0)
    # w_T takes the last step's metric.
    last = traj.kernel_metric_at(traj.n_steps)
    torch.testing.assert_close(last["b"], traj.kernel_metric_at(4)["b"])


def test_kernel_weights_are_effective_step_sizes():
    traj = _build_adam([0.1] * 6).with_quadrature("left")
    np.testing.assert_allclose(
        [node.weight for node in traj.kernel_nodes()], traj.effective_step_sizes
    )


def test_sgd_paths_have_no_metric():
    traj = _build([0.1, 0.1])
    assert traj.kernel_metric_at(0) is None
    assert traj.preconditioner(0) is None


def test_an_adam_step_needs_its_preconditioner_and_sgd_refuses_one():
    with pytest.raises(ValueError, match="'adam' step needs its preconditioner"):
        Trajectory(SHAPES, solver=Solver("adam"))._append_step(_flat(0), _step(0.1))
    with pytest.raises(ValueError, match="'sgd' step needs none"):
        Trajectory(SHAPES)._append_step(
            _flat(0), _step(0.1), preconditioner=torch.ones(N_PARAMETERS)
        )


def test_adam_paths_pickle_truncate_and_keep_their_metric():
    traj = _build_adam([0.1] * 5)
    before = traj.kernel_metric_at(2)
    loaded = pickle.loads(pickle.dumps(traj))
    assert loaded.solver == traj.solver
    torch.testing.assert_close(loaded.kernel_metric_at(2), before, rtol=0, atol=0)
    loaded._truncate(3)
    assert len(loaded._preconditioners) == 3
    assert not torch.equal(loaded.kernel_metric_at(2)["a"], before["a"])


# -- per-step records on disk ----------------------------------------------------


@pytest.mark.parametrize("adam", [False, True])
def test_records_on_disk_pickle_in_the_packed_form_and_round_trip(tmp_path, adam):
    build = _build_adam if adam else _build
    memory = build([0.1, 0.2, 0.3] * 7)
    state = memory.__getstate__()  # the same path, loaded into a directory
    disk = Trajectory.__new__(Trajectory)
    state["_directory"] = str(tmp_path)
    disk.__setstate__(state)
    assert disk._steps.on_disk and os.path.dirname(disk._steps.path) == str(tmp_path)
    packed = disk.__getstate__()
    assert set(packed) == set(memory.__getstate__()) == PACKED_KEYS
    sizes, lengths, *fields = packed["_packed_steps"]
    assert sizes == list(memory.step_sizes) and lengths == [2] * 21
    assert all(type(f) is torch.Tensor for f in fields)
    loaded = pickle.loads(pickle.dumps(disk))
    assert loaded._steps.on_disk and loaded.n_steps == 21
    for t in range(21):
        _assert_same_step(loaded.step(t), memory.step(t))
        _assert_same_step(disk.step(t), memory.step(t))
    if adam:
        torch.testing.assert_close(
            loaded.kernel_metric_at(3), memory.kernel_metric_at(3), rtol=0, atol=0
        )


def test_records_follow_the_checkpoints_when_they_spill(monkeypatch):
    from sklearn_pathkernel._training import _checkpoints

    # Checkpoints spill at the 4th (10 float64 each); the records alone would not.
    monkeypatch.setattr(_checkpoints, "SPILL_BYTES", 3 * N_PARAMETERS * 8)
    traj = _build([0.1] * 3, final=False)
    assert not traj.on_disk and not traj._steps.on_disk
    traj._append_step(_flat(3), _step(0.1, 3))
    assert traj.on_disk and traj._steps.on_disk
    assert os.path.basename(traj._steps.path).startswith("records-")
    reference = _build([0.1] * 4, final=False)
    for t in range(4):
        _assert_same_step(traj.step(t), reference.step(t))
    traj._truncate(2)
    assert traj.n_steps == 2 and len(traj._steps._rows) == 4
    path = traj._steps.path
    del traj
    gc.collect()
    assert not os.path.exists(path)


def test_a_continuation_shifts_its_rows_and_rewinds_to_its_mark():
    traj = _build([0.1, 0.2, 0.3])
    mark = traj._mark()
    kernel_before = traj.kernel_nodes()
    for t in (3, 4):
        traj._append_step(_flat(t), _step(0.5, t))
    traj._set_final(_flat(5))
    traj._shift_rows(3, 10)
    assert traj.step(2).batch.tolist() == [2, 3]
    assert traj.step(3).batch.tolist() == [13, 14]
    assert [node.step for node in traj.kernel_nodes()] == [0, 1, 2, 3, 4]
    traj._rewind(mark)
    assert traj.n_steps == 3 and len(traj) == 3
    assert torch.equal(traj.final_parameters()["b"], _flat(3)[6:])
    assert traj.kernel_nodes() == kernel_before
