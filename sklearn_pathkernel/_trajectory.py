"""The recorded path of gradient descent."""

from typing import NamedTuple

import numpy as np
import torch


class Step(NamedTuple):
    """What one gradient-descent step used (docs/design.md, section 2).

    Attributes
    ----------
    step_size : float
        ``eps_t``.
    batch : torch.Tensor of int64, shape (b,)
        Training-row indices of ``B_t``.
    batch_weights : torch.Tensor, shape (b,)
        ``c_{i,t} = s_i / sum_{j in B_t} s_j``.
    output_gradients : torch.Tensor, shape (b, n_outputs)
        ``g_{i,t} = dl(y_i, f) / df`` at ``f = f(x_i; w_t)``.
    """

    step_size: float
    batch: torch.Tensor
    batch_weights: torch.Tensor
    output_gradients: torch.Tensor


class Trajectory:
    """The path the parameters took during gradient descent.

    Checkpoint ``k`` holds the trainable parameters ``w_t`` at step
    ``t = checkpoint_steps[k]`` and a weight equal to the summed step sizes of
    the steps it stands for: every step when ``record_every=1``, else
    ``record_every`` consecutive steps. The path kernel is then
    ``sum_k weights[k] * K_{w_k}`` (a left Riemann sum of the path integral).
    Every step's batch, batch weights and loss derivatives are kept as well,
    for the kernel-machine decomposition; the final parameters ``w_T`` too.

    Checkpoints live on the CPU as one flat vector each, so memory is
    ``(len(trajectory) + 1) * n_parameters * itemsize`` bytes for the
    parameters, plus ``n_steps * batch_size * (n_outputs + 2)`` numbers for the
    per-step records. For example the default MLP (one hidden layer of 100) on
    30 features, trained full batch for 200 steps in float32, keeps
    201 * 3201 * 4 bytes = 2.6 MB of parameters.

    Trajectories are built by the estimators' ``fit``; users read them.

    Parameters
    ----------
    parameter_shapes : dict of str to tuple of int
        Names and shapes of the trainable parameters, in module order.
    record_every : int, default=1
        Keep the parameters every ``record_every`` steps.
    alpha : float, default=0.0
        The L2 strength of the update rule, which the decomposition's bias
        term needs (Remark 4 of the paper).

    Attributes
    ----------
    weights : ndarray of shape (n_checkpoints,)
    checkpoint_steps : ndarray of shape (n_checkpoints,)
    step_sizes : ndarray of shape (n_steps,)
    n_steps : int
    n_parameters : int

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(scale(X), scale(y))
    >>> traj = est.trajectory_
    >>> len(traj), traj.n_steps, float(traj.weights.sum())
    (20, 20, 2.0)
    >>> sorted(traj.parameters(0))[:2]
    ['0.bias', '0.weight']
    """

    def __init__(self, parameter_shapes, *, record_every=1, alpha=0.0):
        self._names = list(parameter_shapes)
        self._shapes = [tuple(s) for s in parameter_shapes.values()]
        self._numels = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self.record_every = int(record_every)
        self.alpha = float(alpha)
        self._checkpoints = []
        self._checkpoint_steps = []
        self._steps = []
        self._final = None

    # -- recording (used by training) -------------------------------------
    def _append_step(self, flat_parameters, step, *, copy=True):
        """Record step ``t = n_steps`` taken from ``flat_parameters``.

        ``copy=False`` takes ownership of a CPU tensor nobody else will
        change (training passes fresh ``flatten_parameters`` results).
        """
        if len(self._steps) % self.record_every == 0:
            self._checkpoints.append(
                _to_cpu(flat_parameters) if copy else flat_parameters.to("cpu")
            )
            self._checkpoint_steps.append(len(self._steps))
        self._steps.append(step)

    def _set_final(self, flat_parameters):
        self._final = _to_cpu(flat_parameters)

    def _truncate(self, n_steps):
        """Forget steps ``n_steps`` and later (used after a divergence)."""
        del self._steps[n_steps:]
        keep = sum(s < n_steps for s in self._checkpoint_steps)
        del self._checkpoints[keep:]
        del self._checkpoint_steps[keep:]

    # -- persistence --------------------------------------------------------
    def __getstate__(self):
        # Thousands of small tensors pickle one by one, slowly: pack the
        # checkpoints into one matrix and every step's records into three.
        state = self.__dict__.copy()
        steps = state.pop("_steps")
        checkpoints = state.pop("_checkpoints")
        state["_packed_checkpoints"] = torch.stack(checkpoints) if checkpoints else None
        state["_packed_steps"] = (
            [s.step_size for s in steps],
            [len(s.batch) for s in steps],
            *(
                torch.cat([getattr(s, field) for s in steps]) if steps else None
                for field in ("batch", "batch_weights", "output_gradients")
            ),
        )
        return state

    def __setstate__(self, state):
        packed = state.pop("_packed_checkpoints")
        sizes, lengths, batches, weights, gradients = state.pop("_packed_steps")
        self.__dict__.update(state)
        self._checkpoints = [] if packed is None else list(packed.unbind(0))
        self._steps = (
            [
                Step(size, *parts)
                for size, *parts in zip(
                    sizes,
                    batches.split(lengths),
                    weights.split(lengths),
                    gradients.split(lengths),
                )
            ]
            if sizes
            else []
        )

    # -- reading ----------------------------------------------------------
    def __len__(self):
        return len(self._checkpoints)

    def __repr__(self):
        return (
            f"Trajectory(n_checkpoints={len(self)}, n_steps={self.n_steps}, "
            f"n_parameters={self.n_parameters}, record_every={self.record_every})"
        )

    @property
    def n_steps(self):
        """Number of gradient-descent steps taken."""
        return len(self._steps)

    @property
    def n_parameters(self):
        """Number of trainable parameters ``d``."""
        return sum(self._numels)

    @property
    def parameter_names(self):
        """Names of the trainable parameters, in module order."""
        return list(self._names)

    @property
    def step_sizes(self):
        """``eps_t`` for every step, float64 array of shape (n_steps,)."""
        return np.array([s.step_size for s in self._steps], dtype=np.float64)

    @property
    def checkpoint_steps(self):
        """The step index of each checkpoint, int array (n_checkpoints,)."""
        return np.array(self._checkpoint_steps, dtype=np.int64)

    @property
    def weights(self):
        """Each checkpoint's weight: the summed step sizes it stands for."""
        bounds = np.append(self.checkpoint_steps, self.n_steps)
        cumulative = np.concatenate([[0.0], np.cumsum(self.step_sizes)])
        return cumulative[bounds[1:]] - cumulative[bounds[:-1]]

    def step(self, t):
        """The batch, batch weights and loss derivatives of step ``t``.

        Returns
        -------
        step : Step
        """
        return self._steps[t]

    def flat_parameters(self, k):
        """Checkpoint ``k`` as one flat CPU tensor of length ``n_parameters``."""
        return self._checkpoints[k]

    def parameters(self, k, *, device=None):
        """Checkpoint ``k`` as a name -> tensor mapping.

        Usable with ``torch.func.functional_call(module_, parameters, (X,))``.
        Negative ``k`` counts from the end, as for lists.

        Parameters
        ----------
        k : int
            Checkpoint index.
        device : torch.device or str, default=None
            Where to put the tensors; the CPU when None.

        Returns
        -------
        parameters : dict of str to torch.Tensor
        """
        return self._unflatten(self._checkpoints[k], device)

    def final_parameters(self, *, device=None):
        """The parameters ``w_T`` after the last step, as a mapping."""
        return self._unflatten(self._final, device)

    def _unflatten(self, flat, device):
        if device is not None:
            flat = flat.to(device)
        pieces = torch.split(flat, self._numels)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self._names, pieces, self._shapes)
        }


def flatten_parameters(parameters):
    """Concatenate tensors into one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def _to_cpu(tensor):
    return tensor.detach().to("cpu", copy=True)
