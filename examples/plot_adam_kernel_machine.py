"""
The same network trained with sgd and with Adam, as two kernel machines
=======================================================================

Every solver gives a path kernel and an exact kernel-machine decomposition
(docs/design.md, section 12). With Adam, each training example's gradient
is scaled per parameter by Adam's preconditioner ``1 / (sqrt(v_hat) +
epsilon)``, and spread over later steps by its first moment: the path kernel
takes each step in that metric, ``K(x, x') = sum_s J_s(x) Ptilde_s
J_s(x')^T``.

This example trains one architecture on 800 digits of ``load_digits`` with
plain gradient descent and with Adam, compares the held-out accuracy of each
network with that of an SVC on its path kernel, and shows, for one test
digit, the training digits that contributed most to its predicted class
under each solver, from the exact decomposition.

Run it with ``python examples/plot_adam_kernel_machine.py``; the figure is
saved as ``adam_kernel_machine.png`` in the working directory.
"""

# %%
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from sklearn_pathkernel import PathKernelClassifier  # noqa: E402

# 800 training digits: the kernel's cost grows with their square, the
# exact decomposition's with their number.
digits = load_digits()
X_train, X_test, y_train, y_test, img_train, img_test = train_test_split(
    digits.data,
    digits.target,
    digits.images,
    train_size=800,
    test_size=450,
    random_state=0,
)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

# A fixed number of steps, as in the paper: the loss is still improving.
warnings.simplefilter("ignore", ConvergenceWarning)

# %%
# One architecture, two solvers, the parameter names of MLPClassifier. Full
# batch and float64, every step kept: the setting in which the exact
# decomposition reproduces the network to rounding.
common = dict(
    hidden_layer_sizes=(32,), max_iter=80, tol=0, dtype="float64", random_state=0
)
solvers = {
    "sgd": PathKernelClassifier(solver="sgd", learning_rate_init=0.2, **common),
    "adam": PathKernelClassifier(solver="adam", learning_rate_init=0.01, **common),
}
query = 0  # the test digit to explain
k = 6
fig, axes = plt.subplots(len(solvers), k + 1, figsize=(1.6 * (k + 1), 2.3 * 2))
top = {}
for row, (name, clf) in zip(axes, solvers.items()):
    clf.fit(X_train, y_train)
    K_train = clf.kernel(X_train, normalize="mean_diagonal")
    K_test = clf.kernel(X_test, X_train, normalize="mean_diagonal")
    svc = SVC(kernel="precomputed").fit(K_train, y_train)
    machine = clf.decompose(X_test[query : query + 1], exact=True)
    predicted = int(machine.network_output[0].argmax())
    toward = machine.contributions[0, :, predicted]
    top[name] = np.argsort(-toward)[:k]
    print(
        f"{name:>4}: network {clf.score(X_test, y_test):.3f}, SVC on its path "
        f"kernel {svc.score(K_test, y_test):.3f} held-out accuracy; exact "
        f"decomposition error {machine.error['max_rel']:.1e} (relative); top "
        f"training digits for test digit {query} (predicted {predicted}): "
        f"{y_train[top[name]].tolist()}"
    )
    row[0].imshow(img_test[query], cmap="gray_r")
    row[0].set_title(f"{name}: test {predicted}\n(true {y_test[query]})", fontsize=9)
    for ax, i in zip(row[1:], top[name]):
        ax.imshow(img_train[i], cmap="gray_r")
        ax.set_title(f"{y_train[i]}: {toward[i]:+.3f}", fontsize=9)
shared = len(set(top["sgd"]) & set(top["adam"]))
print(f"the two solvers share {shared} of their top {k} training digits")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("The training digits that made the prediction, under sgd and Adam")
fig.tight_layout()
fig.savefig("adam_kernel_machine.png", dpi=100)
print("saved adam_kernel_machine.png")
