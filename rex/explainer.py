"""ReX (Algorithm 3): responsibility maps and minimal sufficient explanations for a black-box classifier."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Literal, get_args

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer
from models.masking import MaskValue
from models.queries import QueryBackend, QueryEngine
from rex.confidence import ConfidenceMap, with_confidence
from rex.contrastive import complete_extract, contrastive_extract
from rex.extraction import (
    Extraction, ExtractionMethod, explanation_first, extract, extract_by, multiple_explanations, prune, tie_broken,
)
from rex.partition import SplitDistribution
from rex.responsibility import ResponsibilityRule
from rex.search import Combination, responsibility_map
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
    measured 2x faster per mutant than 512 for a small CNN; 256 under ONNX Runtime, whose per-call cost is higher:
    0.37 s per image at N = 10 on the synthetic ViT against 0.90 s in calls of 16), 1024 on an accelerator.
    `engine` runs the model's black-box queries eagerly, compiled or under ONNX Runtime (`models.queries.QueryEngine`).
    `explanation` picks the type extracted from the maps (`EXTRACTORS`: rex-xai's global, spatial, contrastive or
    complete; contrastive and complete scan every `step`, their tests not being monotone in the prefix size); with
    `n_explanations` > 1 (global only), `overlap_rule` "fraction" is `multiple_explanations`' own overlap control and
    "dice" rex-xai's (`spotlight_explanations`, `overlap` = the permitted Dice coefficient).
    `n_partitions` "auto" runs partitions in waves of `wave` until an image's map is stable: the first 10 %
    (`stable_top`) of its ranking has IoU >= 0.9 (`stable_iou`) with the previous wave's, at most `max_partitions`
    (`rex.search.responsibility_map`). `combination` "average" is Algorithm 3's mean of the partitions' maps,
    "multiplicative" rex-xai 0.4.1's default product. `extraction` "search" is `rex.extraction.extract` (geometric
    prefix sizes refined, then up to `check` untested sizes below the result tested), "scan" the exhaustive
    `rex.extraction.scan`; both test prefixes in steps of `step` pixels (None: 1 pixel for global and spatial, and
    rex-xai's chunk of 10 for the contrastive and complete scans, which otherwise cost two evaluations per pixel).
    Frugal options, off by default: `focus_after` k makes the partitions after the first k start from the bounding
    box of the map's first `focus_top` pixels, refined down to `focus_min_size` (h-Shap's focused refinement);
    `area_share` False gives each pixel of a superpixel its whole responsibility (rex-xai 0.4.1's maps) instead of
    Algorithm 3's share R(P) / |P|; `rank_area_share` (None: `area_share`) is the rule of the map the extraction
    ranks pixels by, combined from the same partitions (so no extra model evaluations): `area_share` True with
    `rank_area_share` False returns Algorithm 3's maps and extracts by rex-xai's; `tie_sigma` > 0 breaks the
    extraction's ties by a map blurred by a Gaussian of that many pixels instead of by pixel index
    (`rex.extraction.tie_broken`; the returned maps are unchanged); `monotone` asks the model only about the
    mutants of a split whose outcome does not follow from the others' by Observation 4.6's monotonicity
    (`rex.search.responsibility_map`); `beat_blank` refines images whose blank image already gets the class by the
    confidence above the blank image's (their map is zero otherwise); `blank_fails`, the alternative, counts their
    blank image as failing, as rex-xai 0.4.1 does. `confidence_weight` w > 0 returns unit(map) + w x
    unit(confidence map) (`rex.confidence`: RISE's estimate from the mutants and prefixes the model was asked about
    anyway, so no extra evaluations; a small w breaks the map's ties and near-ties). `prune_cell` k (None: off)
    makes a global or spatial explanation minimal by one greedy pass that drops each k x k pixel cell the class
    does not need, least responsible first (`rex.extraction.prune`, one model evaluation per cell tried);
    `explanation_first` returns maps whose ranking starts with the explanation (`rex.extraction.explanation_first`),
    so that a pruned explanation is again a prefix of its map's ranking."""

    n_partitions: int | Literal["auto"] = 20
    max_partitions: int = 40
    wave: int = 5
    stable_top: float = 0.1
    stable_iou: float = 0.9
    focus_after: int | None = None
    focus_top: float = 0.05
    focus_min_size: int | None = None
    area_share: bool = True
    rank_area_share: bool | None = None
    tie_sigma: float = 0.0
    monotone: bool = False
    beat_blank: bool = False
    blank_fails: bool = False
    confidence_weight: float = 0.0
    prune_cell: int | None = None
    explanation_first: bool = False
    combination: Combination = "average"
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
    extraction: ExtractionMethod = "search"
    step: int | None = None
    check: int | None = 64
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
        if isinstance(self.n_partitions, str) and self.n_partitions != "auto":
            raise ValueError(f"n_partitions must be an int or 'auto', not {self.n_partitions!r}")
        if self.combination not in get_args(Combination):
            raise ValueError(f"unknown ReX combination {self.combination!r}; known: {list(get_args(Combination))}")
        if self.prune_cell is not None and (self.prune_cell < 1 or self.n_explanations > 1
                                            or self.explanation not in ("global", "spatial")):
            raise ValueError(f"prune_cell must be None or at least 1 and needs one global or spatial explanation, got "
                             f"prune_cell={self.prune_cell!r}, explanation={self.explanation!r}, "
                             f"n_explanations={self.n_explanations}")
        if self.beat_blank and self.blank_fails:
            raise ValueError("beat_blank and blank_fails are two readings of the same images: choose one")
        if self.confidence_weight < 0:
            raise ValueError(f"confidence_weight must be at least 0, not {self.confidence_weight}")
        if self.explanation_first and self.n_explanations > 1:
            raise ValueError("explanation_first needs one explanation per image (n_explanations 1)")
        if self.extraction not in get_args(ExtractionMethod):
            raise ValueError(f"unknown ReX extraction {self.extraction!r}; known: {list(get_args(ExtractionMethod))}")


