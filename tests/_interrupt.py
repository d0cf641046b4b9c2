"""Interrupting a fit at a chosen step, for the tests of what a failure leaves."""


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
