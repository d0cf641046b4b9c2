"""
SVC on a network's path kernel, against an RBF SVC and the network itself
=========================================================================

``PathKernelTransformer`` trains a network on each fold's training rows and
maps rows to their path kernel against those rows, so that
``SVC(kernel="precomputed")`` can follow it in a ``Pipeline``. This example
tunes three models with ``GridSearchCV`` on ``load_digits`` and
``load_breast_cancer`` and scores them on the same held-out rows:

- the network (``PathKernelClassifier``) alone, its step size tuned;
- ``SVC`` on the network's path kernel, the step size and ``C`` tuned
  together (``pk__estimator__learning_rate_init``, ``svc__C``);
- ``SVC`` on an RBF kernel, ``C`` and ``gamma`` tuned.

The path kernel is normalised by its mean training diagonal
(``normalize="mean_diagonal"``): its raw scale grows with the step size, and
normalised, one grid of ``C`` serves every step size.

Run it with ``python examples/plot_svc_path_kernel.py``; the figure is saved
as ``svc_path_kernel.png`` in the working directory.
"""

# %%
import tempfile
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from sklearn_pathkernel import PathKernelClassifier, PathKernelTransformer  # noqa: E402

warnings.simplefilter("ignore", ConvergenceWarning)

# A small network trained by full-batch gradient descent (one step an epoch),
# every fifth step of its 50-step path kept: 10 checkpoints.
network = PathKernelClassifier(
    (32,), max_iter=50, record_every=5, tol=0, random_state=0
)
step_sizes = [0.3, 0.6]
cache = tempfile.TemporaryDirectory()  # Pipeline memory: one network per fold


def models():
    """The three tuned models; each fold standardizes on its own rows."""
    return {
        "network (PathKernelClassifier)": GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("net", network)]),
            {"net__learning_rate_init": step_sizes},
            cv=3,
        ),
        "SVC on the path kernel": GridSearchCV(
            Pipeline(
                [
                    ("scale", StandardScaler()),
                    ("pk", PathKernelTransformer(network, normalize="mean_diagonal")),
                    ("svc", SVC(kernel="precomputed")),
                ],
                memory=cache.name,
            ),
            {
                "pk__estimator__learning_rate_init": step_sizes,
                "svc__C": np.logspace(0, 2, 3),
            },
            cv=3,
        ),
        "SVC on an RBF kernel": GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf"))]),
            {"svc__C": np.logspace(0, 2, 3), "svc__gamma": ["scale", 0.01, 0.1]},
            cv=3,
        ),
    }


# %%
# Tune on three quarters of each dataset, score on the last quarter.
results = {}
for name, load in [("digits", load_digits), ("breast_cancer", load_breast_cancer)]:
    X, y = load(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, stratify=y, random_state=0
    )
    print(f"\nload_{name}: {len(X_train)} training rows, {len(X_test)} test rows")
    print(f"  {'model':<32} {'accuracy':>8} {'seconds':>8}  best parameters")
    results[name] = {}
    for model_name, search in models().items():
        start = time.perf_counter()
        search.fit(X_train, y_train)
        score = search.score(X_test, y_test)
        seconds = time.perf_counter() - start
        best = ", ".join(
            f"{key.split('__')[-1]}={value:.3g}"
            if not isinstance(value, str)
            else f"{key.split('__')[-1]}={value}"
            for key, value in search.best_params_.items()
        )
        results[name][model_name] = score
        print(f"  {model_name:<32} {score:8.3f} {seconds:8.1f}  {best}")
cache.cleanup()

# %%
# One bar per model and dataset.
fig, ax = plt.subplots(figsize=(7, 3.5))
names = list(next(iter(results.values())))
width = 0.8 / len(names)
for i, model_name in enumerate(names):
    scores = [results[dataset][model_name] for dataset in results]
    bars = ax.bar(np.arange(len(results)) + i * width, scores, width, label=model_name)
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
ax.set_xticks(np.arange(len(results)) + width * (len(names) - 1) / 2)
ax.set_xticklabels([f"load_{dataset}" for dataset in results])
ax.set_ylim(0.8, 1.01)
ax.set_ylabel("held-out accuracy")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3, fontsize=8)
ax.set_title("The network, SVC on its path kernel, and an RBF SVC")
fig.tight_layout()
fig.savefig("svc_path_kernel.png", dpi=100)
print("\nsaved svc_path_kernel.png")