@dataclass
class ReXResult:
    """Maps (B, H, W), explanations (B, 1, H, W) (or (B, k, 1, H, W) with k > 1), whether each was found, the
    target class and its confidence on the full image, and per image the search's mutants the model evaluated,
    those answered from the cache and those inferred by the monotone reading (section 5's search only), the
    partitions combined into the map, and the model evaluations of the extraction (None for an extraction type that
    does not count them)."""

    maps: Tensor
    explanations: Tensor
    found: Tensor
    target: Tensor
    confidence: Tensor
    mutants_evaluated: Tensor
    mutants_answered: Tensor
    mutants_inferred: Tensor
    partitions: Tensor
    extraction_evaluated: Tensor | None

    @property
    def model_evaluated(self) -> Tensor | None:
        """Model evaluations per image (B,): the full and the blank image once each, the search's mutants and the
        extraction's prefixes; None where the extraction is not counted."""
        if self.extraction_evaluated is None:
            return None
        return 2 + self.mutants_evaluated.to(self.extraction_evaluated.device) + self.extraction_evaluated

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
        max_batch = cfg.max_batch or (1024 if images.device.type != "cpu" else 256 if cfg.engine == "onnx" else 16)
        engine = QueryEngine(model, max_batch, cfg.mask_value, cfg.engine, cfg.seed)
        probs = engine.probabilities(images)
        target = probs.argmax(1) if target is None else torch.as_tensor(target, device=images.device).long()
        target = target.to(images.device).expand(images.shape[0])
        confidence = probs.gather(1, target[:, None])[:, 0]
        if cfg.confidence_weight > 0:
            engine.observer = ConfidenceMap(target, *images.shape[-2:])
        generator = torch.Generator().manual_seed(cfg.seed)
        step = cfg.step or (10 if cfg.explanation in ("contrastive", "complete") else 1)
        counts: dict[str, Tensor] = {}
        maps = responsibility_map(
            engine, images, target, generator, cfg.n_partitions, cfg.min_size, cfg.queue_len, cfg.rule,
            cfg.distribution, cfg.dist_args, cfg.confidence_filter, cfg.work_budget, cfg.cache, counts,
            cfg.combination, cfg.max_partitions, cfg.wave, cfg.stable_top, cfg.stable_iou, cfg.focus_after,
            cfg.focus_top, cfg.focus_min_size, cfg.area_share, probs, cfg.rank_area_share, cfg.monotone,
            cfg.beat_blank, cfg.blank_fails,
        )
        responsibility = counts.get("ranking", maps)
        ranking = tie_broken(responsibility, cfg.tie_sigma)
        if cfg.n_explanations > 1 and cfg.overlap_rule == "dice":
            ex = spotlight_explanations(engine, images, ranking, target, generator, cfg.n_explanations, cfg.overlap,
                                        cfg.min_confidence, cfg.candidates, confidence, cfg.extraction, step,
                                        cfg.check)
        elif cfg.n_explanations > 1:
            ex = multiple_explanations(engine, images, ranking, target, cfg.n_explanations, cfg.overlap, cfg.separation,
                                       cfg.min_confidence, cfg.candidates, confidence, cfg.extraction, step,
                                       cfg.check)
        elif cfg.explanation == "global":
            ex = extract_by(cfg.extraction, engine, images, ranking, target, None, cfg.min_confidence, cfg.candidates,
                            confidence, step, cfg.check)
        elif cfg.explanation == "spatial":
            ex = spatial_extract(engine, images, ranking, target, cfg.min_confidence, cfg.candidates, confidence,
                                 cfg.extraction, step, cfg.check)
        else:
            ex = EXTRACTORS[cfg.explanation](engine, images, ranking, target, min_confidence=cfg.min_confidence,
                                             candidates=cfg.candidates, full_confidence=confidence, step=step)
        if cfg.prune_cell is not None:
            ex = prune(engine, images, ex, responsibility, target, cfg.prune_cell, cfg.min_confidence, confidence)
        if engine.observer is not None:
            maps = with_confidence(maps, engine.observer.map(), cfg.confidence_weight)
        if cfg.explanation_first:
            maps = explanation_first(maps, ex.mask & ex.found[:, None, None, None])
        return ReXResult(maps=maps, explanations=ex.mask, found=ex.found, target=target, confidence=confidence,
                         mutants_evaluated=counts["evaluated"], mutants_answered=counts["answered"],
                         mutants_inferred=counts["inferred"], partitions=counts["partitions"],
                         extraction_evaluated=ex.evaluated)


@explainer("rex", access="black")
def rex_explain(model: nn.Module, images: Tensor, target: Tensor, min_confidence: float = 0.0, **config) -> Explanation:
    """ReX (Algorithm 3): responsibility maps (B, H, W) and the extracted minimal sufficient explanation (keeping
    the class and `min_confidence` x its full-image probability); other options are ReXConfig's."""
    res = ReX(min_confidence=min_confidence, **config).explain(model, images, target)
    first = res.explanations if res.explanations.dim() == 4 else res.explanations[:, 0]
    found = res.found if res.found.dim() == 1 else res.found[:, 0]
    scores = {"found": found, "mutants_evaluated": res.mutants_evaluated.float(),
              "mutants_cached": res.mutants_answered.float(),
              "mutants_inferred": res.mutants_inferred.float(), "partitions": res.partitions.float()}
    if res.extraction_evaluated is not None:
        scores["extraction_evaluations"] = res.extraction_evaluated.float()
        scores["model_evaluations"] = res.model_evaluated.float()
    return Explanation(maps=res.maps, explanation=first, scores=scores)
