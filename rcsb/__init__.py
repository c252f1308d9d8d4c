"""RCSB: Region-Constrained Counterfactual Schroedinger Bridges.

* :mod:`rcsb.bridge`: I2SB bridge maths (schedule, marginal, posterior, x0 parametrisation,
  inpainting prior, step spacing, a generic sampling loop with a per-step hook).
* :mod:`rcsb.network`: the ADM U-Net with guided-diffusion state-dict names.
* :mod:`rcsb.checkpoints`: loading NVlabs' released I2SB checkpoints and guided-diffusion's pretrained ADM.
* :mod:`rcsb.guidance`: the RCSB sampler (classifier guidance with Tweedie, ADAM stabilisation, adaptive
  normalisation, trajectory truncation; the image kept exactly outside the region).
* :mod:`rcsb.regions`: the bridge's training masks (RCSB's regions, the object's dilated bounding box
  "box:MARGIN" among them, are :func:`explainers.regions.make_region`'s).
* :mod:`rcsb.stage`: the "bridge" stage (I2SB inpainting training with EMA weights).
* :mod:`rcsb.method`: the "rcsb" explanation method (needs a bridge checkpoint).
"""
from rcsb.bridge import (
    BridgeSchedule,
    bridge_sample,
    inpainting_loss,
    inpainting_x1,
    make_betas,
    p_posterior,
    predict_x0,
    q_sample,
    sample_steps,
    training_target,
)
from rcsb.checkpoints import ADM256_UNCOND_URL, ADMWeightsUnavailable, extract_i2sb_state_dict, load_i2sb_pair
from rcsb.checkpoints import load_i2sb_weights, load_openai_adm, openai_adm_state_dict, resolve_adm_checkpoint
from rcsb.callback import RCSBCallback
from rcsb.method import BRIDGE_WEIGHTS, rcsb_explain
from rcsb.stage import PRESETS, BridgeModule, build_network
from rcsb.guidance import CLF_INPUTS, AdamStabilizer, adaptive_normalise, classifier_input, from_bridge, rcsb_sample
from rcsb.guidance import to_bridge
from rcsb.network import ADM256_CONFIG, TINY_CONFIG, ADMUNet, adm256, adm_tiny, timestep_embedding
from rcsb.regions import MASK_FAMILIES, box_mask, freeform_mask, mask_bank
from rcsb.regions import random_cell_mask, training_masks

__all__ = [
    "ADM256_UNCOND_URL",
    "ADMWeightsUnavailable",
    "RCSBCallback",
    "ADM256_CONFIG",
    "ADMUNet",
    "AdamStabilizer",
    "BridgeModule",
    "BRIDGE_WEIGHTS",
    "BridgeSchedule",
    "CLF_INPUTS",
    "MASK_FAMILIES",
    "PRESETS",
    "TINY_CONFIG",
    "adaptive_normalise",
    "adm256",
    "adm_tiny",
    "box_mask",
    "bridge_sample",
    "build_network",
    "classifier_input",
    "extract_i2sb_state_dict",
    "freeform_mask",
    "from_bridge",
    "inpainting_loss",
    "inpainting_x1",
    "load_i2sb_pair",
    "load_i2sb_weights",
    "load_openai_adm",
    "make_betas",
    "mask_bank",
    "openai_adm_state_dict",
    "p_posterior",
    "predict_x0",
    "q_sample",
    "random_cell_mask",
    "rcsb_explain",
    "rcsb_sample",
    "resolve_adm_checkpoint",
    "sample_steps",
    "timestep_embedding",
    "to_bridge",
    "training_masks",
    "training_target",
]
