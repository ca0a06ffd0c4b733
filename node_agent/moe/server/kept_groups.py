"""Kept forwards of several requests run as one concatenated batch, and their backwards gathered again.

The server concatenates kept-forward requests that arrive together (as it does plain forwards: larger
matmuls, one optimiser step) and keeps one autograd graph for the batch. Each request stays a *member*
with its own forward id and rows. A member's backward brings the gradients for its rows; once every member
has sent its gradients, or the wait (`ServerOptions.step_delay`) is over, one backward runs over the whole
graph with zeros for the rows of members that did not send theirs. Rows do not interact in a batch (the
batching runtime already relies on this), so every member that did send gets exactly the gradients a
backward of its own would have given, and the absent ones add nothing to the parameter gradients. Absent
members' forward ids are dropped: a late backward falls back to re-sending its inputs.

Pure bookkeeping over tensors: no event loop, no clock, no cache; the server does the waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.moe.server.backend import KeptForward


@dataclass(slots=True, eq=False)
class KeptGroup:
    """One concatenated kept forward and what its members have sent back so far."""

    uid: str
    kept: KeptForward
    fids: list[bytes]
    sizes: list[int]
    #: member index -> output gradients (for that member's rows)
    grads: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: member index -> whatever the server resolves with the answer (a future)
    waiters: dict[int, Any] = field(default_factory=dict)
    done: bool = False

    def check_grads(self, index: int, grads: list[torch.Tensor]) -> None:
        """Raise ValueError unless `grads` fit member `index`'s rows of the kept outputs."""
        outputs = self.kept.outputs
        if len(grads) != len(outputs):
            raise ValueError(f"expected {len(outputs)} output gradients, got {len(grads)}")
        for output, grad in zip(outputs, grads, strict=True):
            expected = (self.sizes[index], *output.shape[1:])
            if tuple(grad.shape) != expected or grad.dtype != output.dtype:
                raise ValueError(
                    f"gradient {tuple(grad.shape)} {grad.dtype} does not match the kept forward's output "
                    f"{expected} {output.dtype}"
                )

    def arrive(self, index: int, grads: list[torch.Tensor], waiter: Any) -> None:
        self.check_grads(index, grads)
        self.grads[index] = grads
        self.waiters[index] = waiter

    def ready(self, still_awaited: Callable[[bytes], bool]) -> bool:
        """Every member has sent its gradients or can no longer send them (`still_awaited(fid)` is False)."""
        return all(i in self.grads or not still_awaited(fid) for i, fid in enumerate(self.fids))

    def absent_fids(self) -> list[bytes]:
        return [fid for i, fid in enumerate(self.fids) if i not in self.grads]

    def full_grads(self) -> list[torch.Tensor]:
        """Output gradients for the whole batch: the members' own, zeros for the absent ones."""
        columns = []
        for k, output in enumerate(self.kept.outputs):
            parts = [
                self.grads[i][k] if i in self.grads else output.new_zeros((size, *output.shape[1:]))
                for i, size in enumerate(self.sizes)
            ]
            columns.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return columns

    @property
    def arrived_samples(self) -> int:
        return sum(self.sizes[i] for i in self.grads)

    def split(self, input_grads: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        """The input gradients of each member that sent its gradients."""
        pieces = [g.split(self.sizes) for g in input_grads]
        return {i: [p[i] for p in pieces] for i in self.grads}
