"""The demo's PNG figures (``demo --output DIR``), drawn with ``plotting``.

Per dataset: the Gram matrix ordered by class (or target), the network's
output against the kernel machine's prediction, the contributions to one
test prediction (and for image data the contributing training images) and
the loss curve. Needs matplotlib.
"""

import os

import numpy as np

from ._report import format_label


def write_figures(folder, name, *, est, K, machines, data, spec):
    """Draw one dataset's figures into ``folder``.

    Parameters
    ----------
    folder : str
        Created when missing.
    name : str
        The dataset: the files are ``{name}_{figure}.png``.
    est : PathKernelClassifier or PathKernelRegressor
        The network, for its loss curve.
    K : ndarray of shape (n_train, n_train)
        The path kernel of the training rows.
    machines : tuple of KernelMachine
        The first-order and the exact decomposition of the first test rows.
    data : DemoData
    spec : DatasetSpec

    Returns
    -------
    paths : list of str
        The files written.

    Raises
    ------
    OSError
        When a file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plotting

    os.makedirs(folder, exist_ok=True)
    paths = []

    def save(figure, stem):
        path = os.path.join(folder, f"{name}_{stem}.png")
        try:
            figure.savefig(path, dpi=100)
        finally:
            plt.close(figure)
        paths.append(path)

    first, exact = machines
    save(_gram(plotting, name, K, data.y_train, spec).figure, "gram")
    save(_reconstruction(plt, plotting, name, first, exact), "reconstruction")
    labels = [format_label(value) for value in data.y_train]
    ax = plotting.plot_contributions(exact, query=0, k=10, labels=labels)
    ax.figure.set_size_inches(8, 4.5)
    ax.figure.tight_layout()
    save(ax.figure, "contributions")
    if spec.image_shape is not None:
        fig, _ = plotting.plot_contributing_images(
            exact,
            data.X_train_raw,
            query=0,
            X_query=data.X_test_raw[: exact.network_output.shape[0]],
            k=8,
            image_shape=spec.image_shape,
            labels=labels,
        )
        fig.tight_layout()
        save(fig, "contributing_images")
    ax = plotting.plot_loss_curve(est)
    ax.set_title(f"{name}: training loss")
    save(ax.figure, "loss")
    return paths


def _gram(plotting, name, K, y_train, spec):
    """The Gram matrix, rows grouped by class or sorted by target."""
    title = f"{name}: path kernel of {len(K)} training rows"
    if spec.task == "classification":
        return plotting.plot_gram(K, labels=y_train, title=f"{title}, by class")
    order = np.argsort(y_train, kind="stable")
    return plotting.plot_gram(K[np.ix_(order, order)], title=f"{title}, by target")


def _reconstruction(plt, plotting, name, first, exact):
    """Network output against both kernel machines, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    plotting.plot_reconstruction(first, ax=left, title="First-order (the paper)")
    plotting.plot_reconstruction(exact, ax=right, title="Exact (Gauss-Legendre)")
    fig.suptitle(f"{name}: network output vs kernel-machine prediction")
    fig.tight_layout()
    return fig
