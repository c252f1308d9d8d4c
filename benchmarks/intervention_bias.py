"""Poster section 4 on our scenes: does the gradual-intervention test separate a cue-biased from an unbiased classifier?

Train both (`python train.py --config classifier_synthetic_biased.yaml`, same for `_unbiased`), then
`python benchmarks/intervention_bias.py --biased runs/classifier_synthetic_biased/checkpoints/best.ckpt
 --unbiased runs/classifier_synthetic_unbiased/checkpoints/best.ckpt` writes benchmarks/results/intervention_bias.md.
Test images whose class is not the cue's class get the cue pushed from absent (x = 0) to full strength (x = 1);
the target object's fade (a real cause) is the control.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import CueConfig, SyntheticScenes  # noqa: E402
from interventions import gradual_intervention_test, get_property  # noqa: E402
from models import load_checkpoint, load_stage  # noqa: E402


def evaluate(ckpt: str, scenes: SyntheticScenes, indices: list[int], prop: str, steps: int, perms: int) -> dict:
    """Mean property gradient, fraction significant (p < 0.01) and flip rate of one classifier on one property."""
    model = load_stage(ckpt, expect="classifier").model.eval()
    batch = {k: torch.stack([scenes[i][k] for i in indices]) for k in ("image", "mask", "label")}
    batch["index"] = torch.tensor(indices)
    intervention = get_property(prop)(batch, scenes)
    with torch.no_grad():
        res = gradual_intervention_test(model, batch["image"], intervention, num_steps=steps, num_permutations=perms,
                                        generator=torch.Generator().manual_seed(0))
        acc = (model(batch["image"]).argmax(-1) == batch["label"]).float().mean()
    return {"S": res.gradient.mean().item(), "sig": res.significant.float().mean().item(),
            "flip": res.flipped.float().mean().item(), "acc": acc.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--biased", required=True)
    parser.add_argument("--unbiased", required=True)
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/intervention_bias.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    cue_settings, img_size = load_cue(args.biased)
    cue = CueConfig(**{**cue_settings, "p_eval": 0.0})
    scenes = SyntheticScenes("test", 4 * args.n_images, img_size=img_size, cue=cue, progress=False)
    indices = [i for i in range(len(scenes)) if int(scenes[i]["label"]) != cue.target_class][: args.n_images]
    lines = [
        "# Gradual interventions: biased vs unbiased synthetic classifier\n",
        f"Command: `python benchmarks/intervention_bias.py --biased {args.biased} --unbiased {args.unbiased} "
        f"--n-images {args.n_images}`; {len(indices)} test images whose class is not the cue's class "
        f"({cue.target_class}), N = {args.steps} steps, K = {args.permutations} permutations, delta = 0.01.\n",
        "| property | model | mean gradient magnitude S | significant fraction | flip rate | accuracy (cue absent) |",
        "|---|---|---|---|---|---|",
    ]
    for prop in ("cue", "object_fade"):
        for name, ckpt in (("biased", args.biased), ("unbiased", args.unbiased)):
            r = evaluate(ckpt, scenes, indices, prop, args.steps, args.permutations)
            lines.append(f"| {prop} | {name} | {r['S']:.4f} | {r['sig']:.3f} | {r['flip']:.3f} | {r['acc']:.3f} |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


def load_cue(ckpt: str) -> tuple[dict[str, Any], int]:
    """The cue settings and image size the classifier was trained with (the datamodule's saved hyperparameters)."""
    data = load_checkpoint(ckpt, expect="classifier").get("datamodule_hyper_parameters", {})
    if not data.get("cue"):
        raise ValueError(f"{ckpt} was not trained with a spurious cue (use classifier_synthetic_biased.yaml)")
    return dict(data["cue"]), data["img_size"]


if __name__ == "__main__":
    main()
