"""Cross-process helpers of the LM loop: the E-step normalises over the GLOBAL batch.

Every process holds an equal share of a batch (rank order). An algorithm gathers what it
normalises over (rewards, advantages, sequence log-probs), computes the global target,
and keeps its own rows (:meth:`Distributed.local_slice`), so a distributed run computes
what one process would. On one process every helper is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from emrl.seeding import get_rng_state


class Distributed:
    """Gather, slice and reduce over the processes of an ``accelerate.Accelerator``."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def gather(self, x: Tensor) -> Tensor:
        """Concatenate ``x`` over processes in rank order (identity on one process)."""
        return self.accelerator.gather(x.contiguous()) if self.world > 1 else x

    def gather_padded(self, x: Tensor) -> Tensor:
        """:meth:`gather` after right-padding dim 1 to the longest over processes."""
        if self.world == 1:
            return x
        xp = self.accelerator.pad_across_processes(x, dim=1, pad_index=0, pad_first=False)
        return self.accelerator.gather(xp.contiguous())

    def local_slice(self, x: Tensor, n_local: int) -> Tensor:
        """This process's rows of a gathered tensor (equal shares per process)."""
        return x[self.rank * n_local:(self.rank + 1) * n_local]

    def global_count(self, n_local: int) -> int:
        return n_local * self.world

    def sum(self, x: Tensor) -> Tensor:
        """Elementwise sum of ``x`` over processes."""
        return self.accelerator.reduce(x, reduction="sum") if self.world > 1 else x

    def mean(self, x: Tensor) -> Tensor:
        """Elementwise mean of ``x`` over processes."""
        return self.accelerator.reduce(x, reduction="mean") if self.world > 1 else x

    def global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        """``Σ x·mask / Σ mask`` over every process's rows."""
        s = self.sum(torch.stack([(x * mask).sum().float(), mask.sum().float()]))
        return float(s[0] / s[1].clamp(min=1))

    def rng_states(self) -> list[dict[str, Any]]:
        """Every process's global RNG states, in rank order (each rank samples its own
        share of the rollouts and dropout masks, so an exact resume needs all of them)."""
        if self.world == 1:
            return [get_rng_state()]
        from accelerate.utils import gather_object

        return list(gather_object([get_rng_state()]))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()
