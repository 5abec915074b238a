"""Metrics, registered by name.

``names()`` lists every metric; ``get(name)`` returns it. Each follows
``metric(f, x, attribution, target, *, key=None, **options)`` and returns
per-example scores ``[B]`` (and the curve where the metric has one).
"""
from saljax.metrics._registry import REGISTRY as _REGISTRY
# Importing a family module registers its metrics.
from saljax.metrics import (  # noqa: F401
    axiomatic, contrastive, faithfulness, information, localization, perturbation, randomization,
    removal, robustness, simplicity, stability)


def names(family=None):
  """Registered metric names (optionally of one family, e.g. ``family="faithfulness"``)."""
  return _REGISTRY.names(family)


def get(name):
  """The metric registered as `name`."""
  return _REGISTRY.get(name)


def entry(name):
  """Registry entry of `name` (`saljax._registry.Entry`: family, needs, direction, cost, ...)."""
  return _REGISTRY.entry(name)


# Helpers that are not metrics but that users of the metrics need.
from saljax.metrics.contrastive import (  # noqa: E402,F401
    contrast_weights, contrastive_map, contrastive_model, mask_top)
from saljax.metrics.faithfulness import linear_imputation  # noqa: E402,F401
from saljax.metrics.generalizability import mege, mege_reco, reco  # noqa: E402,F401
from saljax.metrics.information import aggregate_pic, random_mask  # noqa: E402,F401
from saljax.metrics.localization import boxes_to_mask, make_mosaics, quadrant_mask  # noqa: E402,F401
from saljax.metrics.randomization import (  # noqa: E402,F401
    discrete_entropy, random_other_class, random_parameters)
from saljax.metrics.removal import remove_by_attribution  # noqa: E402,F401

# Every registered metric, imported by name (tests/test_public_api.py checks
# this list against the registry). The complexity family's module is
# `simplicity` because a module named `complexity` would be hidden by the
# metric of that name.
from saljax.metrics.axiomatic import (completeness, input_invariance, non_sensitivity)
from saljax.metrics.contrastive import (class_group_contrastivity, contrastive_class_score,
    contrastive_group_score, pointwise_group_score)
from saljax.metrics.faithfulness import (area_between_curves, deletion, faithfulness_correlation,
    infidelity, insertion, pixel_flipping, road, sensitivity_n)
from saljax.metrics.information import (aic, sic)
from saljax.metrics.perturbation import (faithfulness_estimate, irof, monotonicity,
    monotonicity_correlation, region_perturbation, selectivity, sufficiency)
from saljax.metrics.localization import (attribution_localisation, auc, energy_pointing_game,
    focus, pointing_game, relevance_mass, relevance_rank, top_k_intersection)
from saljax.metrics.randomization import (class_sensitivity, data_randomization,
    efficient_mprt, model_parameter_randomization, random_logit, smooth_mprt)
from saljax.metrics.removal import (diffroar, roar)
from saljax.metrics.robustness import (local_lipschitz, max_sensitivity, relative_input_stability)
from saljax.metrics.simplicity import (complexity, effective_complexity, sparseness)
from saljax.metrics.stability import (avg_sensitivity, consistency, continuity,
    relative_output_stability, relative_representation_stability)

__all__ = [
    "names", "get", "entry", "contrast_weights", "contrastive_map", "contrastive_model",
    "mask_top", "linear_imputation", "boxes_to_mask", "make_mosaics", "quadrant_mask",
    "discrete_entropy", "random_other_class", "random_parameters", "remove_by_attribution",
    "mege", "mege_reco", "reco", "aggregate_pic", "random_mask", "aic", "sic",
    "area_between_curves", "attribution_localisation", "auc", "class_group_contrastivity",
    "class_sensitivity", "complexity", "contrastive_class_score", "contrastive_group_score",
    "data_randomization", "deletion", "diffroar", "effective_complexity", "efficient_mprt",
    "energy_pointing_game", "faithfulness_correlation", "focus", "infidelity", "insertion",
    "local_lipschitz", "max_sensitivity", "model_parameter_randomization", "pixel_flipping",
    "pointing_game", "pointwise_group_score", "random_logit", "relative_input_stability",
    "relevance_mass", "relevance_rank", "road", "roar", "sensitivity_n", "smooth_mprt",
    "sparseness", "top_k_intersection", "faithfulness_estimate", "irof", "monotonicity",
    "monotonicity_correlation", "region_perturbation", "selectivity", "sufficiency",
    "avg_sensitivity", "completeness", "consistency", "continuity",
    "input_invariance", "non_sensitivity", "relative_output_stability",
    "relative_representation_stability",
]
