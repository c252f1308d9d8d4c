"""Shared attribution plumbing: the explainer registry and map helpers used by every method."""
from attribution.maps import select_class, to_pixel_map
from attribution.registry import ExplainerSpec, available, get, register

__all__ = ["ExplainerSpec", "available", "get", "register", "select_class", "to_pixel_map"]
