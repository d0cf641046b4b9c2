"""Plots of a path kernel, a kernel machine and the training that made them.

Every function draws on a matplotlib ``Axes`` (a new figure when ``ax=None``)
and returns what it drew on, so that titles, colours and limits can be changed
afterwards; none calls ``plt.show()``.

matplotlib is an optional dependency: ``pip install 'sklearn-pathkernel[plot]'``.
This module imports without it; its functions raise ``ImportError`` when
called without it.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import matplotlib.pyplot as plt
>>> from sklearn.datasets import make_regression
>>> from sklearn_pathkernel import PathKernelRegressor
>>> from sklearn_pathkernel.plotting import plot_gram, plot_reconstruction
>>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
>>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
...                           random_state=0).fit(X, y / 100)
>>> fig, (left, right) = plt.subplots(1, 2)
>>> left = plot_gram(est.kernel(X), y > 0, ax=left)
>>> right = plot_reconstruction(est.decompose(X[:10]), ax=right)
>>> plt.close("all")
"""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "plot_gram",
    "plot_reconstruction",
    "plot_contributions",
    "plot_contributing_images",
    "plot_loss_curve",
]

_MISSING_MATPLOTLIB = (
    "plotting needs matplotlib: pip install 'sklearn-pathkernel[plot]'"
)

# Bar and title colours of contributions that push the output up or down.
_POSITIVE, _NEGATIVE = "tab:blue", "tab:red"


def _pyplot():
    """``matplotlib.pyplot``, imported on first use: matplotlib is an extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(_MISSING_MATPLOTLIB) from exc
    return plt


def _axes(plt, ax):
    """``ax``, or the axes of a new figure."""
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _check_index(value, size, name, what):
    """``value`` as an int in ``[0, size)``, or a ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Integral)
        or not 0 <= value < size
    ):
        raise ValueError(
            f"{name} must be an integer between 0 and {size - 1} ({what}); "
            f"got {value!r} instead."
        )
    return int(value)


