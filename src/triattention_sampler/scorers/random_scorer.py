"""Uniformly random keep sets: the floor every scorer must beat."""
import torch

from .base import Scorer, masked


class RandomScorer(Scorer):
    """Seeded: the same seed gives the same choices (one generator per device)."""

    name = "random"

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self._generators = {}

    def score(self, view, ops):
        dev = view.keys.device
        gen = self._generators.get(dev)
        if gen is None:
            gen = self._generators[dev] = torch.Generator(device=dev).manual_seed(self.seed)
        return masked(torch.rand(view.candidates.shape, generator=gen, device=dev), view)
