"""RCSB on the ground-truth scenes: flip rate and realism by region, the poster's ablation, and a known bias.

    python benchmarks/rcsb_synthetic.py --classifier runs/quickstart/classifier/checkpoints/best.ckpt \
        --bridge runs/bridge_synthetic/checkpoints/best.ckpt \
        --biased runs/classifier_synthetic_biased/checkpoints/best.ckpt \
        --unbiased runs/classifier_synthetic_unbiased/checkpoints/best.ckpt

Experiments (each a table in benchmarks/results/rcsb_synthetic.md):
* flip: target = (predicted + 1) mod 6, regions from the object mask ("truth") and from ReX and Integrated
  Gradients maps of the predicted class (top 4 px cells covering 10 % and 30 % of the image), guided (s = 1.5)
  against the unguided control (s = 0, the bridge's inpainting alone);
* ablation: the four interventions (Tweedie, ADAM, adaptive normalisation, truncation) switched on one at a time
  on the object-mask region, against all off and all on;
* bias: the cue-biased and the unbiased classifier, region = the corner where the cue would be, target = the cue's
  class: RCSB should flip the biased classifier only.
Realism: FID in the pre-logit feature space of the unbiased classifier (offline; not comparable to Inception FID)
against 500 other real test scenes, and LPIPS where torchvision's weights are available.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from datamodules import CueConfig, SyntheticScenes  # noqa: E402
from evaluation import discover  # noqa: E402
from explainers import get  # noqa: E402
from models import load_checkpoint, load_stage  # noqa: E402
from explainers.regions import make_region  # noqa: E402
from rcsb.realism import ClassifierFeatures, RealismUnavailable, frechet_distance, lpips_distance  # noqa: E402


def batches(scenes: SyntheticScenes, indices: list[int], size: int, device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """The scenes at `indices` as stacked batches of at most `size`, on `device`."""
    out = []
    for i in range(0, len(indices), size):
        items = [scenes[j] for j in indices[i:i + size]]
        out.append({k: torch.stack([torch.as_tensor(it[k]) for it in items]).to(device) for k in items[0]})
    return out


class Runner:
    """Runs RCSB on fixed batches and turns the results into one table row."""

    def __init__(self, bridge: Any, features: ClassifierFeatures, reference: torch.Tensor, args: argparse.Namespace):
        self.bridge, self.features, self.reference, self.args = bridge, features, reference, args
        self.method = get("rcsb")
        self.lpips_note: str | None = None

    def run(self, classifier: torch.nn.Module, data: list[dict], regions: list[torch.Tensor], targets: list[torch.Tensor],
            **options: Any) -> dict[str, Any]:
        rows: dict[str, list[torch.Tensor]] = {}
        originals, counterfactuals, seconds = [], [], 0.0
        for batch, region, target in zip(data, regions, targets):
            out = self.method({"classifier": classifier, "bridge": self.bridge}, batch["image"], target, batch=batch,
                              region=region, nfe=self.args.nfe, **options)
            seconds += out.seconds
            for k, v in out.scores.items():
                rows.setdefault(k, []).append(torch.as_tensor(v).float())
            originals.append(batch["image"])
            counterfactuals.append(out.counterfactual)
            rows.setdefault("area", []).append(region.flatten(1).float().mean(1))
        scores = {k: torch.cat(v) for k, v in rows.items()}
        x, cf = torch.cat(originals), torch.cat(counterfactuals)
        row = {
            "n": len(x),
            "flip": scores["flipped"].mean().item(),
            "p_target": scores["target_probability"].mean().item(),
            "p_before": scores["original_probability"].mean().item(),
            "l1_in": scores["l1_inside"].mean().item(),
            "out": scores["change_outside"].max().item(),
            "area": scores["area"].mean().item(),
            "fid": frechet_distance(self.features, self.reference, cf),
            "fid_orig": frechet_distance(self.features, self.reference, x),
            "s_per_image": seconds / len(x),
        }
        row["lpips"] = float("nan")
        if self.lpips_note is None:
            try:
                row["lpips"] = lpips_distance(x, cf).mean().item()
            except RealismUnavailable as err:
                self.lpips_note = str(err)
        return row


def fmt(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    cells = []
    for k in keys:
        v = row[k]
        cells.append("n/a" if isinstance(v, float) and v != v else f"{v:.3f}" if isinstance(v, float) else str(v))
    return "| " + " | ".join(cells) + " |"


COLUMNS = ("n", "flip", "p_target", "p_before", "l1_in", "out", "area", "fid", "fid_orig", "lpips", "s_per_image")
HEADER = ("| images | flip rate | p(target) after | p(target) before | L1 inside | max change outside | region area "
          "| FID (feat.) | FID (feat.) of originals | LPIPS | s / image |")
RULE = "|---" * (len(COLUMNS)) + "|"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True)
    p.add_argument("--bridge", required=True)
    p.add_argument("--biased", required=True)
    p.add_argument("--unbiased", required=True)
    p.add_argument("--n-images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--experiments", default="speed,flip,ablation,bias")
    p.add_argument("--bias-scales", default="1.5,0", help="guidance scales of the bias check (0 = the control)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rcsb_synthetic.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    discover()
    start = time.time()
    dev = args.device
    bridge = load_stage(args.bridge, expect="bridge").eval().requires_grad_(False).to(dev)
    size = int(bridge.hparams["image_size"])
    classifier = load_stage(args.classifier, expect="classifier").model.eval().requires_grad_(False).to(dev)
    unbiased = load_stage(args.unbiased, expect="classifier").model.eval().requires_grad_(False).to(dev)
    features = ClassifierFeatures(unbiased)
    plain = SyntheticScenes("test", 1000 + args.n_images, img_size=size, progress=False)
    reference = torch.stack([plain[i]["image"] for i in range(args.n_images, args.n_images + 500)])
    runner = Runner(bridge, features, reference, args)
    command = " ".join(["python benchmarks/rcsb_synthetic.py", *sys.argv[1:]])
    where = (torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"{torch.get_num_threads()} CPU threads")
    lines = [
        "# RCSB on the synthetic scenes: flips, realism, ablation, a known bias\n",
        f"Command: `{command}`\n",
        f"Bridge `{args.bridge}` ({size} px); nfe {args.nfe}, start 650 of 1000, s = 1.5 unless stated; "
        f"{where}. FID (feat.) is a Frechet distance in the pre-logit space of the "
        "unbiased classifier (offline stand-in; NOT comparable to Inception FID), against 500 other real test scenes; "
        "'FID of originals' is the same distance for the unedited images (the floor for this sample size). "
        "'max change outside' is the largest |change| outside the region over all images (must be 0).\n",
    ]
    experiments = args.experiments.split(",")
    data = batches(plain, list(range(args.n_images)), args.batch_size, dev)
    with torch.no_grad():
        predicted = [classifier(b["image"]).argmax(1) for b in data]
    targets = [(p + 1) % 6 for p in predicted]

    if "speed" in experiments:
        lines += ["## Speed at the poster's nfe 100 (object-mask region, one batch)\n",
                  "| nfe | batch " + HEADER, "|---|---" + RULE]
        speed_args = argparse.Namespace(**{**vars(args), "nfe": 100})
        warm = {key: v[:2] for key, v in data[0].items()}
        runner.run(classifier, [warm], [warm["mask"].bool()], [targets[0][:2]])
        for k in sorted({min(8, args.batch_size), args.batch_size}):
            first = {key: v[:k] for key, v in data[0].items()}
            row = Runner(bridge, features, reference, speed_args).run(
                classifier, [first], [first["mask"].bool()], [targets[0][:k]])
            lines.append(f"| 100 | {k} " + fmt(row, COLUMNS))
            print(lines[-1], flush=True)
        lines.append("")

    if "flip" in experiments:
        lines += ["## Flip rate and realism by region (target = predicted + 1 mod 6)\n",
                  "| region | s " + HEADER, "|---|---" + RULE]
        specs = [("truth", None)] + [(f"auto:{m}", a) for m in ("rex", "integrated_gradients") for a in (0.1, 0.3)]
        for spec, area in specs:
            regions = [make_region(spec, classifier, b["image"], pr, b, area or 0.3) for b, pr in zip(data, predicted)]
            name = "object mask (truth)" if spec == "truth" else f"{spec[5:]} top cells, a = {area}"
            for scale in (1.5, 0.0):
                row = runner.run(classifier, data, regions, targets, scale=scale)
                lines.append(f"| {name} | {scale} " + fmt(row, COLUMNS))
                print(lines[-1], flush=True)
        lines.append("")

    if "ablation" in experiments:
        lines += ["## Ablation: the four interventions one at a time (object-mask region)\n",
                  "| Tweedie | ADAM | normalisation | truncation (start) " + HEADER, "|---|---|---|---" + RULE]
        regions = [b["mask"].bool() for b in data]
        base = dict(tweedie=False, adam=False, normalise=False, start=1000)
        settings = [base, {**base, "tweedie": True}, {**base, "adam": True}, {**base, "normalise": True},
                    {**base, "start": 650}, dict(tweedie=True, adam=True, normalise=True, start=650)]
        for s in settings:
            row = runner.run(classifier, data, regions, targets, **s)
            flags = " | ".join("on" if s[k] else "off" for k in ("tweedie", "adam", "normalise"))
            lines.append(f"| {flags} | {s['start']} " + fmt(row, COLUMNS))
            print(lines[-1], flush=True)
        lines.append("")

    if "bias" in experiments:
        hp = load_checkpoint(args.biased, expect="classifier").get("datamodule_hyper_parameters") or {}
        cue = CueConfig(**{**hp["cue"], "p_eval": 0.0})
        cued = SyntheticScenes("test", 4 * args.n_images, img_size=size, cue=cue, progress=False)
        keep = [i for i in range(len(cued)) if int(cued[i]["label"]) != cue.target_class][: args.n_images]
        cue_data = batches(cued, keep, args.batch_size, dev)
        regions = [b["cue_mask"].bool() for b in cue_data]
        cue_targets = [torch.full_like(b["label"], cue.target_class) for b in cue_data]
        lines += [f"## A known bias: region = the corner where the cue would be, target = the cue's class "
                  f"{cue.target_class}; images of other classes, cue absent\n",
                  "| classifier | s " + HEADER, "|---|---" + RULE]
        for name, ckpt in (("biased (cue on every class-0 training image)", args.biased),
                           ("unbiased (cue independent of the class)", args.unbiased)):
            model = load_stage(ckpt, expect="classifier").model.eval().requires_grad_(False).to(dev)
            for scale in (float(v) for v in args.bias_scales.split(",")):
                row = runner.run(model, cue_data, regions, cue_targets, scale=scale)
                lines.append(f"| {name} | {scale} " + fmt(row, COLUMNS))
                print(lines[-1], flush=True)
        lines.append("")

    if runner.lpips_note:
        lines.append(f"LPIPS: {runner.lpips_note}\n")
    lines.append(f"Total wall time {time.time() - start:.0f} s.\n")
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
