"""Concepts: what a network has learned (issue 17).

This branch adds concept relevance: TCAV (`tcav`, Kim et al. 2018) and
concept relevance propagation (`crp`, Achtibat et al. 2023).
"""
from saljax.concepts.tcav import (TCAVResult, directional_gradients, layer_activations,  # noqa: F401
    tcav, tcav_scores, train_cavs)
from saljax.concepts.crp import (CRPResult, condition_masks, crp,  # noqa: F401
    relevance_maximization)
