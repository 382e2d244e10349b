"""Which training images an epoch draws (`train.sampler`) when the grades are to be balanced.

73.5 % of EyePACS is grade 0 and 2 % grade 4: shuffled epochs show the model few severe eyes.

    shuffle      each image once per epoch, in an order seeded by (seed, epoch): torch's
                 DistributedSampler, built by the train step (not here)
    balanced     as many draws as images, with replacement, every grade present equally likely
    progressive  the grade probabilities move linearly from the data's own (instance balance)
                 at the first epoch to equal (class balance) at the last, as Kang et al. (2020)
                 and Huang et al.'s "progressively balanced" sampler do

An epoch's draws depend on (seed, epoch) alone: a resumed run draws what an uninterrupted one
did. Under DDP every rank makes the same draws and reads every world_size-th of them from its
rank on, so the ranks' shards are disjoint and make up the epoch together.
"""

import math

import numpy as np
from torch.utils.data import Sampler

from retino.grades import NUM_CLASSES


class GradeSampler(Sampler[int]):
    def __init__(
        self,
        labels: np.ndarray,
        mode: str,
        epochs: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if mode not in ("balanced", "progressive"):
            raise ValueError(f"GradeSampler: mode {mode!r}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        self.mode, self.epochs, self.seed = mode, epochs, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """0-based, as DistributedSampler's: the engine calls it before each epoch."""
        self.epoch = epoch

    def grade_probabilities(self) -> np.ndarray:
        """The chance of each grade per draw in this epoch (absent grades: 0)."""
        instance = self.counts / self.counts.sum()
        balanced = (self.counts > 0) / np.count_nonzero(self.counts)
        if self.mode == "balanced":
            return balanced
        share = self.epoch / max(self.epochs - 1, 1)  # 0 at the first epoch, 1 at the last
        return (1 - share) * instance + share * balanced

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.num_replicas)

    def __iter__(self):
        per_image = self.grade_probabilities()[self.labels] / self.counts[self.labels]
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = rng.choice(
            len(self.labels), size=len(self) * self.num_replicas, p=per_image / per_image.sum()
        )
        return iter(draws[self.rank :: self.num_replicas].tolist())
