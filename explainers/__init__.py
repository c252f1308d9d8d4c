"""The explainer protocol every method follows (one decorator, one registry, one `Explanation`), the map helpers,
the ground-truth metrics and the one score summary, the figures, the evaluation-callback base, and the baseline
attribution methods (captum, grad-cam, RISE, attention rollout, random)."""
from explainers.maps import select_class, to_pixel_map
from explainers.metrics import (
    ScoreSummary,
    fraction_inside,
    fraction_outside,
    ground_truth_metrics,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    summarise,
)
from explainers.protocol import (
    ACCESS_LEVEL,
    Access,
    Explanation,
    MethodSpec,
    available,
    default_target,
    explainer,
    get,
    model_access,
    unregister,
)

__all__ = [
    "ACCESS_LEVEL", "Access", "Explanation", "MethodSpec", "ScoreSummary", "available", "default_target", "explainer",
    "fraction_inside", "fraction_outside", "get", "ground_truth_metrics", "model_access", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "select_class", "summarise", "to_pixel_map", "unregister",
]
