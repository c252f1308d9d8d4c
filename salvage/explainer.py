"""Explainer stage: Salvage (JS between Shapley distributions u(S) and the surrogate's v(S), eq. 4-5) or ViT-Shapley (MSE).

The surrogate is the frozen game v(S) = softmax(surrogate(x, S)); it is kept out of this module's checkpoint, and
`backbone_spec` in the hyperparameters rebuilds the explainer without it.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MeanMetric

from explainers.figures import DEGENERATE_NOTE, explanation_to_array, image_to_array, map_to_array
from explainers.maps import select_class, to_pixel_map
from explainers.metrics import degenerate_images, resolve_min_confidence
from explainers.protocol import Explanation, explainer
from models.classifier import MaskableModule
from models.maskable import MaskableClassifier, build_classifier
from models.queries import QueryEngine
from models.stages import load_checkpoint, load_stage, register_stage
from rex.metrics import explanation_size
from salvage.metrics import SRG, RelativeSRG, RelevanceAccuracy, srg_scores
from salvage.sampling import SAMPLERS, sample_masks
from salvage.segmenter import SegmenterExplainer
from salvage.surrogate import BACKBONE_KEYS
from salvage.shapley import efficient_normalisation, js_loss, shapley_distribution, vit_shapley_loss

LOSSES = ("js", "mse")


def surrogate_backbone_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The backbone spec of a surrogate checkpoint (from its hyperparameters, else from its classifier checkpoint)."""
    hp = load_checkpoint(path, expect="surrogate")["hyper_parameters"]
    if hp.get("backbone_spec"):
        return dict(hp["backbone_spec"])
    classifier = hp.get("classifier_ckpt")
    if not classifier or not os.path.isfile(classifier):
        raise FileNotFoundError(
            f"{os.fspath(path)!r} stores no backbone spec and its classifier checkpoint {classifier!r} is missing"
        )
    return {k: load_checkpoint(classifier, expect="classifier")["hyper_parameters"].get(k) for k in BACKBONE_KEYS}


