"""Gradual interventions: property gradients E_x|dF(I_x)/dx|, the permutation test (Algorithm 1), the registered
`intervention` method and its evaluation callback."""
from interventions.callback import GradualInterventionCallback
from interventions.gradual import GradualInterventionResult, gradual_intervention_test
from interventions.intervene import (
    AlphaBlend,
    BackgroundReplacement,
    Brightness,
    CueStrength,
    HueShift,
    Intervention,
    PrecomputedSequence,
    hsv_to_rgb,
    load_sequences,
    rgb_to_hsv,
)
from interventions.method import intervention_test
from interventions.permutation_test import (
    PermutationTestResult,
    centred_p_value,
    permutation_test,
    permuted_statistics,
    prediction_flips,
)
from interventions.plot import intervention_strip
from interventions.properties import PROPERTIES, PropertyFactory, get_property
from interventions.property_gradient import (
    autograd_derivative,
    autograd_property_gradient,
    finite_difference_gradient,
    intervention_grid,
    prediction_sequence,
    property_gradient,
    target_class,
)

__all__ = [
    "PROPERTIES", "AlphaBlend", "BackgroundReplacement", "Brightness", "CueStrength", "GradualInterventionCallback",
    "GradualInterventionResult", "HueShift", "Intervention", "PermutationTestResult", "PrecomputedSequence",
    "PropertyFactory", "autograd_derivative", "autograd_property_gradient", "centred_p_value",
    "finite_difference_gradient", "get_property", "gradual_intervention_test", "hsv_to_rgb", "intervention_grid",
    "intervention_strip", "intervention_test", "load_sequences", "permutation_test", "permuted_statistics",
    "prediction_flips", "prediction_sequence", "property_gradient", "rgb_to_hsv", "target_class",
]