def _check_labels(labels, n, of):
    """``labels`` as a 1-D array of length ``n``, or None."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must hold one entry per {of} ({n}); got an array of shape "
            f"{labels.shape} instead."
        )
    return labels


def _ranked(machine, query, k, output):
    """The top ``k`` training rows for one query, ranked by the machine.

    Returns the output column (None picks the query's largest output: the
    prediction itself, or a classifier's predicted class), the ranking from
    :meth:`KernelMachine.top_contributors` for that query, and the query's
    contributions to the column, shape (n_train,).
    """
    n_X, _, n_outputs = machine.contributions.shape
    query = _check_index(query, n_X, "query", "a row of the decomposed X")
    if output is None:
        output = int(np.argmax(machine.network_output[query]))
    else:
        output = _check_index(output, n_outputs, "output", "a column of the output")
    top = machine.top_contributors(k, output=output)
    return output, top, query, machine.contributions[query, :, output]


def plot_gram(
    K,
    labels=None,
    *,
    ax=None,
    cmap="viridis",
    colorbar=True,
    robust=True,
    title="Path kernel Gram matrix",
):
    """Show a Gram matrix as an image, its rows grouped by label.

    Parameters
    ----------
    K : array-like of shape (n_samples, n_samples)
        The Gram matrix, e.g. ``est.kernel(X)``.
    labels : array-like of shape (n_samples,), default=None
        A label per row (e.g. the class). Rows and columns are then sorted by
        label (stable: the original order within a label), thin lines mark
        where one label's block ends, and the ticks name each block.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.
    cmap : str or Colormap, default="viridis"
    colorbar : bool, default=True
        Add a colour bar next to ``ax``.
    robust : bool, default=True
        Span the colours over the 1st to 99th percentile of ``K``, not its
        full range: a path kernel's few large diagonal entries would
        otherwise leave the block structure in one shade.
    title : str or None, default="Path kernel Gram matrix"

    Returns
    -------
    ax : matplotlib Axes
        ``ax.images[0]`` holds the (reordered) matrix.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel.plotting import plot_gram
    >>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    >>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
    ...                           random_state=0).fit(X, y / 100)
    >>> ax = plot_gram(est.kernel(X), labels=y > 0)
    >>> ax.images[0].get_array().shape
    (30, 30)
    >>> plt.close("all")
    """
    plt = _pyplot()
    K = np.asarray(K, dtype=float)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(
            f"K must be a non-empty square 2-D array; got shape {K.shape} instead."
        )
    n = K.shape[0]
    labels = _check_labels(labels, n, "row of K")
    if labels is not None:
        order = np.argsort(labels, kind="stable")
        K = K[np.ix_(order, order)]
        labels = labels[order]
    ax = _axes(plt, ax)
    limits = np.percentile(K, [1, 99]) if robust else (None, None)
    image = ax.imshow(
        K, cmap=cmap, interpolation="nearest", vmin=limits[0], vmax=limits[1]
    )
    if labels is not None:
        # Block edges lie between pixels: pixel i spans [i - 0.5, i + 0.5].
        edges = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        for edge in edges:
            ax.axhline(edge - 0.5, color="white", linewidth=0.8)
            ax.axvline(edge - 0.5, color="white", linewidth=0.8)
        starts = np.r_[0, edges]
        centres = (starts + np.r_[edges, n] - 1) / 2
        names = [str(label) for label in labels[starts]]
        ax.set_xticks(centres, names)
        ax.set_yticks(centres, names)
    if colorbar:
        ax.figure.colorbar(image, ax=ax)
    if title is not None:
        ax.set_title(title)
    return ax


def plot_reconstruction(machine, *, output=0, ax=None, title=None):
    """Scatter the network's output against the kernel machine's prediction.

    Points on the dashed diagonal are queries where ``b(x) + sum_i phi_i(x)``
    reproduces the network; the legend gives the machine's largest relative
    error (over all outputs) and whether the form was exact or first-order.

    Parameters
    ----------
    machine : KernelMachine
        A decomposition, from ``est.decompose(X)``.
    output : int, default=0
        Which output column to plot (a class's logit for a multi-class
        classifier).
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.
    title : str, default=None
        Defaults to "Network vs kernel machine".

    Returns
    -------
    ax : matplotlib Axes
        ``ax.collections[0]`` holds the points: network output (x) and
        kernel-machine prediction (y).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel.plotting import plot_reconstruction
    >>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    >>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
    ...                           random_state=0).fit(X, y / 100)
    >>> ax = plot_reconstruction(est.decompose(X[:10]))
    >>> ax.collections[0].get_offsets().shape
    (10, 2)
    >>> plt.close("all")
    """
    plt = _pyplot()
    n_outputs = machine.network_output.shape[1]
    output = _check_index(output, n_outputs, "output", "a column of the output")
    x = machine.network_output[:, output]
    y = machine.prediction()[:, output]
    ax = _axes(plt, ax)
    form = "exact" if machine.exact else "first-order"
    ax.scatter(
        x, y, s=16, label=f"{form} form, max rel. error {machine.error['max_rel']:.2e}"
    )
    if x.size:
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], "--", color="0.5", label="y = x")
    column = f" (output {output})" if n_outputs > 1 else ""
    ax.set_xlabel(f"network output{column}")
    ax.set_ylabel(f"kernel machine prediction{column}")
    ax.set_title("Network vs kernel machine" if title is None else title)
    ax.legend(loc="upper left")
    return ax


def plot_contributions(machine, query=0, *, k=10, output=None, ax=None, labels=None):
    """Bar chart of the training rows contributing most to one prediction.

    The ``k`` training rows with the largest ``|phi_i(x)|`` for the chosen
    output, largest at the top; blue bars push the output up, red bars down.
    With one output this ranks as ``machine.top_contributors(k)`` does; with
    several it ranks by the contribution to the plotted column.

    Parameters
    ----------
    machine : KernelMachine
        A decomposition, from ``est.decompose(X)``.
    query : int, default=0
        Which row of the decomposed ``X`` to explain.
    k : int, default=10
        How many training rows to show.
    output : int, default=None
        Which output column to explain. None: the only one, or, with several
        outputs, the largest at this query (the predicted class of a
        classifier).
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.
    labels : array-like of shape (n_train,), default=None
        A label per training row (e.g. its class), added to the bar labels.

    Returns
    -------
    ax : matplotlib Axes
        ``ax.patches`` holds the bars, from the largest ``|contribution|``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel.plotting import plot_contributions
    >>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    >>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
    ...                           random_state=0).fit(X, y / 100)
    >>> ax = plot_contributions(est.decompose(X[:3]), query=1, k=5, labels=y > 0)
    >>> len(ax.patches)
    5
    >>> plt.close("all")
    """
    plt = _pyplot()
    n_train, n_outputs = machine.contributions.shape[1:]
    output, top, query, phi = _ranked(machine, query, k, output)
    order = top.indices[query]
    labels = _check_labels(labels, n_train, "training row")
    values = phi[order]
    names = [
        f"train #{i}" if labels is None else f"train #{i} ({labels[i]})" for i in order
    ]
    ax = _axes(plt, ax)
    position = np.arange(len(order))
    ax.barh(
        position,
        values,
        color=np.where(values >= 0, _POSITIVE, _NEGATIVE).tolist(),
    )
    ax.set_yticks(position, names)
    ax.invert_yaxis()  # the largest contribution on top
    ax.axvline(0, color="0.3", linewidth=0.8)
    column = f" to output {output}" if n_outputs > 1 else ""
    ax.set_xlabel(f"contribution phi_i(x){column}")
    ax.set_title(
        f"Query {query}: top {len(order)} training rows "
        f"({top.share[query]:.0%} of total |contribution|)"
    )
    return ax


def plot_contributing_images(
    machine,
    X_train,
    query=0,
    *,
    X_query=None,
    k=8,
    image_shape=(8, 8),
    output=None,
    labels=None,
):
    """Show the training images contributing most to one prediction.

    A row of images: the query (when ``X_query`` is given), then the ``k``
    training rows with the largest ``|phi_i(x)|`` for the chosen output,
    ranked as in :func:`plot_contributions`, each titled with its
    contribution (and label). Titles of rows that push the output up are
    blue, down red.

    Parameters
    ----------
    machine : KernelMachine
        A decomposition, from ``est.decompose(X)``.
    X_train : array-like of shape (n_train, n_features)
        The training rows in the estimator's order, as images to display:
        the data passed to ``fit``, or unscaled pixels in the same order.
    query : int, default=0
        Which row of the decomposed ``X`` to explain.
    X_query : array-like of shape (n_X, n_features) or (n_features,), \
            default=None
        The decomposed rows (row ``query`` is shown), or the query image
        itself. Not shown when None.
    k : int, default=8
        How many training images to show.
    image_shape : tuple of int, default=(8, 8)
        The shape each row is reshaped to (``(8, 8)`` for ``load_digits``);
        its product must be ``n_features``.
    output : int, default=None
        Which output column to explain; see :func:`plot_contributions`.
    labels : array-like of shape (n_train,), default=None
        A label per training row, added to the titles.

    Returns
    -------
    fig : matplotlib Figure
    axes : ndarray of matplotlib Axes, shape (k,) or (k + 1,)
        The query's axes first when ``X_query`` is given.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel.plotting import plot_contributing_images
    >>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    >>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
    ...                           random_state=0).fit(X, y / 100)
    >>> fig, axes = plot_contributing_images(
    ...     est.decompose(X[:3]), X, query=0, X_query=X[:3], k=4, image_shape=(2, 2)
    ... )
    >>> axes.shape
    (5,)
    >>> plt.close("all")
    """
    plt = _pyplot()
    n_X, n_train = machine.contributions.shape[:2]
    X_train = np.asarray(X_train)
    if X_train.ndim != 2 or X_train.shape[0] != n_train:
        raise ValueError(
            f"X_train must be a 2-D array of the {n_train} training rows; got "
            f"shape {X_train.shape} instead."
        )
    image_shape = tuple(image_shape)
    if int(np.prod(image_shape)) != X_train.shape[1]:
        raise ValueError(
            f"image_shape {image_shape} holds {int(np.prod(image_shape))} values, "
            f"but X_train has {X_train.shape[1]} columns."
        )
    output, top, query, phi = _ranked(machine, query, k, output)
    order = top.indices[query]
    labels = _check_labels(labels, n_train, "training row")
    query_image = None
    if X_query is not None:
        X_query = np.asarray(X_query)
        row = X_query if X_query.ndim == 1 else None
        if X_query.ndim == 2 and X_query.shape[0] == n_X:
            row = X_query[query]
        if row is None or row.shape != (X_train.shape[1],):
            raise ValueError(
                f"X_query must be the {n_X} decomposed rows or one row, with "
                f"{X_train.shape[1]} columns; got shape {X_query.shape} instead."
            )
        query_image = row.reshape(image_shape)

    n_columns = len(order) + (query_image is not None)
    fig, axes = plt.subplots(
        1, n_columns, figsize=(1.6 * n_columns, 2.0), squeeze=False
    )
    axes = axes[0]
    panels = iter(axes)
    if query_image is not None:
        ax = next(panels)
        ax.imshow(query_image, cmap="gray_r")
        ax.set_title(f"query {query}", fontsize=9)
    for ax, i in zip(panels, order):
        ax.imshow(X_train[i].reshape(image_shape), cmap="gray_r")
        label = "" if labels is None else f" ({labels[i]})"
        ax.set_title(
            f"#{i}{label}\n{phi[i]:+.3g}",
            fontsize=9,
            color=_POSITIVE if phi[i] >= 0 else _NEGATIVE,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if machine.contributions.shape[2] > 1:
        fig.suptitle(f"Contributions to output {output}", fontsize=10)
    return fig, axes


def plot_loss_curve(estimator, *, ax=None, log=True):
    """Plot a fitted estimator's training loss against the epoch.

    Parameters
    ----------
    estimator : PathKernelRegressor or PathKernelClassifier
        A fitted estimator; its ``loss_curve_`` is plotted.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.
    log : bool, default=True
        Use a logarithmic loss axis.

    Returns
    -------
    ax : matplotlib Axes
        ``ax.lines[0]`` holds epochs ``1 .. n_iter_`` (x) and the losses (y).

    Raises
    ------
    NotFittedError
        When the estimator is not fitted.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel.plotting import plot_loss_curve
    >>> X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    >>> est = PathKernelRegressor(hidden_layer_sizes=(8,), max_iter=20,
    ...                           random_state=0).fit(X, y / 100)
    >>> ax = plot_loss_curve(est)
    >>> len(ax.lines[0].get_ydata())
    20
    >>> plt.close("all")
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    check_is_fitted(estimator, "loss_curve_")
    loss = np.asarray(estimator.loss_curve_, dtype=float)
    ax = _axes(plt, ax)
    ax.plot(np.arange(1, loss.size + 1), loss, label=type(estimator).__name__)
    if log:
        ax.set_yscale("log")
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the default: ticks at whole epochs
        locator.set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    return ax
