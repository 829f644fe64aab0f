"""A distributed, resumable sampler that also hands each sample its own augmentation seed.

Training runs for a number of *iterations*, not epochs, so the position in the data is a pure
function of the iteration: ``epoch = i // batches_per_epoch`` and the batch inside that epoch is
``i % batches_per_epoch``. A resumed run sets the sampler to that position and sees exactly the
batches the uninterrupted run would have seen, with exactly the same augmentations, because the
seed of each sample's random scale/crop/flip is derived from ``(seed, epoch, rank, position)``
instead of from a global random stream.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler", "resumable_batches", "sample_seed"]


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 32-bit seed for one sample's augmentation, independent of every other sample's."""
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch, one shard per rank) that can start mid-epoch.

    Yields ``(index, augmentation_seed)`` pairs; the data sets accept such pairs as keys.

    Parameters
    ----------
    dataset : sized
    num_replicas, rank : int
        World size and this process's rank (1 and 0 without ``torch.distributed``).
    seed : int
        Same on every rank: the shuffle of epoch ``e`` uses ``seed + e``.
    shuffle : bool
    """

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0, shuffle=True):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin the next pass at sample ``start`` of epoch ``epoch`` (this rank's shard)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must lie in 0..{self.num_samples}, got {start}")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        shard = list(super().__iter__())  # this rank's indices for self.epoch
        for position in range(self.start, len(shard)):
            yield shard[position], sample_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self):
        return self.num_samples - self.start


def resumable_batches(loader, sampler: ResumableSampler, start_iteration: int, per_rank_batch: int):
    """Endless batches of ``loader`` (drawing through ``sampler``), starting where iteration
    ``start_iteration`` of a fresh run would be."""
    batches_per_epoch = sampler.num_samples // per_rank_batch
    if batches_per_epoch == 0:
        raise ValueError(
            f"the training set is too small for a batch of {per_rank_batch} per process "
            f"({sampler.num_samples} samples per process)"
        )
    epoch, batch = divmod(start_iteration, batches_per_epoch)
    while True:
        sampler.set_position(epoch, batch * per_rank_batch)
        yield from loader
        epoch, batch = epoch + 1, 0
