"""kvpress ``KnormPress`` (Devoto et al., arXiv:2406.11430): keep the keys with the LOWEST L2 norm."""
from .base import Scorer, masked


class KeyNormScorer(Scorer):
    name = "knorm"

    def score(self, view, ops):
        return masked(-view.keys.float().norm(dim=-1), view)
