"""Shared fixtures: tiny models and data that keep the whole suite on CPU, offline and fast."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_VIT = {
    "backbone": "vit_tiny_patch16_224",
    "num_classes": 6,
    "img_size": 32,
    "pretrained": False,
    "backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "reg_tokens": 4, "no_embed_class": True},
}


@pytest.fixture
def tiny_classifier():
    """An untrained tiny ViT ClassifierModule on 32 px images (4x4 patch grid)."""
    from models import ClassifierModule

    torch.manual_seed(0)
    return ClassifierModule(**TINY_VIT, lr=1e-3, weight_decay=0.0, warmup_steps=0).eval()


def tiny_stage_args(tmp_path: Path, name: str, config: str = "classifier_synthetic", *extra: str) -> list[str]:
    """CLI arguments that run a stage in seconds: 32 px scenes, a 2-block ViT, a handful of steps."""
    args = [
        "--config", config, "--name", name, "--run_root", str(tmp_path / "runs"), "--wandb", "false",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--data.init_args.img_size", "32", "--data.init_args.n_train", "96", "--data.init_args.n_val", "32",
        "--data.init_args.n_test", "32", "--data.init_args.batch_size", "16",
    ]
    if config.startswith("classifier"):
        args += ["--model.init_args.img_size", "32", "--model.init_args.backbone_kwargs",
                 '{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "reg_tokens": 4, "no_embed_class": true}']
    return args + list(extra)


@pytest.fixture
def one_thread():
    """One intra-op thread: far faster for tiny tensors on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
