"""
A Gaussian process on a network's path kernel: mean and uncertainty
====================================================================

``PathKernel(est)`` turns a fitted network's path kernel into a
``sklearn.gaussian_process`` kernel. Multiplied by a ``ConstantKernel`` (the
signal's scale) and added to a ``WhiteKernel`` (the noise), it gives a
Gaussian process whose mean follows what the network learned and whose
standard deviation says where the training data leave it unsure.

The data are a noisy sine on ``[-3, 3]`` with no training rows in
``[0.5, 1.5]``. The example prints held-out R^2 and the coverage of the 95%
intervals for the network, the GP on its path kernel and a GP on an RBF
kernel, and how the predictive standard deviation grows in the gap and
beyond the data.

Run it with ``python examples/plot_gaussian_process.py``; the figure is
saved as ``gaussian_process.png`` in the working directory.
"""

# %%
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import (  # noqa: E402
    RBF,
    ConstantKernel,
    WhiteKernel,
)
from sklearn.metrics import r2_score  # noqa: E402

from sklearn_pathkernel import PathKernel, PathKernelRegressor  # noqa: E402

warnings.simplefilter("ignore", ConvergenceWarning)

rng = np.random.RandomState(0)
noise = 0.2


def target(x):
    return np.sin(2 * x) + 0.3 * x


X = rng.uniform(-3, 3, (200, 1))
X_train = X[np.abs(X[:, 0] - 1.0) > 0.5][:80]  # a gap in [0.5, 1.5]
y_train = target(X_train[:, 0]) + noise * rng.randn(len(X_train))
X_test = rng.uniform(-3, 3, (200, 1))
y_test = target(X_test[:, 0]) + noise * rng.randn(len(X_test))

# %%
# Train the network, then fit a GP on its path kernel: the GP learns the
# kernel's scale and the noise level by maximising the marginal likelihood;
# the network itself stays as trained. The network runs in float64: a
# float32 path kernel is positive semi-definite only up to rounding, which
# the GP's Cholesky factorisation notices once the noise level gets small.
seconds = {}
start = time.perf_counter()
net = PathKernelRegressor(
    (64,),
    learning_rate_init=0.1,
    max_iter=1000,
    record_every=20,
    tol=0,
    n_iter_no_change=1000,
    dtype="float64",
    random_state=0,
).fit(X_train, y_train)
seconds["network"] = time.perf_counter() - start
start = time.perf_counter()
path_gp = GaussianProcessRegressor(
    kernel=ConstantKernel() * PathKernel(net) + WhiteKernel()
).fit(X_train, y_train)
seconds["path"] = time.perf_counter() - start
start = time.perf_counter()
rbf_gp = GaussianProcessRegressor(kernel=ConstantKernel() * RBF() + WhiteKernel()).fit(
    X_train, y_train
)
seconds["rbf"] = time.perf_counter() - start
print(f"{len(X_train)} training rows, {len(X_test)} test rows, noise sd {noise}")
print(f"GP on the path kernel, fitted: {path_gp.kernel_}")
print(f"  log marginal likelihood {path_gp.log_marginal_likelihood_value_:.1f}")
print(f"GP on an RBF kernel, fitted: {rbf_gp.kernel_}")
print(f"  log marginal likelihood {rbf_gp.log_marginal_likelihood_value_:.1f}")


# %%
# Held-out accuracy and calibration: the share of test targets inside the
# 95% predictive interval (mean +- 1.96 sd, noise included).
def coverage(gp):
    mean, std = gp.predict(X_test, return_std=True)
    return np.mean(np.abs(y_test - mean) <= 1.96 * std)


print(f"\n  {'model':<28} {'test R^2':>8} {'95% coverage':>13} {'fit (s)':>8}")
rows = [
    ("network (PathKernelRegressor)", r2_score(y_test, net.predict(X_test)), None),
    ("GP on the path kernel", path_gp.score(X_test, y_test), coverage(path_gp)),
    ("GP on an RBF kernel", rbf_gp.score(X_test, y_test), coverage(rbf_gp)),
]
for (name, score, cover), fit_seconds in zip(rows, seconds.values()):
    cover = "-" if cover is None else f"{cover:.2f}"
    print(f"  {name:<28} {score:8.3f} {cover:>13} {fit_seconds:8.2f}")

# %%
# Where is the GP unsure? Its standard deviation among the training rows, in
# the gap, and beyond the data.
grid = np.linspace(-4.5, 4.5, 400)[:, None]
regions = {
    "among training rows": (np.abs(grid[:, 0]) < 3) & (np.abs(grid[:, 0] - 1) > 0.6),
    "in the gap [0.5, 1.5]": np.abs(grid[:, 0] - 1) < 0.4,
    "beyond the data": np.abs(grid[:, 0]) > 3.5,
}
print("\nmean predictive sd")
predictions = {}
for name, gp in [("path", path_gp), ("RBF", rbf_gp)]:
    mean, std = gp.predict(grid, return_std=True)
    predictions[name] = (mean, std)
    summary = ", ".join(f"{r} {std[mask].mean():.3f}" for r, mask in regions.items())
    print(f"  {name + ' kernel':<12} {summary}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, (name, (mean, std)) in zip(axes, predictions.items()):
    ax.fill_between(
        grid[:, 0],
        mean - 1.96 * std,
        mean + 1.96 * std,
        alpha=0.25,
        label="95% interval",
    )
    ax.plot(grid[:, 0], mean, label="GP mean")
    ax.plot(grid[:, 0], target(grid[:, 0]), "k--", lw=1, label="truth")
    if name == "path":
        ax.plot(grid[:, 0], net.predict(grid), lw=1, label="network")
    ax.scatter(X_train[:, 0], y_train, s=8, c="k", label="training rows")
    ax.axvspan(0.5, 1.5, color="grey", alpha=0.1)
    ax.set_title(f"GP on the {name} kernel")
    ax.set_xlabel("x")
axes[0].legend(loc="upper left", fontsize=8)
axes[0].set_ylim(-4, 4)
fig.tight_layout()
fig.savefig("gaussian_process.png", dpi=100)
print("saved gaussian_process.png")
