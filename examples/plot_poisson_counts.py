"""
Counts with the Poisson loss: the kernel machine of a log-mean
==============================================================

With ``loss="poisson"`` a ``PathKernelRegressor`` learns the log of the mean
count, ``f(x) = log mu(x)``, and predicts ``exp(f)``, as MLPRegressor does.
Its path kernel and its decomposition describe ``f``, so a training row's
contribution ``phi_i(x)`` *multiplies* the predicted count by
``exp(phi_i(x))``.

The counts here are simulated (scikit-learn ships no count dataset that
needs no download): 600 rows whose mean count rises with ``x0`` and falls
and rises again along ``x1``. The example compares the network with
MLPRegressor on the same settings and with a Poisson GLM, fits a Poisson GLM
on path-kernel random features (a kernel Poisson regression), and explains
one test prediction by the training rows that made it.

Run it with ``python examples/plot_poisson_counts.py``; the figure is saved
as ``poisson_counts.png`` in the working directory.
"""

# %%
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import PoissonRegressor  # noqa: E402
from sklearn.metrics import mean_poisson_deviance  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_pathkernel import PathKernelFeatures, PathKernelRegressor  # noqa: E402

warnings.simplefilter("ignore", ConvergenceWarning)

rng = np.random.default_rng(0)
X = rng.uniform(-2, 2, size=(600, 2))
log_mean = 0.8 * X[:, 0] + 0.6 * (X[:, 1] ** 2 - 1.5)
y = rng.poisson(np.exp(log_mean))
X_train, X_test, y_train, y_test, mu_train, mu_test = train_test_split(
    X, y, np.exp(log_mean), random_state=0
)
print(
    f"{len(X_train)} training rows, {len(X_test)} test rows, mean count "
    f"{y_train.mean():.2f}, largest {y_train.max()}"
)

# %%
# The network and MLPRegressor on the same parameter dict (full-batch
# gradient descent); a Poisson GLM, linear in the log-mean, for reference.
params = dict(
    hidden_layer_sizes=(16,),
    loss="poisson",
    solver="sgd",
    learning_rate_init=0.1,
    momentum=0.0,
    batch_size=len(X_train),
    alpha=0.0,
    max_iter=150,
    tol=0.0,
    random_state=0,
)
models = {
    "PathKernelRegressor(loss='poisson')": PathKernelRegressor(
        **params, dtype="float64"
    ),
    "MLPRegressor(loss='poisson')": MLPRegressor(**params, activation="tanh"),
    "PoissonRegressor (GLM)": PoissonRegressor(alpha=1e-4),
    "PoissonRegressor on 200 path-kernel features": make_pipeline(
        PathKernelFeatures(
            PathKernelRegressor(
                **{**params, "max_iter": 60}, record_every=10, dtype="float64"
            ),
            n_components=200,
            normalize="mean_diagonal",
            random_state=0,
        ),
        StandardScaler(),
        PoissonRegressor(alpha=1e-2, max_iter=1000),
    ),
}
print(f"\n  {'model':<46} {'test deviance':>13} {'seconds':>8}")
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    deviance = mean_poisson_deviance(y_test, model.predict(X_test))
    print(f"  {name:<46} {deviance:13.3f} {time.perf_counter() - start:8.2f}")
best = mean_poisson_deviance(y_test, mu_test)
print(f"  {'the true mean (the floor)':<46} {best:13.3f}")

# %%
# The kernel machine of the log-mean: the bias (the initial network) plus
# one contribution per training row reproduces f = log(mu) exactly, and its
# exponential is the predicted count.
net = models["PathKernelRegressor(loss='poisson')"]
query = X_test[:1]
machine = net.decompose(query, exact=True)
log_mu = machine.prediction()[0, 0]
print(
    f"\nquery x = {np.round(query[0], 2)}: predicted mean count "
    f"{net.predict(query)[0]:.3f} (true {mu_test[0]:.3f})"
)
print(
    f"  exp(bias + sum of contributions) = {np.exp(log_mu):.3f}, "
    f"reconstruction error {machine.error['max_abs']:.1e}"
)
phi = machine.contributions[0, :, 0]
order = np.argsort(-np.abs(phi))[:5]
print("  training rows that moved the count most (factor exp(phi_i)):")
for i in order:
    print(
        f"    row {i:3d} at x = {np.round(X_train[i], 2)}, count {y_train[i]:2d}: "
        f"x{np.exp(phi[i]):.3f}"
    )

# %%
# Left: predicted against true mean counts on the test rows. Right: the
# query's contributions against the distance of each training row from it.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
for name in list(models)[:3]:
    axes[0].scatter(mu_test, models[name].predict(X_test), s=8, label=name)
line = [0, mu_test.max()]
axes[0].plot(line, line, color="k", lw=0.8)
axes[0].set_xlabel("true mean count")
axes[0].set_ylabel("predicted mean count")
axes[0].legend(fontsize=7)
distance = np.linalg.norm(X_train - query, axis=1)
axes[1].scatter(distance, phi, s=8, c=y_train, cmap="viridis")
axes[1].axhline(0, color="k", lw=0.8)
axes[1].set_xlabel("distance of the training row from the query")
axes[1].set_ylabel("contribution to log(mu) at the query")
fig.suptitle("Poisson counts: the network's log-mean as a kernel machine")
fig.tight_layout()
fig.savefig("poisson_counts.png", dpi=100)
print("saved poisson_counts.png")
