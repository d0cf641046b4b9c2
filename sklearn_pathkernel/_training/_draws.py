"""The random numbers a fit draws: scikit-learn MLP's stream, and torch's seed.

The default MLP draws what ``MLPClassifier`` / ``MLPRegressor`` draw, from
the same ``RandomState`` in the same order (docs/design.md, section 12), so
that one parameter dict and ``random_state`` start both from the same network
and show both the same batches. torch's own randomness (dropout in a user's
forward) is seeded for the fit and the caller's stream restored after.
"""

from contextlib import contextmanager

import numpy as np
import torch
from sklearn.utils import shuffle


@contextmanager
def seeded_global_rng(seed, device):
    """torch's global RNG seeded with ``seed``, the caller's stream restored after.

    Dropout draws its masks from the global RNG (and on a GPU from that
    device's): seeding it from ``random_state`` makes training reproducible
    without changing the caller's own random stream.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class MLPStream:
    """scikit-learn's MLP random stream: what it draws, in its order.

    One per call of fit or partial_fit, on the ``RandomState`` that
    ``check_random_state(random_state)`` gives (MLP's ``_random_state``,
    made anew at each call): the initial network (``make_mlp``, on a new
    path only), early stopping's split (``_hold_out``), then each epoch's
    shuffle of the training rows (``epoch_order``, which the training
    loop's batches call).
    """

    def __init__(self, random_state):
        self.random_state = random_state
        # Early stopping: MLP's training rows (its split's order), as
        # positions among ours (kept sorted); None: the same rows.
        self.rows = None
        self._order = None

    def epoch_order(self, n_samples, shuffle_rows):
        """This epoch's order of the training rows: MLP's ``sample_idx``.

        MLP shuffles its previous order, starting from ``arange`` at each
        call, and without shuffling goes through its training rows as its
        split left them.
        """
        if self._order is None:
            self._order = np.arange(n_samples)
        if shuffle_rows:
            self._order = shuffle(self._order, random_state=self.random_state)
        return self._order if self.rows is None else self.rows[self._order]


def first_seed(random_state):
    """The torch seed drawn from ``random_state``: its next int32."""
    return int(random_state.randint(np.iinfo(np.int32).max))