@register_stage("explainer")
class ExplainerModule(MaskableModule):
    """Stage 3: a Segmenter explainer trained on the surrogate's masked predictions (Salvage: js; ViT-Shapley: mse)."""

    monitor = ("val/loss", "min")

    def __init__(
        self,
        surrogate_ckpt: str | None = None,
        loss: str = "js",
        sampler: str = "guided",
        masks_per_image: int = 32,
        temperature: float = 1.0,
        binary: bool = False,
        decoder_blocks: int = 2,
        decoder_heads: int | None = None,
        lr: float = 1e-5,
        weight_decay: float = 1e-5,
        warmup_steps: int = 500,
        eval_seed: int = 0,
        val_batches: int = 1,
        val_r_masks: int = 16,
        test_r_masks: int = 128,
        metric_batch_size: int = 1024,
        log_examples: int = 8,
        backbone_spec: dict[str, Any] | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if masks_per_image < 1 or (sampler == "guided" and masks_per_image % 2):
            raise ValueError(f"masks_per_image must be positive (and even for the guided sampler), got {masks_per_image}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if backbone_spec is None:
            if surrogate_ckpt is None:
                raise ValueError("the explainer stage needs --model.surrogate_ckpt, a surrogate checkpoint")
            backbone_spec = surrogate_backbone_spec(surrogate_ckpt)
        num_classes = backbone_spec["num_classes"]
        if binary and num_classes != 2:
            raise ValueError(f"binary (sigmoid) Shapley distributions need a 2-class surrogate, got {num_classes} classes")
        super().__init__(num_classes, lr, weight_decay, warmup_steps, eval_seed)
        self.save_hyperparameters()
        self.backbone_spec = dict(backbone_spec)
        self.sigmoid = binary and loss == "js"
        encoder = build_classifier(**{**backbone_spec, "pretrained": False})
        self.net = SegmenterExplainer(encoder, 1 if self.sigmoid else num_classes, 2 if loss == "js" else 1,
                                      decoder_blocks, decoder_heads)
        self.game: MaskableClassifier | None = None
        self.reference: torch.nn.Module | None = None
        self.val_srg, self.val_rsrg = SRG(metric_batch_size), RelativeSRG(val_r_masks, eval_seed, metric_batch_size)
        self.test_srg, self.test_rsrg = SRG(metric_batch_size), RelativeSRG(test_r_masks, eval_seed, metric_batch_size)
        self.test_relevance = RelevanceAccuracy()
        self.val_loss = MeanMetric()
        self.class_metrics = torch.nn.ModuleDict(
            {k: MeanMetric() for k in ("explainer_acc", "classifier_acc", "agreement", "agreement_correct", "agreement_wrong")}
        )

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.net.patch_grid

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the backbone spec so that the explainer rebuilds without the surrogate file."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"]["backbone_spec"] = self.backbone_spec

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    def attach_game(self, surrogate_ckpt: str | os.PathLike | None = None) -> MaskableClassifier:
        """Load the surrogate as the frozen game v(S) (kept out of the state_dict); default: hparams.surrogate_ckpt."""
        path = surrogate_ckpt or self.hparams.surrogate_ckpt
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"surrogate checkpoint not found: {path!r} (set --model.surrogate_ckpt)")
        surrogate = load_stage(path, expect="surrogate")
        game = surrogate.model.eval().requires_grad_(False).to(self.device)
        object.__setattr__(self, "game", game)
        classifier_path = surrogate.hparams.get("classifier_ckpt")
        reference = game
        if classifier_path and os.path.isfile(classifier_path):
            reference = load_stage(classifier_path, expect="classifier").model.eval().requires_grad_(False)
        object.__setattr__(self, "reference", reference.to(self.device))
        return game

    def provides(self) -> dict[str, torch.nn.Module]:
        """Its reference classifier answers the queries, its surrogate is the SRG game; the explainer itself."""
        if self.game is None:
            try:
                self.attach_game()
            except FileNotFoundError as err:
                raise FileNotFoundError(f"the explainer checkpoint needs its surrogate: {err}") from err
        return {"classifier": self.reference, "surrogate": self.game, "explainer": self}

    def setup(self, stage: str) -> None:
        """Attach the surrogate; when fitting, start the encoder from the surrogate's backbone weights."""
        path = self.hparams.surrogate_ckpt
        if self.game is None and path is not None and os.path.isfile(path):
            self.attach_game(path)
        if stage != "fit":
            return
        if self.game is None:
            raise FileNotFoundError(f"surrogate checkpoint not found: {path!r} (set --model.surrogate_ckpt)")
        weights = {k: v for k, v in self.game.state_dict().items() if not k.startswith("backbone.head")}
        self.net.encoder.load_state_dict(weights)

    def _game(self) -> MaskableClassifier:
        game = self.game if self.game is not None else self.attach_game()
        return game.to(self.device)

    @torch.no_grad()
    def game_values(self, images: Tensor, masks: Tensor) -> Tensor:
        """v(S) = softmax(surrogate(x, S)) for masks (B, M, n), all B * M masked images in one call: (B, M, C)."""
        b, m, n = masks.shape
        index = torch.arange(b, device=images.device).repeat_interleave(m)
        return self._game()(images, masks.reshape(b * m, n), index).float().softmax(-1).view(b, m, -1)

    def _sets(self, images: Tensor) -> Tensor:
        out = self.net(images)
        return out.flatten(-2).float()

    def _phi(self, sets: Tensor) -> Tensor:
        """phi = phi+ - phi- (JS) centred over classes: u(S) (eq. 4) is blind to a per-patch shift shared by all
        classes, so phi is only defined up to one; the centred gauge removes it. ViT-Shapley: its single phi."""
        if self.hparams.loss != "js":
            return sets[:, 0]
        phi = sets[:, 0] - sets[:, 1]
        return torch.cat([-phi, phi], dim=1) if self.sigmoid else phi - phi.mean(1, keepdim=True)

    def forward(self, images: Tensor) -> Tensor:
        """Attribution maps (B, C, gh, gw): phi = phi+ - phi- centred over classes (Salvage) or the efficiently
        normalised phi (ViT-Shapley)."""
        sets = self._sets(images)
        phi = self._phi(sets)
        if self.hparams.loss == "mse":
            b, n = images.shape[0], self.num_patches
            ends = torch.stack([torch.ones(b, n, dtype=torch.bool), torch.zeros(b, n, dtype=torch.bool)], 1)
            values = self.game_values(images, ends.to(images.device))
            phi = efficient_normalisation(phi, values[:, 0], values[:, 1])
        return phi.view(images.shape[0], -1, *self.patch_grid)

    def class_probabilities(self, images: Tensor) -> Tensor:
        """Eq. 6, the explainer as a classifier: u(N) = sigma(sum_i phi+_i), (B, C). Salvage (loss=js) only."""
        if self.hparams.loss != "js":
            raise ValueError(
                "eq. 6 (the explainer as a classifier) needs phi+ of the JS loss; a loss=mse (ViT-Shapley) explainer "
                "only learns phi up to the surrogate's own v(N) - v(empty)"
            )
        sets = self._sets(images)
        return shapley_distribution(sets[:, 0].sum(-1), self.hparams.temperature, self.sigmoid)

    def _loss(self, images: Tensor, sets: Tensor, masks: Tensor) -> Tensor:
        m = masks.shape[1]
        if self.hparams.loss == "js":
            values = self.game_values(images, masks)
            return js_loss(sets[:, 0], sets[:, 1], masks, values, self.hparams.temperature, self.sigmoid)
        b, n = images.shape[0], self.num_patches
        ends = torch.stack([masks.new_ones(b, n), masks.new_zeros(b, n)], 1)
        values = self.game_values(images, torch.cat([masks, ends], 1))
        return vit_shapley_loss(sets[:, 0], masks, values[:, :m], values[:, m], values[:, m + 1])

    def _masks(self, images: Tensor, sets: Tensor, generator: torch.Generator | None, sampler: str) -> Tensor:
        phi = None
        if sampler == "guided":
            with torch.no_grad():
                target = self._game()(images).argmax(-1)
                phi = self._phi(sets.detach())[torch.arange(images.shape[0], device=images.device), target]
        return sample_masks(sampler, images.shape[0], self.hparams.masks_per_image, self.num_patches, generator,
                            images.device, phi)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"]
        sets = self._sets(images)
        masks = self._masks(images, sets, None, self.hparams.sampler)
        loss = self._loss(images, sets, masks)
        self.log("train/loss", loss, prog_bar=True)
        return self.check_finite(loss)

    def _targets(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self._game()(images).argmax(-1)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        images = batch["image"]
        sets = self._sets(images)
        masks = self._masks(images, sets, self.eval_generator(batch_idx), "shapley")
        self.val_loss.update(self._loss(images, sets, masks), weight=images.shape[0])
        self.log("val/loss", self.val_loss, prog_bar=True)
        if batch_idx < self.hparams.val_batches:
            maps, target = self(images), self._targets(images)
            self.val_srg.update(self._game(), images, maps, target)
            self.val_rsrg.update(self._game(), images, maps, target)

    def on_validation_epoch_end(self) -> None:
        for metric in (self.val_srg, self.val_rsrg):
            if metric.update_called:
                for name, value in metric.compute().items():
                    self.log(f"val/{name}", value, sync_dist=False)
            metric.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        images, labels = batch["image"], batch["label"]
        maps, target = self(images), self._targets(images)
        self.test_srg.update(self._game(), images, maps, target)
        self.test_rsrg.update(self._game(), images, maps, target)
        if "mask" in batch:
            self.test_relevance.update(maps, batch["mask"], target)
        if self.hparams.loss == "js":
            self._classification_step(images, labels)
        if batch_idx == 0:
            self._log_overlays(images, maps, target, self._log_table(images, maps, target))

    def _classification_step(self, images: Tensor, labels: Tensor) -> None:
        """Table 2 / A.4: explainer accuracy and its top-1 agreement with the classifier, split by classifier correctness."""
        explainer = self.class_probabilities(images).argmax(-1)
        with torch.no_grad():
            classifier = self.reference.to(self.device)(images).argmax(-1)
        right = classifier == labels
        agree = (explainer == classifier).float()
        self.class_metrics["explainer_acc"].update((explainer == labels).float())
        self.class_metrics["classifier_acc"].update(right.float())
        self.class_metrics["agreement"].update(agree)
        if right.any():
            self.class_metrics["agreement_correct"].update(agree[right])
        if (~right).any():
            self.class_metrics["agreement_wrong"].update(agree[~right])

    def on_test_epoch_end(self) -> None:
        results = {**self.test_srg.compute(), **self.test_rsrg.compute()}
        if self.test_relevance.update_called:
            results.update(self.test_relevance.compute())
        for name, metric in self.class_metrics.items():
            if metric.update_called:
                results[name] = metric.compute()
        for name, value in results.items():
            self.log(f"test/{name}", value)
        for metric in (self.test_srg, self.test_rsrg, self.test_relevance, *self.class_metrics.values()):
            metric.reset()

    def _log_overlays(self, images: Tensor, maps: Tensor, target: Tensor, flat: Tensor | None = None) -> None:
        """Log the first `log_examples` images with the target class's phi over them, captioned with the class (and
        "degenerate" where `flat` flags the row's explanation)."""
        if not isinstance(self.logger, WandbLogger) or self.hparams.log_examples <= 0:
            return
        k = min(self.hparams.log_examples, images.shape[0])
        heat = to_pixel_map(maps[:k], tuple(images.shape[-2:]), target[:k], mode="bilinear")
        scale = heat.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None]
        heat = heat / scale
        colour = torch.stack([heat.clamp_min(0), torch.zeros_like(heat), (-heat).clamp_min(0)], 1)
        alpha = heat.abs()[:, None] * 0.6
        overlay = (images[:k].float() * (1 - alpha) + colour * alpha).detach().clamp(0, 1)
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        captions = [names[t] if names else str(int(t)) for t in target[:k].tolist()]
        if flat is not None:
            captions = [f"{c} (degenerate)" if f else c for c, f in zip(captions, flat.tolist())]
        self.logger.log_image("test/attributions", [image_to_array(o) for o in overlay], caption=captions)

    @torch.no_grad()
    def _log_table(self, images: Tensor, maps: Tensor, target: Tensor) -> Tensor | None:
        """Log one W&B table per run, `test/explanations`, and return the rows' degenerate flags (None off W&B).

        A row per each of the first `log_examples` test images: the image, the target class's phi over it, the
        sufficient explanation the classifier finds in that map (`explanation_size`, the extraction explain.py
        scores) and its metrics; a degenerate row (`degenerate`) has no size and says so under its explanation."""
        if not isinstance(self.logger, WandbLogger) or self.hparams.log_examples <= 0:
            return None
        import wandb as wb

        k = min(self.hparams.log_examples, images.shape[0])
        images, target, maps = images[:k], target[:k], maps[:k]
        patch = select_class(maps, target)
        engine = QueryEngine(self.reference.to(self.device))
        flat, full, _ = degenerate_images(engine, images, target, "auto")
        size, kept = explanation_size(engine, images, patch, target, resolve_min_confidence("auto", full.shape[1]))
        srg = srg_scores(self._game(), images, maps, target, self.hparams.metric_batch_size)["srg"]
        heat = to_pixel_map(patch, tuple(images.shape[-2:]), mode="bilinear")
        confidence, predicted = full.max(1)
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        name = (lambda c: names[c]) if names else str
        data = [
            [wb.Image(image_to_array(images[i])), wb.Image(map_to_array(images[i], heat[i])),
             wb.Image(explanation_to_array(images[i], kept[i]), caption=DEGENERATE_NOTE if flat[i] else None),
             int(target[i]), name(int(target[i])), int(predicted[i]), name(int(predicted[i])), float(confidence[i]),
             None if flat[i] else float(size[i]), float(srg[i]), bool(flat[i])]
            for i in range(k)
        ]
        columns = ["image", "map", "explanation", "target", "target_name", "predicted", "predicted_name", "confidence",
                   "size", "srg", "degenerate"]
        self.logger.log_table("test/explanations", columns=columns, data=data)
        return flat


@explainer("salvage", access="white", needs=("explainer",))
def salvage_explain(model: torch.nn.Module, images: Tensor, target: Tensor, explainer: ExplainerModule) -> Explanation:
    """Salvage attributions phi = phi+ - phi- (section 4.1) of the target class, patch map (B, gh, gw)."""
    if explainer.hparams.loss != "js":
        raise ValueError("'salvage' needs an explainer trained with loss=js; this checkpoint used loss=mse (use 'vit_shapley')")
    with torch.no_grad():
        return Explanation(maps=select_class(explainer(images.to(explainer.device)), target))


@explainer("vit_shapley", access="white", needs=("explainer",))
def vit_shapley_explain(model: torch.nn.Module, images: Tensor, target: Tensor, explainer: ExplainerModule) -> Explanation:
    """ViT-Shapley attributions: the efficiently normalised phi of an explainer trained with loss=mse, (B, gh, gw)."""
    if explainer.hparams.loss != "mse":
        raise ValueError("'vit_shapley' needs an explainer trained with loss=mse; this checkpoint used loss=js (use 'salvage')")
    with torch.no_grad():
        return Explanation(maps=select_class(explainer(images.to(explainer.device)), target))
