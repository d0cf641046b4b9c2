"""
A small CNN on digits: its path kernel in an SVC, and the digits it leans on
============================================================================

The estimators take 2-D rows, as every scikit-learn estimator does; a network
that wants images gets them through ``input_shape``: each row of 64 pixels
reaches the module as a 1x8x8 image. This example trains a small
convolutional network (``PathKernelClassifier(module=..., input_shape=(1, 8,
8))``) on part of ``load_digits``, puts its path kernel into an
``SVC(kernel="precomputed")`` and compares the two on held-out digits, then
decomposes the network's logits at a few test digits and shows the training
digits that contributed most to each predicted class.

The kernel is computed in eval mode, as everything after training is. Run it
with ``python examples/plot_cnn_digits.py``; the figure is saved as
``cnn_digits.png`` in the working directory.
"""

# %%
import time
import warnings

import matplotlib

matplotlib.use("Agg")  # write files; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from torch import nn  # noqa: E402

from sklearn_pathkernel import PathKernelClassifier  # noqa: E402

warnings.simplefilter("ignore", ConvergenceWarning)

digits = load_digits()
X = digits.data / 16.0  # pixels in [0, 1]; rows stay flat, 64 columns
X_train, X_test, y_train, y_test = train_test_split(
    X, digits.target, train_size=400, test_size=200, random_state=0
)


def small_cnn(n_features, n_outputs):
    """4 filters of 3x3, 2x2 average pooling, one Linear layer: 690 weights."""
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, n_outputs),
    )


# %%
# Minibatch gradient descent, 10 epochs of 10 steps; one checkpoint per epoch
# keeps the kernel's cost at 10 Gram matrices.
start = time.perf_counter()
cnn = PathKernelClassifier(
    module=small_cnn,
    input_shape=(1, 8, 8),
    learning_rate_init=0.3,
    batch_size=40,
    max_iter=10,
    record_every=10,
    kernel_normalize="mean_diagonal",
    random_state=0,
).fit(X_train, y_train)
print(
    f"trained the CNN in {time.perf_counter() - start:.1f} s "
    f"({cnn.trajectory_.n_steps} steps, {len(cnn.trajectory_.weights)} checkpoints)"
)

# %%
# The path kernel of the trained network, between training digits and
# against them for test digits, in an SVC.
start = time.perf_counter()
K_train = cnn.kernel(X_train)
K_test = cnn.kernel(X_test, X_train)
seconds = time.perf_counter() - start
svc = SVC(kernel="precomputed", C=10.0).fit(K_train, y_train)
print(f"path kernel: {K_train.shape} and {K_test.shape} in {seconds:.1f} s")
print(f"held-out accuracy of the CNN:                 {cnn.score(X_test, y_test):.3f}")
print(f"held-out accuracy of SVC on its path kernel:  {svc.score(K_test, y_test):.3f}")

# %%
# The network's logits at three test digits as a sum over training digits
# (first-order form); the digits that pushed most toward each predicted class.
queries = X_test[:3]
start = time.perf_counter()
machine = cnn.decompose(queries)
print(
    f"decomposed {len(queries)} test digits over {len(X_train)} training digits in "
    f"{time.perf_counter() - start:.1f} s; max |network - kernel machine| = "
    f"{machine.error['max_abs']:.2f} (relative {machine.error['max_rel']:.1e})"
)
k = 6
fig, axes = plt.subplots(
    len(queries), k + 1, figsize=(1.5 * (k + 1), 2.1 * len(queries))
)
predicted = machine.network_output.argmax(axis=1)
for q, row in enumerate(axes):
    toward = machine.contributions[q, :, predicted[q]]
    order = np.argsort(-toward)[:k]
    print(
        f"test digit {q} (true {y_test[q]}, predicted {predicted[q]}): the training "
        f"digits {y_train[order].tolist()} push most toward that class"
    )
    row[0].imshow(queries[q].reshape(8, 8), cmap="gray_r")
    row[0].set_title(f"test: {predicted[q]}\n(true {y_test[q]})", fontsize=9)
    for ax, i in zip(row[1:], order):
        ax.imshow(X_train[i].reshape(8, 8), cmap="gray_r")
        ax.set_title(f"{y_train[i]}: {toward[i]:+.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Test digits and the training digits contributing most to their class")
fig.tight_layout()
fig.savefig("cnn_digits.png", dpi=100)
print("saved cnn_digits.png")
