"""How many torch intra-op threads an edit or a restore of small CPU matrices runs on: one.

An edit of a small matrix is a string of short, mostly memory-bound ops, and each parallel region ends in a barrier
that waits for every OpenMP thread. On a busy CPU one of those threads is often descheduled, and the barrier then
costs a scheduler time slice, far more than the op itself. Small CPU matrices are therefore edited and restored on
one intra-op thread each, and the cores are used by editing several matrices at once instead (edit kinds marked
``thread_safe``). Big matrices, and any on an accelerator, keep the caller's threads: their regions are long enough
to pay for the barrier. A side effect: the result of a small matrix's edit (e.g. the matmuls of a low-rank
truncation) does not depend on the caller's thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import torch

#: CPU matrices up to this many elements are edited and restored on one intra-op thread.
SERIAL_MAX_NUMEL: Final = 1 << 22


def small_cpu_matrix(view: torch.Tensor) -> bool:
    """Whether ``view`` is edited and restored on one intra-op thread (see the module doc)."""
    return view.device.type == "cpu" and view.numel() <= SERIAL_MAX_NUMEL


@contextlib.contextmanager
def one_cpu_thread(enabled: bool) -> Iterator[None]:
    """Run the body with one torch intra-op thread if ``enabled``, giving the caller's count back after."""
    import torch

    before = torch.get_num_threads()
    if not enabled or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
