"""Concepts: what a network has learned, not only where it looked (issue 17).

- `extract` (Fel et al. 2023's holistic view, ``A ≈ U W``): concept banks from a
  tapped layer's activations by NMF (CRAFT), PCA, k-means, sparse dictionary
  learning or a TopK / Archetypal sparse autoencoder, fit over a chunked stream.
- `importance`: Sobol total indices (CRAFT), gradient x input and occlusion on
  the concept coefficients, C-Deletion / C-Insertion, concept maps.
- `tcav` (Kim et al. 2018) with its t-test against random concepts.
- `crp` (Achtibat et al. 2023): channel-conditional relevance on saljax's LRP rules.

See docs/concepts.md and docs/concepts_tcav_crp.md.
"""
from saljax.concepts.crp import (CRPResult, condition_masks, crp,  # noqa: F401
    relevance_maximization)
from saljax.concepts.extract import (  # noqa: F401
    METHODS, Concepts, LayerFeatures, decode, encode, fit, layer_features, random_crops,
    reconstruction_error)
from saljax.concepts.importance import (area, c_deletion, c_insertion, concept_maps,  # noqa: F401
                                        estimate_importance, gradient_input, jansen_total,
                                        occlusion, sobol, sobol_indices, sobol_masks)
from saljax.concepts.tcav import (TCAVResult, directional_gradients, layer_activations,  # noqa: F401
    tcav, tcav_scores, train_cavs)

__all__ = [
    "CRPResult", "TCAVResult", "condition_masks", "crp", "directional_gradients",
    "layer_activations", "relevance_maximization", "tcav", "tcav_scores", "train_cavs",
    "METHODS", "Concepts", "LayerFeatures", "decode", "encode", "fit", "layer_features",
    "random_crops", "reconstruction_error", "area", "c_deletion", "c_insertion", "concept_maps",
    "estimate_importance", "gradient_input", "jansen_total", "occlusion", "sobol", "sobol_indices",
    "sobol_masks",
]
