"""Counting the torch operations a piece of work dispatches (issue 21, item 4).

On a GPU every operation is a kernel launch, and some operations make the
host wait for the device. Both can be seen on the CPU: a
``TorchDispatchMode`` sees every operation, on real or meta tensors.
"""

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that wait for the device: a scalar read back to Python
# (``.item()``, ``int()``, ``float()``, ``bool()`` of a tensor), and those
# whose output's size depends on the values (CUDA copies the size back).
WAITING = frozenset(
    {
        "_local_scalar_dense",
        "item",
        "nonzero",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
    }
)


# Operations that only touch metadata on the host, besides views.
METADATA = frozenset({"lift_fresh", "detach", "_unsafe_view"})


class Dispatched(TorchDispatchMode):
    """Counts the operations dispatched, and lists those that wait for the device.

    ``ops`` counts every operation by name; ``synchronising`` names, in
    order, each one that would make the host wait for a GPU (:data:`WAITING`,
    or a copy from a tensor off the CPU into the CPU's memory).
    """

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.views = collections.Counter()
        self.synchronising = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if func.is_view or name in METADATA:
            self.views[name] += 1
        if name in WAITING or copies_to_host(name, args, kwargs):
            self.synchronising.append(name)
        return func(*args, **kwargs)

    @property
    def total(self):
        return sum(self.ops.values())

    @property
    def launches(self):
        """Operations that would launch a kernel on a GPU: all but views.

        A view (``view``, ``expand``, ``permute``, ``select``...) or a
        constant's lift only changes a tensor's metadata on the host;
        ``torch.func.vmap`` adds many of them around its batched products.
        """
        return self.total - sum(self.views.values())


def copies_to_host(name, args, kwargs):
    """A copy from a tensor off the CPU into the CPU's memory."""
    if name == "_to_copy":
        source, target = args[0], kwargs.get("device")
    elif name == "copy_":
        source, target = args[1], args[0].device
    else:
        return False
    if not isinstance(source, torch.Tensor):  # a Python number
        return False
    source = source.device
    return source.type != "cpu" and torch.device(target or source).type == "cpu"
