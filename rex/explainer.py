"""ReX (Algorithm 3): responsibility maps and minimal sufficient explanations for a black-box classifier.

Which map feeds which step (one search, no extra model evaluations between them):
    responsibility map  `rex.search.responsibility_map`: the N partitions' responsibilities combined (Algorithm 3,
                        lines 1-8); inside the search, the map so far also places the focused partitions' box.
    ranking             the responsibility map with its ties broken by a blurred copy (`tie_broken`, `tie_sigma`;
                        the map itself where 0): the order in which the extraction adds pixels (line 9) and in
                        which spatial and multiple explanations are grown.
    pruning order       the responsibility map (not the ranking): `prune` tries the explanation's cells least
                        responsible first.
    returned map        the responsibility map, plus `confidence_weight` x the confidence map of the queries
                        already made where that weight is > 0, then with the explanation ranked first where
                        `explanation_first`; insertion and deletion score this map.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer, unknown_options
from models.masking import MaskValue
from models.queries import QueryBackend, QueryEngine
from rex.confidence import ConfidenceMap, with_confidence
from rex.contrastive import complete_extract, contrastive_extract
from rex.extraction import (
    Extraction, ExtractionSettings, explanation_first, extract, multiple_explanations, prune, tie_broken,
)
from rex.presets import PRESETS, Preset
from rex.search import SearchSettings, responsibility_map
from rex.spatial import spatial_extract
from rex.spotlight import spotlight_explanations

ExplanationType = Literal["global", "spatial", "contrastive", "complete"]
OverlapRule = Literal["fraction", "dice"]
#: rex-xai's explanation types, each a function (engine, images, maps, target, **options) -> Extraction.
EXTRACTORS: dict[str, Callable[..., Extraction]] = {
    "global": extract, "spatial": spatial_extract, "contrastive": contrastive_extract, "complete": complete_extract,
}
#: Prefix step in pixels per explanation type: 1 (the exact smallest prefix) for global and spatial; rex-xai's
#: chunk of 10 for contrastive and complete, whose tests are not monotone in the prefix size, so they scan every
#: step at two evaluations each.
_STEP = {"global": 1, "spatial": 1, "contrastive": 10, "complete": 10}


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ReXConfig:
    """The options a user sets (`--option rex.NAME=VALUE`); a preset supplies the search and extraction settings
    (`rex.presets`), and the options left at None take the preset's value. Validated on construction."""

    preset: str | Preset = _opt("fast", "fast: the frugal setting (5 partitions, focused, pruned); paper: "
                                        "Algorithm 3 as published (N = 20); see docs/rex.md")
    n_partitions: int | Literal["auto"] | None = _opt(
        None, "random partitions N, or auto (waves of 5 until the map's top 10 % is stable, at most 40); "
              "None: the preset's")
    explanation: ExplanationType = _opt("global", "explanation type: global, spatial, contrastive or complete "
                                                  "(rex-xai's)")
    n_explanations: int = _opt(1, "explanations per image (global only; section 6.2)")
    overlap: float = _opt(0.0, "overlap permitted between multiple explanations")
    overlap_rule: OverlapRule = _opt("fraction", "fraction: share of an explanation later ones may reuse; dice: "
                                                 "rex-xai's permitted Dice coefficient (spotlight search)")
    min_confidence: float = _opt(0.0, "a sufficient explanation keeps the class and this fraction of the full "
                                      "image's probability")
    prune_cell: int | None = _opt(None, "drop k x k px cells the class does not need from the explanation; 0: "
                                        "off; None: the preset's")
    confidence_weight: float | None = _opt(None, "weight of the confidence map (from queries already made) added "
                                                 "to the returned map; None: the preset's")
    mask_value: MaskValue = _opt(None, "value of masked pixels (None: the model's own, see models.masking)")
    engine: QueryBackend = _opt("eager", "how the model is queried: eager, compile or onnx")
    cache: bool = _opt(True, "answer a mutant already evaluated for the image from memory (same maps)")
    max_batch: int | None = _opt(None, "mutants per model call (None: 16 on CPU, 256 with onnx, 1024 on a GPU)")
    seed: int = _opt(0, "seed of the random partitions")

    def __post_init__(self) -> None:
        """Every check of a user's ReX options, so that they fail before any model or data loads."""
        if isinstance(self.preset, str) and self.preset not in PRESETS:
            raise ValueError(f"unknown ReX preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.explanation not in EXTRACTORS:
            raise ValueError(f"unknown ReX explanation type {self.explanation!r}; known: {', '.join(EXTRACTORS)}")
        if self.overlap_rule not in get_args(OverlapRule):
            raise ValueError(f"unknown ReX overlap rule {self.overlap_rule!r}; known: {list(get_args(OverlapRule))}")
        if self.n_explanations < 1 or (self.n_explanations > 1 and self.explanation != "global"):
            raise ValueError(f"n_explanations must be at least 1, and more than 1 needs explanation 'global'; got "
                             f"n_explanations={self.n_explanations}, explanation={self.explanation!r}")
        if self.engine not in get_args(QueryBackend):
            raise ValueError(f"unknown query engine {self.engine!r}; known: {list(get_args(QueryBackend))}")
        if self.prune_cell is not None and self.prune_cell < 0:
            raise ValueError(f"prune_cell must be 0 (off), a cell size >= 1 or None (the preset's), not "
                             f"{self.prune_cell}")
        if self.prune_cell and not self.prunable:
            raise ValueError(f"prune_cell needs one global or spatial explanation, got explanation="
                             f"{self.explanation!r}, n_explanations={self.n_explanations}")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must lie in [0, 1], not {self.min_confidence}")
        self.settings()

    @property
    def prunable(self) -> bool:
        """Pruning and the explanation-first map apply to one global or spatial explanation per image."""
        return self.n_explanations == 1 and self.explanation in ("global", "spatial")

    def settings(self) -> tuple[SearchSettings, ExtractionSettings]:
        """The preset's search and extraction settings with this config's options applied."""
        preset = PRESETS[self.preset] if isinstance(self.preset, str) else self.preset
        search = preset.search if self.n_partitions is None else replace(preset.search, n_partitions=self.n_partitions)
        search = replace(search, cache=self.cache)
        changes: dict[str, Any] = {}
        if self.prune_cell is not None:
            changes["prune_cell"] = self.prune_cell or None
        if self.confidence_weight is not None:
            changes["confidence_weight"] = self.confidence_weight
        if not self.prunable:
            changes.update(prune_cell=None, explanation_first=False)
        return search, replace(preset.extraction, **changes)


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
    """Algorithm 3: N refined random partitions combined into a responsibility map, then greedy extraction."""

    def __init__(self, config: ReXConfig | None = None, **options: Any) -> None:
        names = {f.name: f.default for f in fields(ReXConfig)}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(unknown_options("rex", unknown, names))
        self.config = replace(config or ReXConfig(), **options)
        self.search, self.extraction = self.config.settings()

    def explain(self, model: nn.Module, images: Tensor, target: Tensor | None = None) -> ReXResult:
        """Algorithm 3 for a batch of images (B, 3, H, W) in [0, 1]; `target` defaults to the predicted class."""
        cfg, ext = self.config, self.extraction
        max_batch = cfg.max_batch or (1024 if images.device.type != "cpu" else 256 if cfg.engine == "onnx" else 16)
        engine = QueryEngine(model, max_batch, cfg.mask_value, cfg.engine, cfg.seed)
        probs = engine.probabilities(images)
        target = probs.argmax(1) if target is None else torch.as_tensor(target, device=images.device).long()
        target = target.to(images.device).expand(images.shape[0])
        confidence = probs.gather(1, target[:, None])[:, 0]
        if ext.confidence_weight > 0:
            engine.observer = ConfidenceMap(target, *images.shape[-2:])
        generator = torch.Generator().manual_seed(cfg.seed)
        counts: dict[str, Tensor] = {}
        maps = responsibility_map(engine, images, target, generator, self.search, full_probs=probs, counts=counts)
        ex = self._extract(engine, images, tie_broken(maps, ext.tie_sigma), target, generator, confidence)
        if ext.prune_cell is not None:
            ex = prune(engine, images, ex, maps, target, ext.prune_cell, cfg.min_confidence, confidence)
        if engine.observer is not None:
            maps = with_confidence(maps, engine.observer.map(), ext.confidence_weight)
        if ext.explanation_first:
            maps = explanation_first(maps, ex.mask & ex.found[:, None, None, None])
        return ReXResult(maps=maps, explanations=ex.mask, found=ex.found, target=target, confidence=confidence,
                         mutants_evaluated=counts["evaluated"], mutants_answered=counts["answered"],
                         mutants_inferred=counts["inferred"], partitions=counts["partitions"],
                         extraction_evaluated=ex.evaluated)

    def _extract(self, engine: QueryEngine, images: Tensor, ranking: Tensor, target: Tensor,
                 generator: torch.Generator, confidence: Tensor) -> Extraction:
        """Algorithm 3, lines 10-17 by the configured explanation type, from the ranking's keys (B, H, W)."""
        cfg, ext = self.config, self.extraction
        prefix = dict(min_confidence=cfg.min_confidence, candidates=ext.candidates, full_confidence=confidence,
                      step=_STEP[cfg.explanation])
        if cfg.n_explanations > 1 and cfg.overlap_rule == "dice":
            return spotlight_explanations(engine, images, ranking, target, generator, k=cfg.n_explanations,
                                          permitted_overlap=cfg.overlap, check=ext.check, **prefix)
        if cfg.n_explanations > 1:
            return multiple_explanations(engine, images, ranking, target, k=cfg.n_explanations, overlap=cfg.overlap,
                                         check=ext.check, **prefix)
        if cfg.explanation in ("global", "spatial"):
            return EXTRACTORS[cfg.explanation](engine, images, ranking, target, check=ext.check, **prefix)
        return EXTRACTORS[cfg.explanation](engine, images, ranking, target, **prefix)


@explainer("rex", access="black", options=ReXConfig)
def rex_explain(model: nn.Module, images: Tensor, target: Tensor, **options: Any) -> Explanation:
    """ReX (Algorithm 3): responsibility maps (B, H, W) and the extracted minimal sufficient explanation."""
    res = ReX(**options).explain(model, images, target)
    first = res.explanations if res.explanations.dim() == 4 else res.explanations[:, 0]
    found = res.found if res.found.dim() == 1 else res.found[:, 0]
    scores = {"found": found, "mutants_evaluated": res.mutants_evaluated.float(),
              "mutants_cached": res.mutants_answered.float(),
              "mutants_inferred": res.mutants_inferred.float(), "partitions": res.partitions.float()}
    if res.extraction_evaluated is not None:
        scores["extraction_evaluations"] = res.extraction_evaluated.float()
        scores["model_evaluations"] = res.model_evaluated.float()
    return Explanation(maps=res.maps, explanation=first, scores=scores)
