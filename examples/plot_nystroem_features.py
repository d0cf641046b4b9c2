"""
Nyström features of the path kernel, against random features and the exact kernel
==================================================================================

A kernel machine on the exact path kernel needs the ``n x n`` Gram matrix of
the training rows. Two transformers replace it by ``n_components`` explicit
features, so that a linear model follows at a cost linear in ``n``:

- ``PathKernelNystroem`` draws ``n_components`` landmark rows ``L`` among
  the training rows and maps ``X`` to ``K(X, L) K(L, L)^(-1/2)``: exact on
  the landmarks, the feature map projected on the landmarks' span;
- ``PathKernelFeatures`` takes ``n_components`` random sketches of the
  kernel's exact feature map (every checkpoint's Jacobian): unbiased, with
  an error that falls like ``1 / sqrt(n_components)``.

On ``load_digits`` this example trains one small network, and compares the
held-out accuracy of ``LinearSVC`` on each kind of feature at 50, 100 and
200 components with ``SVC`` on the exact kernel, timing each fit and
transform (the network's training included: each transformer trains its own
clone, the same network for the same ``random_state``).

Run it with ``python examples/plot_nystroem_features.py``; the figure is
saved as ``nystroem_features.png`` in the working directory.
"""

# %%
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC, LinearSVC  # noqa: E402

from sklearn_pathkernel import (  # noqa: E402
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelNystroem,  # noqa: E402
    PathKernelTransformer,
)

warnings.simplefilter("ignore", ConvergenceWarning)

# %%
# Three quarters of the digits to train, one to test, standardized on the
# training rows. A small network, every tenth step of its 50-step path kept
# (5 checkpoints): the cost of every method grows with the number of
# checkpoints. Nyström features cost ``n x n_components`` kernel entries;
# random features a sketch of every row's gradients per checkpoint.
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
network = PathKernelClassifier(
    (16,), learning_rate_init=0.2, max_iter=50, record_every=10, tol=0, random_state=0
)


def evaluate(transformer, classifier):
    """Held-out accuracy, and the seconds of fit + transform + classifier."""
    start = time.perf_counter()
    Z_train = transformer.fit_transform(X_train, y_train)
    Z_test = transformer.transform(X_test)
    accuracy = classifier.fit(Z_train, y_train).score(Z_test, y_test)
    return accuracy, time.perf_counter() - start


# %%
# The first calls pay torch's one-time setup: a run on a few rows first
# keeps it out of the times.
for Transformer in (PathKernelNystroem, PathKernelFeatures):
    Transformer(network, n_components=5).fit_transform(X_train[:50], y_train[:50])

# %%
# Every kernel is normalised by its mean training diagonal, so that one
# regularisation strength (the defaults, ``C=1``) serves them all.
n_components = [50, 100, 200]
methods = {
    "Nyström (PathKernelNystroem)": PathKernelNystroem,
    "random features (PathKernelFeatures)": PathKernelFeatures,
}
results = {name: [] for name in methods}
print(f"load_digits: {len(X_train)} training rows, {len(X_test)} test rows")
print(f"  {'features':<38} {'n_components':>12} {'accuracy':>8} {'seconds':>8}")
for m in n_components:
    for name, Transformer in methods.items():
        transformer = Transformer(
            network, n_components=m, normalize="mean_diagonal", random_state=0
        )
        accuracy, seconds = evaluate(transformer, LinearSVC())
        results[name].append((accuracy, seconds))
        print(f"  {name:<38} {m:>12} {accuracy:8.3f} {seconds:8.2f}")

exact_accuracy, exact_seconds = evaluate(
    PathKernelTransformer(network, normalize="mean_diagonal"),
    SVC(kernel="precomputed"),
)
print(
    f"  {'exact kernel, SVC (PathKernelTransformer)':<38} {len(X_train):>12} "
    f"{exact_accuracy:8.3f} {exact_seconds:8.2f}"
)

# %%
# Nyström features are exact on their landmarks and adapt to the data: with
# few components they are clearly more accurate than random features, and
# both approach the exact kernel as ``n_components`` grows. At this size the
# exact kernel is cheap too; its ``n x n`` matrix is what the features avoid
# when ``n`` runs into the tens of thousands.
fig, (ax_accuracy, ax_seconds) = plt.subplots(1, 2, figsize=(9, 3.5))
for name, scores in results.items():
    ax_accuracy.plot(n_components, [a for a, _ in scores], "o-", label=name)
    ax_seconds.plot(n_components, [s for _, s in scores], "o-", label=name)
for ax, value in [(ax_accuracy, exact_accuracy), (ax_seconds, exact_seconds)]:
    ax.axhline(value, color="k", linestyle="--", label="exact kernel, SVC")
    ax.set_xlabel("n_components")
    ax.set_xticks(n_components)
ax_accuracy.set_ylabel("held-out accuracy")
ax_seconds.set_ylabel("seconds (fit + transform)")
ax_accuracy.legend(fontsize=8)
fig.suptitle("LinearSVC on path-kernel features, load_digits")
fig.tight_layout()
fig.savefig("nystroem_features.png", dpi=100)
print("\nsaved nystroem_features.png")
