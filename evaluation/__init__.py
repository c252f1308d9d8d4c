"""Running registered methods on saved checkpoints and scoring them: method discovery, model and image loading,
config data sections, the metric suite, the Trainer.predict task and its prediction writer, the comparison table.
explain.py, train.py and the benchmarks build on it."""
from evaluation.configs import available_configs, build_datamodule, resolve_config, stage_config
from evaluation.discovery import METHOD_PACKAGES, discover
from evaluation.run import explain_images, split_items
from evaluation.loading import ImageFiles, LoadedModels, NamedSplit, is_torchscript, load_image, load_models
from evaluation.suite import METRIC_KEYS, score
from evaluation.table import comparison_table
from evaluation.task import ExplainTask
from evaluation.writer import ExplanationWriter, finite

__all__ = [
    "METHOD_PACKAGES", "METRIC_KEYS", "ExplainTask", "ExplanationWriter", "ImageFiles", "LoadedModels", "NamedSplit",
    "available_configs", "explain_images", "split_items", "build_datamodule", "comparison_table", "discover", "finite", "is_torchscript",
    "load_image", "load_models", "resolve_config", "score", "stage_config",
]
