"""The sample order of a run as a pure function of (seed, epoch, position).

Nothing about the order lives in memory only: a resumed run recomputes exactly the sequence the
uninterrupted run would have used from the step it resumes at, so no sample is repeated or skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def epoch_permutation(n_samples: int, repeat: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Sample indices of one epoch (each sample `repeat` times), shuffled by (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return tuple(int(i) % n_samples for i in rng.permutation(n_samples * repeat))


def bucketed_permutation(groups: tuple[int, ...], repeat: int, seed: int, epoch: int, per_step: int) -> tuple[int, ...]:
    """One epoch's indices in runs of `per_step` drawn from one bucket each (every micro-batch of every
    process in one optimizer step has the same shape, so no process waits for a larger one), the runs
    shuffled by (seed, epoch). A bucket's remainder that fills no run joins a mixed run at the end."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = len(groups)
    members: dict[int, list[int]] = {}
    for i in range(n * repeat):
        members.setdefault(groups[i % n], []).append(i % n)
    runs, rest = [], []
    for bucket in sorted(members):
        shuffled = [members[bucket][j] for j in rng.permutation(len(members[bucket]))]
        cut = len(shuffled) // per_step * per_step
        runs += [shuffled[k:k + per_step] for k in range(0, cut, per_step)]
        rest += shuffled[cut:]
    order = [i for r in rng.permutation(len(runs)) for i in runs[r]] if runs else []
    return tuple(order + rest)


@dataclass(frozen=True)
class DataOrder:
    """Maps optimizer steps to sample indices for every process of a (possibly multi-GPU) run.

    With `groups` (the bucket of each sample) an epoch is drawn bucket by bucket (bucketed_permutation);
    without, it is one plain permutation."""

    n_samples: int
    repeat: int
    seed: int
    epochs: int
    grad_accum: int = 1
    world_size: int = 1
    groups: tuple[int, ...] = ()
    _epochs: dict = field(default_factory=dict, compare=False, repr=False)

    def permutation(self, epoch: int) -> tuple[int, ...]:
        if not self.groups:
            return epoch_permutation(self.n_samples, self.repeat, self.seed, epoch)
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            self._epochs[epoch] = bucketed_permutation(self.groups, self.repeat, self.seed, epoch, self.per_step)
        return self._epochs[epoch]

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
        return epoch, self.permutation(epoch)[offset]

    def step_samples(self, step: int, rank: int = 0) -> list[int]:
        """Sample indices one process trains on in optimizer step `step` (0-based), micro-batch by micro-batch."""
        base = step * self.per_step
        return [self.sample_at(base + micro * self.world_size + rank)[1] for micro in range(self.grad_accum)]

    def epochs_completed(self, steps_done: int) -> int:
        return min(self.epochs, steps_done * self.per_step // self.per_epoch)
