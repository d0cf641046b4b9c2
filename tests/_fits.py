"""Fits for the tests: quietly (a short fit is on purpose), or interrupted at a step."""

import warnings

from sklearn.exceptions import ConvergenceWarning


def quiet_fit(est, X, y, **fit_params):
    """``est.fit(X, y)`` without the ConvergenceWarning a short fit gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **fit_params)


def interrupt_at_step(monkeypatch, step, exception=KeyboardInterrupt):
    """Make the training loop raise ``exception`` when it reaches ``step``."""
    from sklearn_pathkernel._training import _loop as _training

    real_step, calls = _training._GradientDescent._step, []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            raise exception()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(_training._GradientDescent, "_step", interrupted)
