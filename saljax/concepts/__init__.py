"""Concepts: what a network has learned (issue 17).

This branch adds concept relevance: TCAV (`tcav`, Kim et al. 2018) with its
statistical test against random concepts, and concept relevance propagation
(`crp`, Achtibat et al. 2023) on saljax's LRP rules. See docs/concepts_tcav_crp.md.
"""
from saljax.concepts.crp import (CRPResult, condition_masks, crp,  # noqa: F401
    relevance_maximization)
from saljax.concepts.tcav import (TCAVResult, directional_gradients, layer_activations,  # noqa: F401
    tcav, tcav_scores, train_cavs)

__all__ = [
    "CRPResult", "TCAVResult", "condition_masks", "crp", "directional_gradients",
    "layer_activations", "relevance_maximization", "tcav", "tcav_scores", "train_cavs",
]
