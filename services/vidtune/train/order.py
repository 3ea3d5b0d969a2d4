"""The sample order of a run as a pure function of (seed, epoch, position).

Nothing about the order lives in memory only: a resumed run recomputes exactly the sequence the
uninterrupted run would have used from the step it resumes at, so no sample is repeated or skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def epoch_permutation(n_samples: int, repeat: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Sample indices of one epoch (each sample `repeat` times), shuffled by (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return tuple(int(i) % n_samples for i in rng.permutation(n_samples * repeat))


@dataclass(frozen=True)
class DataOrder:
    """Maps optimizer steps to sample indices for every process of a (possibly multi-GPU) run."""

    n_samples: int
    repeat: int
    seed: int
    epochs: int
    grad_accum: int = 1
    world_size: int = 1

    @property
    def per_epoch(self) -> int:
        return self.n_samples * self.repeat

    @property
    def per_step(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def total_steps(self) -> int:
        return max(1, (self.epochs * self.per_epoch) // self.per_step)

    def sample_at(self, position: int) -> tuple[int, int]:
        """(epoch, sample index) of a global position in the sample stream."""
        epoch, offset = divmod(position, self.per_epoch)
        return epoch, epoch_permutation(self.n_samples, self.repeat, self.seed, epoch)[offset]

    def step_samples(self, step: int, rank: int = 0) -> list[int]:
        """Sample indices one process trains on in optimizer step `step` (0-based), micro-batch by micro-batch."""
        base = step * self.per_step
        return [self.sample_at(base + micro * self.world_size + rank)[1] for micro in range(self.grad_accum)]

    def epochs_completed(self, steps_done: int) -> int:
        return min(self.epochs, steps_done * self.per_step // self.per_epoch)
