"""
The path kernel of a trained network, on two real datasets
==========================================================

Train a small network by full-batch gradient descent, record the path its
parameters take, and hand the resulting path kernel to scikit-learn's kernel
machines: ``KernelRidge`` on ``load_diabetes`` and ``SVC`` on
``load_breast_cancer``. Each row of the printed table is scored on the same
held-out rows; an RBF kernel gives the usual baseline.

Run it with ``python examples/demo.py``.
"""

# %%
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor

warnings.simplefilter("ignore", ConvergenceWarning)


def split(X, y, **kwargs):
    """Hold out a quarter of the rows and standardize X on the training part."""
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0, **kwargs)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def report(title, metric, rows):
    print(f"\n{title}")
    print(f"  {'model':<42} {metric:>9} {'seconds':>8}")
    for name, score, seconds in rows:
        print(f"  {name:<42} {score:9.3f} {seconds:8.2f}")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# %%
# Regression: diabetes progression. The step size is absolute, so the target
# is standardized too; R^2 does not change under that rescaling.
X_train, X_test, y_train, y_test = split(*load_diabetes(return_X_y=True))
mean, std = y_train.mean(), y_train.std()
y_train, y_test = (y_train - mean) / std, (y_test - mean) / std

net, fit_time = timed(
    lambda: PathKernelRegressor(max_iter=100, random_state=0).fit(X_train, y_train)
)
(K_train, K_test), kernel_time = timed(
    lambda: (net.kernel(X_train), net.kernel(X_test, X_train))
)
alphas = {"alpha": np.logspace(-2, 3, 11)}
ridge, ridge_time = timed(
    lambda: GridSearchCV(KernelRidge(kernel="precomputed"), alphas).fit(
        K_train, y_train
    )
)
rbf, rbf_time = timed(
    lambda: GridSearchCV(
        KernelRidge(kernel="rbf"), {**alphas, "gamma": [0.01, 0.03, 0.1]}
    ).fit(X_train, y_train)
)
report(
    f"load_diabetes: {len(X_train)} training rows, path kernel over "
    f"{len(net.trajectory_)} checkpoints",
    "R^2",
    [
        ("network (PathKernelRegressor.predict)", net.score(X_test, y_test), fit_time),
        (
            "KernelRidge on the path kernel",
            ridge.score(K_test, y_test),
            kernel_time + ridge_time,
        ),
        ("KernelRidge on an RBF kernel", rbf.score(X_test, y_test), rbf_time),
    ],
)

# %%
# Classification: breast cancer diagnosis, with SVC on the same kind of kernel.
X_train, X_test, y_train, y_test = split(
    *load_breast_cancer(return_X_y=True), stratify=load_breast_cancer().target
)
clf, fit_time = timed(
    lambda: PathKernelClassifier(max_iter=100, random_state=0).fit(X_train, y_train)
)
(K_train, K_test), kernel_time = timed(
    lambda: (clf.kernel(X_train), clf.kernel(X_test, X_train))
)
Cs = {"C": np.logspace(-3, 2, 11)}
svc, svc_time = timed(
    lambda: GridSearchCV(SVC(kernel="precomputed"), Cs).fit(K_train, y_train)
)
rbf, rbf_time = timed(
    lambda: GridSearchCV(SVC(kernel="rbf"), {**Cs, "gamma": ["scale"]}).fit(
        X_train, y_train
    )
)
report(
    f"load_breast_cancer: {len(X_train)} training rows, path kernel over "
    f"{len(clf.trajectory_)} checkpoints",
    "accuracy",
    [
        ("network (PathKernelClassifier.predict)", clf.score(X_test, y_test), fit_time),
        ("SVC on the path kernel", svc.score(K_test, y_test), kernel_time + svc_time),
        ("SVC on an RBF kernel", rbf.score(X_test, y_test), rbf_time),
    ],
)
