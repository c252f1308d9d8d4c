"""RCSB: Region-Constrained Counterfactual Schroedinger Bridges (pure parts).

* :mod:`rcsb.bridge`: I2SB bridge maths (schedule, marginal, posterior, x0 parametrisation,
  inpainting prior, step spacing, a generic sampling loop with a per-step hook).
* :mod:`rcsb.network`: the ADM U-Net with guided-diffusion state-dict names.
* :mod:`rcsb.checkpoints`: loading NVlabs' released I2SB checkpoints.
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
from rcsb.checkpoints import extract_i2sb_state_dict, load_i2sb_weights
from rcsb.network import ADM256_CONFIG, TINY_CONFIG, ADMUNet, adm256, adm_tiny, timestep_embedding

__all__ = [
    "ADM256_CONFIG",
    "ADMUNet",
    "BridgeSchedule",
    "TINY_CONFIG",
    "adm256",
    "adm_tiny",
    "bridge_sample",
    "extract_i2sb_state_dict",
    "inpainting_loss",
    "inpainting_x1",
    "load_i2sb_weights",
    "make_betas",
    "p_posterior",
    "predict_x0",
    "q_sample",
    "sample_steps",
    "timestep_embedding",
    "training_target",
]
