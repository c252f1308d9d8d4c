"""ReX (Algorithm 3): responsibility maps and minimal sufficient explanations for a black-box classifier."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Literal, get_args

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer
from models.masking import MaskValue
from models.queries import QueryBackend, QueryEngine
from rex.contrastive import complete_extract, contrastive_extract
from rex.extraction import Extraction, extract, multiple_explanations
from rex.partition import SplitDistribution
from rex.responsibility import ResponsibilityRule
from rex.search import responsibility_map
from rex.spatial import spatial_extract
from rex.spotlight import spotlight_explanations

ExplanationType = Literal["global", "spatial", "contrastive", "complete"]
OverlapRule = Literal["fraction", "dice"]
#: rex-xai's explanation types, each a function (engine, images, maps, target, **options) -> Extraction.
EXTRACTORS: dict[str, Callable[..., Extraction]] = {
    "global": extract, "spatial": spatial_extract, "contrastive": contrastive_extract, "complete": complete_extract,
}


@dataclass
class ReXConfig:
    """Section 6.1 defaults: N = 20 partitions of 4 boxes, minimum superpixel 10 px, "area" queue of length 1,
    uniform split points, mask value 0 after the model's input normalisation (None = the model's mask value, see
    `models.masking.mask_fill`). `max_batch` None = 16 mutants per model call on CPU (small batches stay in cache:
    measured 2x faster per mutant than 512 for a small CNN), 1024 on an accelerator. `engine` runs the model's
    black-box queries eagerly, compiled or under ONNX Runtime (`models.queries.QueryEngine`).
    `explanation` picks the type extracted from the maps (`EXTRACTORS`: rex-xai's global, spatial, contrastive or
    complete); with `n_explanations` > 1 (global only), `overlap_rule` "fraction" is `multiple_explanations`' own
    overlap control and "dice" rex-xai's (`spotlight_explanations`, `overlap` = the permitted Dice coefficient)."""

    n_partitions: int = 20
    min_size: int = 10
    queue_len: int = 1
    rule: ResponsibilityRule = "paper"
    distribution: SplitDistribution = "uniform"
    dist_args: tuple[float, ...] = ()
    confidence_filter: float = 0.0
    work_budget: int | None = None
    mask_value: MaskValue = None
    min_confidence: float = 0.0
    candidates: int = 32
    explanation: ExplanationType = "global"
    n_explanations: int = 1
    overlap: float = 0.0
    overlap_rule: OverlapRule = "fraction"
    separation: int = 0
    max_batch: int | None = None
    seed: int = 0
    cache: bool = True
    engine: QueryBackend = "eager"

    def __post_init__(self) -> None:
        """Clear errors for an unknown explanation type or overlap rule (rex-xai's strategies)."""
        if self.explanation not in EXTRACTORS:
            raise ValueError(f"unknown ReX explanation type {self.explanation!r}; known: {sorted(EXTRACTORS)}")
        if self.overlap_rule not in get_args(OverlapRule):
            raise ValueError(f"unknown ReX overlap rule {self.overlap_rule!r}; known: {list(get_args(OverlapRule))}")
        if self.n_explanations > 1 and self.explanation != "global":
            raise ValueError(f"n_explanations > 1 needs explanation 'global', got {self.explanation!r}")


@dataclass
class ReXResult:
    """Maps (B, H, W), explanations (B, 1, H, W) (or (B, k, 1, H, W) with k > 1), whether each was found, the
    target class and its confidence on the full image, and per image the search's mutants the model evaluated and
    those answered from the cache (section 5's search only, not the extraction)."""

    maps: Tensor
    explanations: Tensor
    found: Tensor
    target: Tensor
    confidence: Tensor
    mutants_evaluated: Tensor
    mutants_answered: Tensor

    @property
    def size(self) -> Tensor:
        """Explanation size (B,) (or (B, k)) as a fraction of the image; 1.0 where none was found."""
        frac = self.explanations.flatten(-3).float().mean(-1)
        return torch.where(self.found, frac, torch.ones_like(frac))


class ReX:
    """Algorithm 3: N refined random partitions averaged into a responsibility map, then greedy extraction."""

    def __init__(self, config: ReXConfig | None = None, **overrides) -> None:
        unknown = set(overrides) - {f.name for f in fields(ReXConfig)}
        if unknown:
            raise ValueError(f"unknown ReX options {sorted(unknown)}; known: {sorted(f.name for f in fields(ReXConfig))}")
        self.config = ReXConfig(**{**asdict(config or ReXConfig()), **overrides})

    def explain(self, model: nn.Module, images: Tensor, target: Tensor | None = None) -> ReXResult:
        """Algorithm 3 for a batch of images (B, 3, H, W) in [0, 1]; `target` defaults to the predicted class."""
        cfg = self.config
        max_batch = cfg.max_batch or (16 if images.device.type == "cpu" else 1024)
        engine = QueryEngine(model, max_batch, cfg.mask_value, cfg.engine, cfg.seed)
        probs = engine.probabilities(images)
        target = probs.argmax(1) if target is None else torch.as_tensor(target, device=images.device).long()
        target = target.to(images.device).expand(images.shape[0])
        confidence = probs.gather(1, target[:, None])[:, 0]
        generator = torch.Generator().manual_seed(cfg.seed)
        counts: dict[str, Tensor] = {}
        maps = responsibility_map(
            engine, images, target, generator, cfg.n_partitions, cfg.min_size, cfg.queue_len, cfg.rule,
            cfg.distribution, cfg.dist_args, cfg.confidence_filter, cfg.work_budget, cfg.cache, counts,
        )
        if cfg.n_explanations > 1 and cfg.overlap_rule == "dice":
            ex = spotlight_explanations(engine, images, maps, target, generator, cfg.n_explanations, cfg.overlap,
                                        cfg.min_confidence, cfg.candidates)
        elif cfg.n_explanations > 1:
            ex = multiple_explanations(engine, images, maps, target, cfg.n_explanations, cfg.overlap, cfg.separation,
                                       cfg.min_confidence, cfg.candidates)
        else:
            ex = EXTRACTORS[cfg.explanation](engine, images, maps, target, min_confidence=cfg.min_confidence,
                                             candidates=cfg.candidates, full_confidence=confidence)
        return ReXResult(maps=maps, explanations=ex.mask, found=ex.found, target=target, confidence=confidence,
                         mutants_evaluated=counts["evaluated"], mutants_answered=counts["answered"])


@explainer("rex", access="black")
def rex_explain(model: nn.Module, images: Tensor, target: Tensor, min_confidence: float = 0.0, **config) -> Explanation:
    """ReX (Algorithm 3): responsibility maps (B, H, W) and the extracted minimal sufficient explanation (keeping
    the class and `min_confidence` x its full-image probability); other options are ReXConfig's."""
    res = ReX(min_confidence=min_confidence, **config).explain(model, images, target)
    first = res.explanations if res.explanations.dim() == 4 else res.explanations[:, 0]
    found = res.found if res.found.dim() == 1 else res.found[:, 0]
    scores = {"found": found, "mutants_evaluated": res.mutants_evaluated.float(),
              "mutants_cached": res.mutants_answered.float()}
    return Explanation(maps=res.maps, explanation=first, scores=scores)
