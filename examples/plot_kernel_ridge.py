"""
Kernel ridge regression on a network's path kernel
===================================================

On ``load_diabetes``, ``KernelRidge(kernel="precomputed")`` after a
``PathKernelTransformer`` is a kernel machine built from the path a network
took while training. The example compares it, tuned with ``GridSearchCV``,
with the network itself, with ``KernelRidge`` on an RBF kernel, and with
``Ridge`` on ``PathKernelFeatures`` (random features of the same kernel, at
a cost linear in the number of rows). The targets are standardized inside
each fold by ``TransformedTargetRegressor``: gradient descent's step size is
absolute.

The second part shows why the kernel is normalised. The raw path kernel
grows with the length of training, so the best ``alpha`` moves with it; with
``normalize="mean_diagonal"`` the cross-validated score curves of a short and
a long training line up and one grid of ``alpha`` serves both.

Run it with ``python examples/plot_kernel_ridge.py``; the figure is saved as
``kernel_ridge.png`` in the working directory.
"""

# %%
import tempfile
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.compose import TransformedTargetRegressor  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.kernel_ridge import KernelRidge  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_pathkernel import (  # noqa: E402
    PathKernelFeatures,
    PathKernelRegressor,
    PathKernelTransformer,
)

warnings.simplefilter("ignore", ConvergenceWarning)

X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
cache = tempfile.TemporaryDirectory()  # Pipeline memory: one network per fold
alphas = np.logspace(-3, 3, 13)


def network(max_iter=100):
    # Every tenth step of the path kept as a checkpoint.
    return PathKernelRegressor(
        (32,), max_iter=max_iter, record_every=10, tol=0, random_state=0
    )


def scaled_target(steps, **pipeline_options):
    """Standardize X and y inside every fold, around the given steps."""
    return TransformedTargetRegressor(
        Pipeline([("scale", StandardScaler()), *steps], **pipeline_options),
        transformer=StandardScaler(),
    )


def path_kernel_ridge(normalize, max_iter=100):
    return scaled_target(
        [
            ("pk", PathKernelTransformer(network(max_iter), normalize=normalize)),
            ("ridge", KernelRidge(kernel="precomputed")),
        ],
        memory=cache.name,
    )


# %%
# Four models, tuned on three quarters of the rows and scored on the rest.
models = {
    "network (PathKernelRegressor)": GridSearchCV(
        scaled_target([("net", network())]),
        {"regressor__net__learning_rate_init": [0.1, 0.2]},
        cv=3,
    ),
    "KernelRidge on the path kernel": GridSearchCV(
        path_kernel_ridge("mean_diagonal"), {"regressor__ridge__alpha": alphas}, cv=3
    ),
    "KernelRidge on an RBF kernel": GridSearchCV(
        scaled_target([("ridge", KernelRidge(kernel="rbf"))]),
        {"regressor__ridge__alpha": alphas, "regressor__ridge__gamma": [0.01, 0.1]},
        cv=3,
    ),
    "Ridge on 500 path-kernel features": scaled_target(
        [
            (
                "features",
                PathKernelFeatures(
                    network(),
                    n_components=500,
                    normalize="mean_diagonal",
                    random_state=0,
                ),
            ),
            ("ridge", RidgeCV(alphas=alphas)),
        ]
    ),
}
print(f"load_diabetes: {len(X_train)} training rows, {len(X_test)} test rows")
print(f"  {'model':<34} {'R^2':>6} {'seconds':>8}")
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    print(
        f"  {name:<34} {model.score(X_test, y_test):6.3f} "
        f"{time.perf_counter() - start:8.1f}"
    )

# %%
# Cross-validated R^2 against alpha, for a short and a ten times longer
# training, without and with normalisation.
alphas = np.logspace(-3, 3, 7)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
print("\nbest alpha by training length (cross-validated R^2 in brackets)")
for ax, normalize in zip(axes, ["none", "mean_diagonal"]):
    line = []
    for max_iter in (10, 100):
        search = GridSearchCV(
            path_kernel_ridge(normalize, max_iter),
            {"regressor__ridge__alpha": alphas},
            cv=3,
            refit=False,  # the cross-validated scores are all we need
        ).fit(X_train, y_train)
        scores = search.cv_results_["mean_test_score"]
        ax.semilogx(alphas, scores, marker="o", label=f"{max_iter} steps")
        alpha = search.best_params_["regressor__ridge__alpha"]
        line.append(f"{max_iter} steps: {alpha:.3g} ({search.best_score_:.3f})")
    print(f"  normalize={normalize!r:<16} " + ", ".join(line))
    ax.set_title(f"normalize={normalize!r}")
    ax.set_xlabel("alpha")
    ax.legend()
axes[0].set_ylabel("cross-validated R^2")
axes[0].set_ylim(0, 0.55)
fig.suptitle("KernelRidge on the path kernel of short and long training")
fig.tight_layout()
fig.savefig("kernel_ridge.png", dpi=100)
cache.cleanup()
print("saved kernel_ridge.png")
