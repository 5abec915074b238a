"""Concepts: what a layer has learned (Fel et al. 2023's holistic view, ``A ≈ U W``).

`extract` learns concept banks from activations (NMF/CRAFT, PCA, k-means,
sparse dictionary learning, TopK SAE) over a chunked stream; `importance`
scores the concepts of a prediction (Sobol total indices, gradient x input,
occlusion) and measures them (C-Deletion, C-Insertion), with concept maps.
"""
from saljax.concepts.extract import (  # noqa: F401
    METHODS, Concepts, LayerFeatures, decode, encode, fit, layer_features, random_crops,
    reconstruction_error)
from saljax.concepts.importance import (area, c_deletion, c_insertion, concept_maps,  # noqa: F401
                                        estimate_importance, gradient_input, jansen_total,
                                        occlusion, sobol, sobol_indices, sobol_masks)
