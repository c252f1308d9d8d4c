"""What explain.py explains: the models a checkpoint or outside model provides, by stage name."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from datamodules.transforms import RESIZE_RATIO


@dataclass
class LoadedModels:
    """The models explanation methods may use, by stage name ("classifier" answers every query), the stage of the
    main checkpoint ("timm" / "factory" for outside models, None for a black-box file), the input size, the
    evaluation resize-and-crop ratio and the class names when known."""

    models: dict[str, nn.Module]
    stage: str | None
    img_size: int
    modules: list[nn.Module] = field(default_factory=list)
    crop_pct: float = 1 / RESIZE_RATIO
    """Evaluation transform of image files: shorter side to img_size / crop_pct, then a centre crop."""
    class_names: list[str] | None = None

    @property
    def classifier(self) -> nn.Module:
        return self.models["classifier"]

    def describe(self) -> str:
        if self.stage is None:
            return "a black-box model file"
        return f"a {self.stage} model" if self.stage in ("timm", "factory") else f"a {self.stage} checkpoint"
