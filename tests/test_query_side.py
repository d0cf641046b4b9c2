"""The backward walk of the query side, against a direct double sum."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from _oracle import jacobian_rows
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._explain._decompose import _quadrature, decompose_path
from sklearn_pathkernel._explain._query_side import (
    PathTensors,
    QueryWalk,
    _nodes_jacobian_T,
    _query_jacobian_T,
    _rows_jacobian_T,
    flat_jacobian,
    per_example_gradients,
    walk_block,
)

SOLVERS = {
    "momentum": {"solver": "sgd", "momentum": 0.8, "nesterovs_momentum": False},
    "nesterov": {"solver": "sgd", "momentum": 0.8, "nesterovs_momentum": True},
    "adam": {"solver": "adam", "learning_rate_init": 0.05},
    "adamw": {"solver": "adamw", "learning_rate_init": 0.05},
    # Schedules: MLP's velocity keeps eps_s inside the sum.
    "momentum-invscaling": {
        "solver": "sgd", "momentum": 0.8, "nesterovs_momentum": False,
        "learning_rate": "invscaling", "power_t": 0.5,
    },
    "nesterov-adaptive": {
        "solver": "sgd", "momentum": 0.8, "nesterovs_momentum": True,
        "learning_rate": "adaptive", "tol": 1e9, "n_iter_no_change": 1,
        "max_iter": 4,  # the rate drops after the third epoch
    },
}  # fmt: skip


def _fit(Est, X, y, **params):
    params = {
        "hidden_layer_sizes": (3,),
        "dtype": "float64",
        "random_state": 0,
        "tol": 0.0,
        "learning_rate_init": 0.1,
        **params,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Est(**params).fit(X, y, sample_weight=np.linspace(0.5, 2, len(X)))


def _beta(solver, t, s):
    """``beta_{t,s}`` as /work/shared/DESIGN.md, section 6 writes it."""
    if solver.name in ("adam", "adamw"):
        b1 = solver.beta_1
        return (1 - b1) * b1 ** (t - s) / (1 - b1 ** (t + 1))
    mu = solver.momentum
    if solver.nesterov:
        return 1 + mu if s == t else mu ** (t - s + 1)
    return mu ** (t - s)


def _rate(solver, eps, t, s):
    """The step size of ``G_s`` in step ``t``: ``eps_s`` in sgd's velocity form
    (scikit-learn's ``v = mu v - eps_t g``), ``eps_t`` otherwise."""
    velocity = solver.name == "sgd" and solver.momentum_form == "velocity"
    return eps[s] if velocity else eps[t]


def _between(start, end, a):
    return {n: start[n] + a * (end[n] - start[n]) for n in start}


def _flat(parameters):
    return torch.cat([p.reshape(-1) for p in parameters.values()]).double().numpy()


def _reference(est, X_train, X, exact, n_nodes=4):
    """The decomposition by a plain double loop over ``t >= s`` of the formula.

    ``q_s(x) = sum_{t>=s} e_{t,s} beta_{t,s} P_t Jbar_t(x)^T`` (exact) or
    ``Ptilde_s J_{k(s)}(x)^T`` with ``Ptilde_s = sum_{t>=s} e_{t,s} beta_{t,s}
    P_t`` (first order), ``e_{t,s}`` from :func:`_rate`, Jacobians from the
    autograd oracle.
    """
    traj, module = est.trajectory_, est.module_
    solver, T = traj.solver, traj.n_steps
    ends = [traj.parameters(t) for t in range(len(traj))] + [traj.final_parameters()]
    d = traj.n_parameters
    P = [
        np.ones(d) if traj.preconditioner(t) is None else traj.preconditioner(t).numpy()
        for t in range(T)
    ]
    eps = traj.step_sizes
    nodes, weights = _quadrature(n_nodes if exact else 0)
    k_of = np.searchsorted(traj.checkpoint_steps, np.arange(T), side="right") - 1
    jbar, w = [], []  # per step: Jbar_t(x) (n, O, d), and w_t
    for t in range(T):
        if exact:
            start, end = ends[t], ends[t + 1]
            jbar.append(
                sum(
                    nu
                    * jacobian_rows(
                        module,
                        {n: start[n] + a * (end[n] - start[n]) for n in start},
                        X,
                    )
                    for a, nu in zip(nodes, weights)
                )
            )
            w.append(_flat(start))
        else:
            params = traj.parameters(k_of[t])
            jbar.append(jacobian_rows(module, params, X))
            w.append(_flat(params))
    phi = np.zeros((len(X), len(X_train), est.n_outputs_))
    bias = (
        torch.func.functional_call(module, traj.parameters(0), (torch.tensor(X),))
        .detach()
        .numpy()
        .reshape(len(X), -1)
    )
    for s in range(T):
        if exact:
            q = sum(
                _rate(solver, eps, t, s) * _beta(solver, t, s) * P[t] * jbar[t]
                for t in range(s, T)
            )  # (n, O, d): q_s(x)^T
        else:
            metric = sum(
                _rate(solver, eps, t, s) * _beta(solver, t, s) * P[t]
                for t in range(s, T)
            )
            q = metric * jbar[s]
        step = traj.step(s)
        batch = step.batch.numpy()
        params = traj.parameters(s if exact else k_of[s])
        J_train = jacobian_rows(module, params, X_train[batch])  # (b, O, d)
        c, g = step.batch_weights.numpy(), step.output_gradients.numpy()
        phi[:, batch] -= np.einsum("iad,jbd,j,jb->ija", q, J_train, c, g)
        bias -= solver.alpha * q @ w[s]
        bias -= eps[s] * solver.weight_decay * jbar[s] @ w[s]
    return phi, bias


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("exact", [True, False])
def test_the_recursion_matches_the_double_sum(name, exact):
    rng = np.random.RandomState(0)
    X = rng.randn(8, 2)
    y = np.arange(8) % 3
    est = _fit(
        PathKernelClassifier,
        X,
        y,
        batch_size=4,
        alpha=0.1,
        activation="tanh",
        **{"max_iter": 2, **SOLVERS[name]},
    )
    if "-" in name:  # a schedule: the rate changes along the path
        assert len(set(est.trajectory_.step_sizes.tolist())) >= 2
        assert est.trajectory_.solver.momentum_form == "velocity"  # MLP's
    machine = est.decompose(X[:3], exact=exact)
    phi, bias = _reference(est, X, X[:3], exact)
    np.testing.assert_allclose(machine.contributions, phi, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(machine.bias, bias, rtol=1e-12, atol=1e-14)
    if exact:
        assert machine.error["max_rel"] < 1e-10


@pytest.mark.parametrize("nesterov", [False, True])
def test_constant_rate_velocity_form_gives_the_old_bits(nesterov):
    """At a constant rate the velocity form's ratio eps_s / eps_{s+1} is 1.0:
    kernel and both decompositions are the buffer form's, bit for bit."""
    rng = np.random.RandomState(3)
    X, y = rng.randn(8, 2), rng.randn(8)
    est = _fit(
        PathKernelRegressor, X, y, batch_size=4, max_iter=2, alpha=0.1,
        momentum=0.8, nesterovs_momentum=nesterov,
    )  # fmt: skip
    traj = est.trajectory_
    assert traj.solver.momentum_form == "velocity"
    results = []
    for form in ("velocity", "buffer"):
        traj.solver = dataclasses.replace(traj.solver, momentum_form=form)
        exact, first = est.decompose(X[:3], exact=True), est.decompose(X[:3])
        walked = _walk(est, X[:3], exact=True)
        results.append(
            [est.kernel(X[:4]), exact.contributions, exact.bias, first.contributions]
            + list(walked)
        )
    for new, old in zip(*results):
        assert np.array_equal(new, old)


def test_first_order_on_a_thinned_adam_path_matches_the_double_sum():
    """With record_every=2 each checkpoint stands for the steps it covers."""
    rng = np.random.RandomState(1)
    X, y = rng.randn(8, 2), rng.randn(8)
    est = _fit(
        PathKernelRegressor, X, y, batch_size=4, max_iter=3, record_every=2,
        alpha=0.1, **SOLVERS["adam"],
    )  # fmt: skip
    machine = est.decompose(X[:3])
    phi, bias = _reference(est, X, X[:3], exact=False)
    np.testing.assert_allclose(machine.contributions, phi, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(machine.bias, bias, rtol=1e-12, atol=1e-14)


def _walk(est, X, exact):
    """:func:`walk_block` on the whole of ``X`` (one block), as numpy arrays."""
    nodes, weights = _quadrature(4 if exact else 0)
    walk = QueryWalk(
        module=est.module_,
        trajectory=est.trajectory_,
        X_train=torch.tensor(est._fit_X),
        X=torch.tensor(X),
        n_outputs=est.n_outputs_,
        nodes=nodes,
        node_weights=weights,
        exact=exact,
        rows=3,  # several blocks of training rows
    )
    phi, bias_term = walk_block(walk, 0, len(X))
    return phi.numpy(), bias_term.numpy()


@pytest.mark.parametrize("momentum, exact", [(0.0, True), (0.0, False), (0.8, False)])
def test_the_walk_agrees_with_the_engines_where_both_apply(momentum, exact):
    """Plain sgd (both forms) and momentum (first order) go through the
    engines; the walk computes the same from per-example gradients."""
    rng = np.random.RandomState(2)
    X, y = rng.randn(10, 3), rng.randn(10, 2)
    est = _fit(
        PathKernelRegressor, X, y, batch_size=4, max_iter=2, alpha=0.1,
        momentum=momentum, nesterovs_momentum=False, learning_rate_init=0.05,
    )  # fmt: skip
    phi, bias_term = _walk(est, X[:4], exact)
    machine = est.decompose(X[:4], exact=exact)
    np.testing.assert_allclose(phi, machine.contributions, rtol=1e-10, atol=1e-14)
    initial = torch.func.functional_call(
        est.module_, est.trajectory_.parameters(0), (torch.tensor(X[:4]),)
    )
    np.testing.assert_allclose(
        initial.detach().numpy() - bias_term, machine.bias, rtol=1e-10, atol=1e-14
    )


def test_blocks_budgets_and_jobs_give_bit_identical_walks(monkeypatch):
    rng = np.random.RandomState(3)
    X, y = rng.randn(30, 3), rng.randn(30)
    est = _fit(
        PathKernelRegressor, X, y, batch_size=8, max_iter=2, alpha=0.05,
        **SOLVERS["adam"],
    )  # fmt: skip
    whole = est.decompose(X[:10], exact=True)
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)  # 10 queries: 3 blocks
    machines = [
        est.set_params(n_jobs=n_jobs, working_memory=memory).decompose(
            X[:10], exact=True
        )
        for n_jobs, memory in [(None, None), (2, None), (2, 64.0), (None, 64.0)]
    ]
    np.testing.assert_allclose(machines[0].contributions, whole.contributions)
    for other in machines[1:]:
        assert np.array_equal(other.contributions, machines[0].contributions)
        assert np.array_equal(other.bias, machines[0].bias)


def test_flat_jacobian_and_per_example_gradients_match_the_oracle():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()
    params = {n: p.detach() for n, p in net.named_parameters()}
    X = torch.randn(5, 3, dtype=torch.float64)
    J = jacobian_rows(net, params, X)
    np.testing.assert_allclose(flat_jacobian(net, params, X).numpy(), J, rtol=1e-13)
    v = torch.randn(5, 2, dtype=torch.float64)
    np.testing.assert_allclose(
        per_example_gradients(net, params, X, v).numpy(),
        np.einsum("iod,io->id", J, v.numpy()),
        rtol=1e-13,
    )


def test_per_row_points_of_the_segment_match_the_oracle():
    """Across kinks each query row has its own nodes and weights: the
    columns of ``Jbar^T`` are those rows' weighted oracle Jacobians."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    ).double()
    start = {n: p.detach() for n, p in net.named_parameters()}
    end = {n: p + torch.randn_like(p) for n, p in start.items()}
    X = torch.randn(4, 3, dtype=torch.float64)
    rounds = [
        (torch.tensor([0, 2]), torch.tensor([0.1, 0.7]), torch.tensor([0.3, 0.5])),
        (torch.tensor([1, 2, 3]), torch.tensor([0.9, 0.2, 0.4]), torch.ones(3)),
    ]
    rounds = [(rows, s.double(), w.double()) for rows, s, w in rounds]
    JT = _rows_jacobian_T(net, start, end, rounds, X, n_outputs=2)
    expected = np.zeros((4, 2, JT.shape[0]))
    for rows, s, w in rounds:
        for row, a, weight in zip(rows.tolist(), s.tolist(), w.tolist()):
            point = {n: start[n] + a * (end[n] - start[n]) for n in start}
            expected[row] += weight * jacobian_rows(net, point, X[row : row + 1])[0]
    np.testing.assert_allclose(JT.T.reshape(4, 2, -1).numpy(), expected, rtol=1e-13)


def test_progress_bar_counts_every_step(capsys):
    rng = np.random.RandomState(4)
    X, y = rng.randn(10, 2), rng.randn(10)
    est = _fit(PathKernelRegressor, X, y, max_iter=3, **SOLVERS["adam"])
    decompose_path(
        est.module_,
        est.trajectory_,
        torch.tensor(X),
        torch.tensor(X[:2]),
        exact=True,
        verbose=1,
    )
    err = capsys.readouterr().err
    assert "decompose (exact)" in err and "0/3 " in err  # every step counted


def test_the_shared_walk_reports_the_trajectory_it_carries():
    """dask scatters a task argument once per call only when ``sizeof`` finds
    it large: the walk carries the whole path, and says so."""
    rng = np.random.RandomState(5)
    X, y = rng.randn(10, 2), rng.randn(10)
    est = _fit(PathKernelRegressor, X, y, max_iter=4, **SOLVERS["adam"])
    traj = est.trajectory_
    walk = QueryWalk(
        module=est.module_,
        trajectory=traj,
        X_train=torch.tensor(X),
        X=torch.tensor(X[:2]),
        n_outputs=1,
        nodes=[0.0],
        node_weights=[1.0],
        exact=False,
        rows=8,
    )
    # Checkpoints, w_T and every step's preconditioner, in float64.
    stored = (len(traj) + 1 + traj.n_steps) * traj.n_parameters * 8
    assert walk.__sizeof__() >= stored


def test_worker_processes_give_the_same_bits(monkeypatch):
    """The walk and its path pickle to worker processes (loky here, as for a
    dask cluster) and come back bit for bit."""
    joblib = pytest.importorskip("joblib")
    monkeypatch.setattr(_blocking, "TILE_ROWS", 2)  # 6 queries: 3 tasks
    rng = np.random.RandomState(6)
    X, y = rng.randn(20, 3), rng.randn(20)
    est = _fit(
        PathKernelRegressor, X, y, batch_size=8, max_iter=2, alpha=0.05,
        **SOLVERS["adamw"],
    )  # fmt: skip
    serial = est.decompose(X[:6], exact=True)
    est.set_params(n_jobs=2)
    with joblib.parallel_config(backend="loky"):
        workers = est.decompose(X[:6], exact=True)
    assert np.array_equal(workers.contributions, serial.contributions)
    assert np.array_equal(workers.bias, serial.bias)


@pytest.mark.parametrize(
    "name, exact",
    [("adam", True), ("adam", False), ("nesterov", True), ("momentum", False)],
)
def test_device_policy_walk_matches_the_default_and_the_double_sum(name, exact):
    """Under the device policy the path is on the device once and every
    node's Jacobian comes from one vmap: the same numbers to rounding."""
    rng = np.random.RandomState(7)
    X, y = rng.randn(12, 2), rng.randn(12, 2)
    est = _fit(
        PathKernelRegressor, X, y, hidden_layer_sizes=(3, 4), batch_size=5,
        max_iter=2, alpha=0.1, activation="tanh", **SOLVERS[name],
    )  # fmt: skip
    default = est.decompose(X[:3], exact=exact)
    with _blocking.device_policy(2**30):
        device = est.decompose(X[:3], exact=exact)
    phi, bias = _reference(est, X, X[:3], exact)
    for got in (default, device):
        np.testing.assert_allclose(got.contributions, phi, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got.bias, bias, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        device.contributions, default.contributions, rtol=1e-13, atol=1e-15
    )


class _Uploads(Dispatched):
    """:class:`Dispatched`, also counting copies from the host to the meta device."""

    def __init__(self):
        super().__init__()
        self.uploads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        if (
            func.overloadpacket.__name__ in ("_to_copy", "copy_")
            and target is not None
            and torch.device(target).type == "meta"
            and args[0].device.type == "cpu"
        ):
            self.uploads += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def _meta_walk_counts(max_iter, exact):
    """Counts of one walk on meta tensors under the device policy."""
    rng = np.random.RandomState(8)
    X, y = rng.randn(20, 3), rng.randn(20)
    est = _fit(
        PathKernelRegressor, X, y, hidden_layer_sizes=(4, 4), batch_size=10,
        max_iter=max_iter, **SOLVERS["adam"],
    )  # fmt: skip
    nodes, weights = _quadrature(2 if exact else 0)
    meta = {"dtype": torch.float64, "device": "meta"}
    walk = QueryWalk(
        module=est.module_,
        trajectory=est.trajectory_,
        X_train=torch.tensor(X, **meta),
        X=torch.tensor(X[:5], **meta),
        n_outputs=1,
        nodes=nodes,
        node_weights=weights,
        exact=exact,
        rows=16,  # one block of training rows per step, as on a device
    )
    with _blocking.device_policy(2**30), _Uploads() as counted:
        phi, _ = walk_block(walk, 0, 5)
    assert phi.shape == (5, 20, 1)
    return est.trajectory_.n_steps, counted


@pytest.mark.parametrize("exact, most", [(False, 72), (True, 80)])
def test_the_device_walk_neither_waits_nor_uploads_per_step(exact, most):
    """On meta tensors (a device the host never waits for): the path goes up
    in five copies per call, whatever its length (before: five copies per
    step first order, six exact), nothing synchronises, and a step
    dispatches at most ``most`` launches (measured: 71 first order, 75
    exact; before: 77 and 144)."""
    (short, few), (long, many) = (_meta_walk_counts(n, exact) for n in (1, 3))
    assert long > short
    assert few.uploads == many.uploads == 5
    assert few.synchronising == many.synchronising == []
    per_step = (many.launches - few.launches) / (long - short)
    assert per_step <= most, per_step


def test_path_tensors_on_the_device_are_the_trajectory_s():
    rng = np.random.RandomState(9)
    X, y = rng.randn(12, 2), rng.randn(12)
    est = _fit(PathKernelRegressor, X, y, batch_size=5, max_iter=2, solver="adam")
    traj = est.trajectory_
    cpu = torch.device("cpu")
    streamed = PathTensors(traj, cpu, torch.float64, after=True)
    with _blocking.device_policy(2**30):
        resident = PathTensors(traj, cpu, torch.float64, after=True)
    with _blocking.device_policy(2**10):  # too small: read step by step
        assert not PathTensors(traj, cpu, torch.float64, after=True).resident
    assert resident.resident and not streamed.resident
    for k in range(len(traj) + 1):
        want = traj.parameters(k) if k < len(traj) else traj.final_parameters()
        for path in (streamed, resident):
            flat, mapping = path.parameters(k)
            assert torch.equal(flat, torch.cat([p.reshape(-1) for p in want.values()]))
            assert all(torch.equal(mapping[n], want[n]) for n in want)
    for t in range(traj.n_steps):
        step = traj.step(t)
        c_g = step.batch_weights[:, None] * step.output_gradients
        for path in (streamed, resident):
            assert torch.equal(path.preconditioner(t), traj.preconditioner(t).double())
            batch, cotangents = path.step(t)
            assert torch.equal(batch, step.batch) and torch.equal(cotangents, c_g)


def test_every_node_in_one_vmap_matches_node_by_node_and_the_oracle():
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()
    start = {n: p.detach() for n, p in net.named_parameters()}
    points = [
        {n: p + a * torch.randn_like(p) for n, p in start.items()} for a in (0.5, 1)
    ]
    weights = [0.25, 0.75]
    X = torch.randn(4, 3, dtype=torch.float64)
    stacked = {n: torch.stack([point[n] for point in points]) for n in start}
    batched = _nodes_jacobian_T(net, stacked, weights, X)
    node_by_node = _query_jacobian_T(net, points, weights, X)
    np.testing.assert_allclose(batched.numpy(), node_by_node.numpy(), rtol=1e-14)
    oracle = sum(w * jacobian_rows(net, p, X) for w, p in zip(weights, points))
    np.testing.assert_allclose(batched.T.reshape(4, 2, -1).numpy(), oracle, rtol=1e-13)
