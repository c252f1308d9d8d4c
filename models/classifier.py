"""Classifier stage: a timm backbone in a MaskableClassifier, trained with cross-entropy (ViT-Shapley's first stage)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from models.maskable import build_classifier
from models.masking import fixed_fraction_masks, per_image_masks
from models.stages import StageModule, register_stage

MASKED_FRACTIONS = (0.25, 0.5, 0.75)


class MaskableModule(StageModule):
    """Shared training plumbing: AdamW (no decay on biases, norms and tokens) with linear warm-up and cosine decay,
    finite-loss guard, masked test accuracy."""

    def __init__(self, num_classes: int, lr: float, weight_decay: float, warmup_steps: int, eval_seed: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.eval_seed = eval_seed
        self.test_acc = torch.nn.ModuleDict(
            {self._frac_key(f): MulticlassAccuracy(num_classes, average="micro") for f in (0.0, *MASKED_FRACTIONS)}
        )

    @staticmethod
    def _frac_key(fraction: float) -> str:
        return f"masked_{round(fraction * 100)}"

    def eval_generator(self, batch_idx: int, salt: int = 0) -> torch.Generator:
        """A generator seeded by (eval_seed, batch, salt): evaluation masks are the same at every epoch."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.eval_seed * 1_000_003 + batch_idx * 101 + salt)
        return g

    def masked_accuracy_step(self, model: nn.Module, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Update accuracy on full images and with 25/50/75% of patches masked: each image's mask is drawn from its
        dataset index (`batch["index"]`), so results do not depend on batching or the number of devices."""
        images, labels = batch["image"], batch["label"]
        for k, fraction in enumerate((0.0, *MASKED_FRACTIONS)):
            mask = None
            if fraction > 0 and "index" in batch:
                mask = per_image_masks(batch["index"], model.num_patches, fraction, self.eval_seed)
            elif fraction > 0:
                g = self.eval_generator(batch_idx, salt=k)
                mask = fixed_fraction_masks(images.shape[0], model.num_patches, fraction, g, self.device)
            self.test_acc[self._frac_key(fraction)].update(model(images, mask), labels)

    def log_masked_accuracy(self) -> None:
        for key, metric in self.test_acc.items():
            self.log(f"test/acc_{key}", metric.compute(), sync_dist=True)
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.adamw(self.weight_decay_groups(self.hparams.weight_decay), self.hparams.lr, self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@register_stage("classifier")
class ClassifierModule(MaskableModule):
    """Stage 1: fine-tune (or train from scratch) a classifier on full images with cross-entropy."""

    monitor = ("val/acc", "max")
    load_overrides = {"pretrained": False, "pretrained_file": None}

    def __init__(
        self,
        backbone: str = "vit_small_patch14_reg4_dinov2",
        num_classes: int = 10,
        img_size: int = 224,
        pretrained: bool = True,
        patch_size: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 1e-5,
        warmup_steps: int = 500,
        label_smoothing: float = 0.0,
        hflip: bool = False,
        eval_seed: int = 0,
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__(num_classes, lr, weight_decay, warmup_steps, eval_seed)
        self.save_hyperparameters()
        self.model = build_classifier(
            backbone, num_classes, img_size, pretrained, patch_size, backbone_kwargs, pretrained_file
        )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor, patch_mask: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        return self.model(images, patch_mask, index)

    def provides(self) -> dict[str, nn.Module]:
        return {"classifier": self.model}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"]
        if self.hparams.hflip:
            flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
            images = torch.where(flip, images.flip(-1), images)
        logits = self.model(images)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return self.check_finite(loss)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True)
        self.val_acc.update(logits, batch["label"])
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.masked_accuracy_step(self.model, batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log_masked_accuracy()
