"""Surrogate stage: fine-tune the classifier on masked images, KL(p(x) || p_sur(x, S)) (ViT-Shapley, Covert et al. 2023)."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from models.classifier import MaskableModule
from models.maskable import build_classifier
from models.masking import uniform_size_masks
from models.stages import load_checkpoint, load_stage, register_stage

BACKBONE_KEYS = ("backbone", "num_classes", "img_size", "patch_size", "backbone_kwargs")


@register_stage("surrogate")
class SurrogateModule(MaskableModule):
    """Stage 2: a copy of the classifier learns to predict the classifier's full-image output from masked images.

    objective "kl" distils softmax(classifier(x)) into surrogate(x, S); "labels" trains on the labels instead
    (`classifier_masked`). S keeps a uniformly distributed number of visible patches.
    """

    monitor = ("val/loss", "min")

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        objective: str = "kl",
        lr: float = 1e-5,
        weight_decay: float = 1e-5,
        warmup_steps: int = 500,
        eval_seed: int = 0,
        backbone_spec: dict[str, Any] | None = None,
    ) -> None:
        if objective not in ("kl", "labels"):
            raise ValueError(f"objective must be 'kl' or 'labels', got {objective!r}")
        if backbone_spec is None:
            if classifier_ckpt is None:
                raise ValueError("the surrogate stage needs --model.classifier_ckpt, a classifier checkpoint to start from")
            hp = load_checkpoint(classifier_ckpt, expect="classifier")["hyper_parameters"]
            backbone_spec = {k: hp.get(k) for k in BACKBONE_KEYS}
        super().__init__(backbone_spec["num_classes"], lr, weight_decay, warmup_steps, eval_seed)
        self.save_hyperparameters()
        self.hparams["backbone_spec"] = backbone_spec
        self.model = build_classifier(**{**backbone_spec, "pretrained": False})
        self.teacher: torch.nn.Module | None = None
        self.val_kl = MeanMetric()
        self.agreement = MulticlassAccuracy(backbone_spec["num_classes"], average="micro")

    def forward(self, images: Tensor, patch_mask: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        return self.model(images, patch_mask, index)

    def provides(self) -> dict[str, torch.nn.Module]:
        """The surrogate answers the classifier's queries and is the game of Salvage's SRG metrics."""
        return {"classifier": self.model, "surrogate": self.model}

    def setup(self, stage: str) -> None:
        """Load the classifier as a frozen teacher (kept out of this module's checkpoint) and start from its weights."""
        path = self.hparams.classifier_ckpt
        if self.teacher is not None or path is None or not os.path.exists(path):
            if stage == "fit" and self.teacher is None:
                raise FileNotFoundError(f"classifier checkpoint not found: {path!r} (set --model.classifier_ckpt)")
            return
        classifier = load_stage(path, expect="classifier").model.eval().requires_grad_(False)
        if stage == "fit":
            self.model.load_state_dict(classifier.state_dict())
        object.__setattr__(self, "teacher", classifier.to(self.device))

    def _teacher_probs(self, images: Tensor) -> Tensor:
        self.teacher.to(self.device)
        with torch.no_grad():
            return self.teacher(images).float().softmax(-1)

    def _masked_loss(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        logits = self.model(batch["image"], mask).float()
        if self.hparams.objective == "labels":
            return F.cross_entropy(logits, batch["label"])
        target = self._teacher_probs(batch["image"])
        return F.kl_div(logits.log_softmax(-1), target, reduction="batchmean")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mask = uniform_size_masks(batch["image"].shape[0], self.model.num_patches, device=self.device)
        loss = self._masked_loss(batch, mask)
        self.log("train/loss", loss, prog_bar=True)
        return self.check_finite(loss)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        g = self.eval_generator(batch_idx)
        mask = uniform_size_masks(batch["image"].shape[0], self.model.num_patches, g, self.device)
        self.val_kl.update(self._masked_loss(batch, mask), weight=batch["image"].shape[0])
        self.log("val/loss", self.val_kl, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.masked_accuracy_step(self.model, batch, batch_idx)
        if self.teacher is not None:
            self.agreement.update(self.model(batch["image"]), self._teacher_probs(batch["image"]).argmax(-1))

    def on_test_epoch_end(self) -> None:
        self.log_masked_accuracy()
        if self.teacher is not None:
            self.log("test/agreement_top1", self.agreement.compute(), sync_dist=True)
            self.agreement.reset()
