"""Salvage's evaluation metrics (appendix A.1) for any attribution map: MIF/LIF/SRG (Alg. 1, eq. 7), R-MIF/R-LIF/R-SRG (Alg. 2, eq. 8);
RMA/RRA are `explainers.metrics`.

`model(images, patch_mask, index) -> logits` is the game (the surrogate; row m is image index[m] under patch_mask[m],
as `models.MaskableClassifier` takes it); curves are its probability of the target class.
Maps may be patch level (B, C, gh, gw) / (B, gh, gw) or pixel level (B, H, W) (averaged over each patch).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from explainers.maps import select_class
from explainers.metrics import ScoreSummary, relevance_mass_accuracy, relevance_rank_accuracy
from salvage.sampling import min_max_normalise, weighted_subsets

Game = Callable[[Tensor, Tensor, Tensor], Tensor]


def patch_scores(maps: Tensor, grid: tuple[int, int], target: Tensor | None = None) -> Tensor:
    """Scores (B, n) over the patch grid: the target class of a (B, C, gh, gw) map, pixel maps averaged per patch."""
    maps = select_class(maps, target)
    if maps.dim() != 3:
        raise ValueError(f"expected maps (B, gh, gw), (B, C, gh, gw) or (B, H, W), got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) != tuple(grid):
        maps = F.adaptive_avg_pool2d(maps[:, None].float(), grid)[:, 0]
    return maps.flatten(1).float()


@torch.no_grad()
def masked_target_probs(model: Game, images: Tensor, masks: Tensor, target: Tensor, batch_size: int = 1024) -> Tensor:
    """v(S) of the target class for masks (B, M, n): (B, M), evaluated in chunks of `batch_size` masked images."""
    b, m, n = masks.shape
    flat_masks = masks.reshape(b * m, n)
    owner = torch.arange(b, device=images.device).repeat_interleave(m)
    probs = []
    for start in range(0, b * m, batch_size):
        rows = owner[start:start + batch_size]
        logits = model(images, flat_masks[start:start + batch_size], rows)
        probs.append(logits.float().softmax(-1).gather(1, target[rows, None]).squeeze(1))
    return torch.cat(probs).view(b, m)


def insertion_curve(model: Game, images: Tensor, scores: Tensor, target: Tensor, most_first: bool = True,
                    batch_size: int = 1024) -> Tensor:
    """Algorithm 1: probabilities (B, n) after inserting the k = 1..n most (MIF) or least (LIF) important patches."""
    n = scores.shape[1]
    ranks = scores.argsort(dim=1, descending=most_first).argsort(dim=1)
    masks = ranks[:, None, :] < torch.arange(1, n + 1, device=scores.device)[None, :, None]
    return masked_target_probs(model, images, masks, target, batch_size)


def relative_insertion_curve(model: Game, images: Tensor, scores: Tensor, target: Tensor, most_first: bool = True,
                             n_masks: int = 128, generator: torch.Generator | None = None,
                             batch_size: int = 1024) -> Tensor:
    """Algorithm 2: mean probability (B, n) over n_masks subsets of each size k drawn with weights phi_norm (R-MIF) or 1 - phi_norm (R-LIF)."""
    b, n = scores.shape
    norm = min_max_normalise(scores)
    weights = (norm if most_first else 1 - norm)[:, None, :].expand(b, n * n_masks, n)
    sizes = torch.arange(1, n + 1, device=scores.device).repeat_interleave(n_masks).expand(b, -1)
    masks = weighted_subsets(weights, sizes, generator)
    return masked_target_probs(model, images, masks, target, batch_size).view(b, n, n_masks).mean(-1)


def srg_scores(model: Game, images: Tensor, maps: Tensor, target: Tensor, batch_size: int = 1024,
               grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """MIF, LIF (Alg. 1, mean over subset sizes) and SRG = MIF - LIF (eq. 7), each (B,)."""
    scores = patch_scores(maps, grid or model.patch_grid, target)
    mif = insertion_curve(model, images, scores, target, True, batch_size).mean(-1)
    lif = insertion_curve(model, images, scores, target, False, batch_size).mean(-1)
    return {"mif": mif, "lif": lif, "srg": mif - lif}


def relative_srg_scores(model: Game, images: Tensor, maps: Tensor, target: Tensor, n_masks: int = 128,
                        generator: torch.Generator | None = None, batch_size: int = 1024,
                        grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """R-MIF, R-LIF (Alg. 2) and R-SRG = R-MIF - R-LIF (eq. 8), each (B,)."""
    scores = patch_scores(maps, grid or model.patch_grid, target)
    r_mif = relative_insertion_curve(model, images, scores, target, True, n_masks, generator, batch_size).mean(-1)
    r_lif = relative_insertion_curve(model, images, scores, target, False, n_masks, generator, batch_size).mean(-1)
    return {"r_mif": r_mif, "r_lif": r_lif, "r_srg": r_mif - r_lif}


class _Means(ScoreSummary):
    """`ScoreSummary` over fixed names whose compute() gives the means only."""

    names_: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(self.names_, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        return {k: out[k] for k in self.names if k in out}


class SRG(_Means):
    """Mean MIF, LIF and SRG (Alg. 1, eq. 7) over all images seen, synced across DDP ranks."""

    names_ = ("mif", "lif", "srg")

    def __init__(self, batch_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def update(self, model: Game, images: Tensor, maps: Tensor, target: Tensor) -> None:
        super().update(srg_scores(model, images, maps, target, self.batch_size))


class RelativeSRG(_Means):
    """Mean R-MIF, R-LIF and R-SRG (Alg. 2, eq. 8) over all images seen; masks drawn from a seeded generator per update."""

    names_ = ("r_mif", "r_lif", "r_srg")

    def __init__(self, n_masks: int = 128, seed: int = 0, batch_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_masks, self.seed, self.batch_size = n_masks, seed, batch_size
        self._updates = 0

    def update(self, model: Game, images: Tensor, maps: Tensor, target: Tensor) -> None:
        g = torch.Generator(device=images.device)
        g.manual_seed(self.seed * 1_000_003 + self._updates)
        self._updates += 1
        super().update(relative_srg_scores(model, images, maps, target, self.n_masks, g, self.batch_size))

    def reset(self) -> None:
        super().reset()
        self._updates = 0


class RelevanceAccuracy(_Means):
    """Mean RMA and RRA (Arras et al. 2022) against ground-truth masks, synced across DDP ranks."""

    names_ = ("rma", "rra")

    def update(self, maps: Tensor, masks: Tensor, target: Tensor | None = None) -> None:
        super().update({"rma": relevance_mass_accuracy(maps, masks, target),
                        "rra": relevance_rank_accuracy(maps, masks, target)})
