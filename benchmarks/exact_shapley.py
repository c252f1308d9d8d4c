"""Exact Shapley values as ground truth for the Shapley estimators (4 x 4 grid: 16 players, 65 536 coalitions).

    python benchmarks/exact_shapley.py --explainer runs/quickstart/explainer/checkpoints/best.ckpt --images 20

For each test image the explainer checkpoint's surrogate is evaluated on every coalition of patches (attention
masking, exactly the game the surrogate was trained for), and the exact Shapley values (eq. 1,
`salvage.exact_shapley_values`) of two games are computed for the predicted class: the probability game
v(S) = p_y(S) (ViT-Shapley's target) and the log-probability game v(S) = log p_y(S) (the scale of Salvage's logits).
Each estimator's map is scored per image against both: Pearson and Spearman correlation, top-4 agreement (shared
patches among the 4 highest), and relative L2 error after the least-squares scale a* = <m, phi> / <m, m> (every
estimator fixes its own units; the scale-free error says how well its shape matches). KernelSHAP and LIME query the
classifier with patches set to its mean colour, as they run in this toolkit, a game close to but not the surrogate's.
A second table scores every map, and the exact values of both games, against the scene's object mask (RMA, RRA):
whether an estimator's definition (its game), not only its estimation error, decides its ground-truth scores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy import stats  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from datamodules import SyntheticScenes  # noqa: E402
from evaluation import discover, load_models  # noqa: E402
from explainers import ScoreSummary, get  # noqa: E402
from explainers.metrics import relevance_mass_accuracy, relevance_rank_accuracy  # noqa: E402
from salvage.shapley import all_subsets, exact_shapley_values  # noqa: E402

METRICS = ("pearson", "spearman", "top4", "rel_l2")
TRUTH = ("rma", "rra", "null_mass")
#: A patch is uninformative when its exact value (probability game) is below this share of the image's largest |value|.
NULL = 0.05


def object_scores(patch_map: torch.Tensor, mask: torch.Tensor, exact: torch.Tensor) -> dict[str, torch.Tensor]:
    """RMA and RRA (1,) of a patch map (gh, gw) against an object mask (1, H, W), and the share of its positive mass on
    uninformative patches (|exact value| < NULL x max |exact value|; NaN without positive mass)."""
    maps, masks = patch_map[None].float(), mask[None]
    positive = patch_map.flatten().double().clamp_min(0)
    null = exact.abs() < NULL * exact.abs().max()
    share = positive[null].sum() / positive.sum() if positive.sum() > 0 else torch.tensor(float("nan"))
    return {"rma": relevance_mass_accuracy(maps, masks), "rra": relevance_rank_accuracy(maps, masks),
            "null_mass": share[None]}


def coalition_values(surrogate: torch.nn.Module, image: torch.Tensor, batch: int) -> torch.Tensor:
    """Log-probabilities (2^n, C) of the surrogate on every coalition of the image's patches (all_subsets order),
    `batch` coalitions per call, the image's patches embedded once per call (`MaskableClassifier`'s `index`)."""
    out = []
    with torch.no_grad():
        for chunk in all_subsets(surrogate.num_patches).split(batch):
            logits = surrogate(image, chunk, torch.zeros(len(chunk), dtype=torch.long))
            out.append(logits.double().log_softmax(-1))
    return torch.cat(out)


def agreement(estimate: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Scale-free agreement of one map (n,) with exact values (n,)."""
    m, phi = estimate.double().flatten(), exact.double().flatten()
    if m.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "top4": float("nan"), "rel_l2": 1.0}
    scale = (m @ phi) / (m @ m)
    top = len(set(m.topk(4).indices.tolist()) & set(phi.topk(4).indices.tolist())) / 4
    return {
        "pearson": float(torch.corrcoef(torch.stack([m, phi]))[0, 1]),
        "spearman": float(stats.spearmanr(m.numpy(), phi.numpy()).statistic),
        "top4": top,
        "rel_l2": float((scale * m - phi).norm() / phi.norm()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--explainer", required=True, help="Salvage explainer checkpoint (its surrogate is the game)")
    p.add_argument("--vit-shapley", default=None, help="optional ViT-Shapley (loss=mse) explainer checkpoint")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--budgets", default="64,256,2048", help="KernelSHAP / LIME coalition budgets")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exact_shapley.md")
    p.add_argument("--cache", type=Path, default=None,
                   help="file keeping each image's coalition values (about 1 MB per image), so a rerun with other "
                        "estimators skips the exhaustive evaluation; keyed by explainer checkpoint (its surrogate is the game) and image index")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    discover()
    start = time.time()
    loaded = load_models(args.explainer)
    surrogate, classifier = loaded.models["surrogate"].eval(), loaded.classifier.eval()
    n = surrogate.num_patches
    if n > 20:
        raise SystemExit(f"error: {n} patches means 2^{n} coalitions per image; exact values need a small grid")
    estimators: dict[str, tuple[str, dict, dict]] = {"salvage": ("salvage", {}, loaded.models)}
    if args.vit_shapley:
        estimators["vit_shapley"] = ("vit_shapley", {}, load_models(args.vit_shapley).models)
    for budget in (int(b) for b in args.budgets.split(",")):
        estimators[f"kernel_shap ({budget})"] = ("kernel_shap", {"n_samples": budget}, loaded.models)
        estimators[f"lime ({budget})"] = ("lime", {"n_samples": budget}, loaded.models)
    estimators["occlusion"] = ("occlusion", {}, loaded.models)
    estimators["random"] = ("random", {}, loaded.models)
    scenes = SyntheticScenes("test", args.images, img_size=loaded.img_size, progress=False)
    summaries = {(name, game): ScoreSummary(METRICS) for name in estimators for game in ("prob", "logprob")}
    truth = {name: ScoreSummary(TRUTH) for name in [*estimators, "exact, prob game", "exact, logprob game"]}
    efficiency = []
    cache = torch.load(args.cache, weights_only=True) if args.cache and args.cache.is_file() else {}
    cached = 0
    for i in tqdm(range(args.images), desc="images (65 536 coalitions each)"):
        image = scenes[i]["image"][None]
        with torch.no_grad():
            target = classifier(image).argmax(1)
        key = f"{Path(args.explainer).resolve()}:{i}"
        cached += key in cache
        if key not in cache:
            cache[key] = coalition_values(surrogate, image, args.batch)[:, int(target)]
            if args.cache:
                torch.save(cache, args.cache)
        logp = cache[key]
        exact = {"prob": exact_shapley_values(logp.exp()), "logprob": exact_shapley_values(logp)}
        efficiency.append(float((exact["prob"].sum() - (logp[-1].exp() - logp[0].exp())).abs()))
        grid = surrogate.patch_grid
        for game in ("prob", "logprob"):
            truth[f"exact, {game} game"].update(object_scores(exact[game].view(grid), scenes[i]["mask"], exact["prob"]))
        for name, (method, options, models) in estimators.items():
            maps = get(method)(models, image, target, **options).maps
            estimate = maps[0] if maps.dim() == 3 else maps[0, int(target)]
            truth[name].update(object_scores(estimate, scenes[i]["mask"], exact["prob"]))
            for game, phi in exact.items():
                summaries[(name, game)].update({k: torch.tensor([v]) for k, v in agreement(estimate, phi).items()})
    command = " ".join(["python benchmarks/exact_shapley.py", *sys.argv[1:]])
    lines = [
        "# Exact Shapley values as ground truth (4 x 4 grid, 16 players, 65 536 coalitions per image)\n",
        f"Command: `{command}`\n",
        f"{args.images} synthetic test images, the predicted class; exact values of the surrogate's probability and "
        f"log-probability games; largest efficiency error |sum phi - (v(N) - v(empty))| = {max(efficiency):.2e}. "
        f"Mean ± std over images (n = images where the metric is defined); top-4 = shared patches among the 4 "
        f"highest; rel. L2 after the least-squares scale. {torch.get_num_threads()} CPU threads, "
        f"{time.time() - start:.0f} s in all"
        + (f" (the coalition values of {cached} images read from the cache)" if cached else "") + ".\n",
        "| estimator | game | Pearson | Spearman | top-4 agreement | rel. L2 |",
        "|---|---|---|---|---|---|",
    ]
    for (name, game), summary in summaries.items():
        s = summary.compute()
        cells = [f"{float(s[k]):.3f} ± {float(s[k + '_std']):.3f}" if k in s else "-" for k in METRICS]
        lines.append(f"| {name} | {game} | " + " | ".join(cells) + " |")
    lines += [
        "\nAgainst the object mask (the scene's ground truth): relevance mass and rank accuracy of each estimator's "
        "map, and of the exact values of each game (what a perfect estimator of that game would score); null mass: "
        f"the share of the map's positive mass on uninformative patches (|exact value| < {NULL} x the image's largest, "
        "probability game).\n",
        "| map | RMA | RRA | null mass |",
        "|---|---|---|---|",
    ]
    for name, summary in truth.items():
        s = summary.compute()
        lines.append(f"| {name} | " + " | ".join(f"{float(s[k]):.3f} ± {float(s[k + '_std']):.3f}" for k in TRUTH) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
