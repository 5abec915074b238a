"""The metric registry."""
from saljax import _registry

# How each metric meets a model with NaN/inf logits (`_registry.MODEL_OUTPUT`;
# "result" when not listed). tests/test_model_output.py holds every claim: a
# metric that turns non-finite logits into a finite score fails it until listed.
MODEL_OUTPUT = {
    # Scores of the attribution alone (and a mask): the model is never run.
    "attribution_localisation": "unused", "auc": "unused", "complexity": "unused",
    "effective_complexity": "unused", "energy_pointing_game": "unused", "focus": "unused",
    "pointing_game": "unused", "relevance_mass": "unused", "relevance_rank": "unused",
    "sparseness": "unused", "top_k_intersection": "unused",
    # Can return finite scores from non-finite logits: accuracies, ranks and
    # correlations of perturbed scores, similarities of re-run explanations.
    "class_sensitivity": "forward", "data_randomization": "forward", "diffroar": "forward",
    "faithfulness_correlation": "forward", "insertion": "forward",
    "model_parameter_randomization": "forward", "random_logit": "forward", "road": "forward",
    "smooth_mprt": "forward", "efficient_mprt": "forward",
    "roar": "forward", "sensitivity_n": "forward",
    "faithfulness_estimate": "forward", "monotonicity": "forward",
    "monotonicity_correlation": "forward", "sufficiency": "forward",
}

REGISTRY = _registry.Registry("metric", model_output=MODEL_OUTPUT)
