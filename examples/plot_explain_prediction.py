"""
Explaining a digit by the training digits that made the prediction
===================================================================

A network trained by gradient descent is a kernel machine (Domingos, 2020):
its output at ``x`` is the initial network's output plus one contribution
per training example. This example trains a classifier on ``load_digits``,
decomposes its logits at a few test digits, prints how well the first-order
and the exact forms reconstruct the network, and shows each test digit next
to the training digits that contributed most to its predicted class.

Run it with ``python examples/plot_explain_prediction.py``; the figure is
saved as ``explain_prediction.png`` in the working directory.
"""

# %%
import time

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_pathkernel import PathKernelClassifier  # noqa: E402

digits = load_digits()
X_train, X_test, y_train, y_test, img_train, img_test = train_test_split(
    digits.data, digits.target, digits.images, random_state=0
)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

# %%
# Full-batch gradient descent in float64, every step kept: the setting in
# which the exact form reproduces the network to rounding.
clf = PathKernelClassifier(
    (64,), learning_rate_init=0.1, max_iter=100, tol=0, dtype="float64", random_state=0
).fit(X_train, y_train)
print(f"test accuracy of the network: {clf.score(X_test, y_test):.3f}")

queries = X_test[:4]
for exact in (False, True):
    start = time.perf_counter()
    machine = clf.decompose(queries, exact=exact)
    seconds = time.perf_counter() - start
    form = "exact (Gauss-Legendre)" if exact else "first-order (paper)"
    print(
        f"{form:>24}: max |network - kernel machine| = "
        f"{machine.error['max_abs']:.2e} (relative {machine.error['max_rel']:.2e}), "
        f"{seconds:.1f} s for {len(queries)} queries x {len(X_train)} training rows "
        f"x {clf.trajectory_.n_steps} steps"
    )

# %%
# Rank training digits by their contribution to the logit of the predicted
# class: the examples the network leans on when it calls this digit a 3.
predicted = machine.network_output.argmax(axis=1)
k = 6
fig, axes = plt.subplots(
    len(queries), k + 1, figsize=(1.6 * (k + 1), 2.2 * len(queries))
)
for q, row in enumerate(axes):
    toward = machine.contributions[q, :, predicted[q]]
    order = np.argsort(-toward)[:k]
    share = toward[order].sum() / np.abs(toward).sum()
    row[0].imshow(img_test[q], cmap="gray_r")
    row[0].set_title(f"test: {predicted[q]}\n(true {y_test[q]})", fontsize=9)
    for ax, i in zip(row[1:], order):
        ax.imshow(img_train[i], cmap="gray_r")
        ax.set_title(f"{y_train[i]}: {toward[i]:+.3f}", fontsize=9)
    print(
        f"test digit {q} (predicted {predicted[q]}): top {k} training digits "
        f"{y_train[order].tolist()} carry {share:.1%} of the absolute contribution "
        "to that logit"
    )
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Each test digit and the training digits contributing most to its class")
fig.tight_layout()
fig.savefig("explain_prediction.png", dpi=100)
print("saved explain_prediction.png")
