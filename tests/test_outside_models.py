"""Models this project did not train: timm:NAME and package.module:factory (white boxes), torch.export and
TorchScript files (black boxes), class names from a file; bad specs fail before any work."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

import explain
from evaluation import load_image, load_models

FACTORY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    img_size = 16
    class_names = ["dark", "bright", "red"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


def make():
    return Tiny()


def not_a_model():
    return "a string"
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_outside_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_outside_models"


def _image(tmp_path, size=16):
    from PIL import Image
    import numpy as np

    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((size, size + 8, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_a_python_factory_is_a_white_box_and_every_gradient_method_runs(factory_module, tmp_path):
    out = tmp_path / "out"
    records = explain.main(["--model", f"{factory_module}:make", "--method", "saliency,occlusion,integrated_gradients",
                            "--images", _image(tmp_path), "--grid", "4", "--out", str(out), "--steps", "4"])
    assert {r["method"] for r in records} == {"saliency", "occlusion", "integrated_gradients"}
    assert all(r["predicted_name"] in ("dark", "bright", "red") for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "factory"


def test_bad_factories_fail_before_any_work(factory_module, tmp_path):
    with pytest.raises(SystemExit, match="returned a str, not a torch nn.Module"):
        load_models(f"{factory_module}:not_a_model")
    with pytest.raises(SystemExit, match="cannot load model factory 'no_such_module:make'"):
        load_models("no_such_module:make")
    with pytest.raises(SystemExit, match="timm has no model 'resnet_does_not_exist'"):
        load_models("timm:resnet_does_not_exist")


def test_a_timm_model_with_random_weights_runs_white_box_methods(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(1000)))
    records = explain.main(["--model", "timm:resnet10t", "--weights", "random", "--img-size", "32", "--classes",
                            str(names), "--method", "gradcam,occlusion", "--images", _image(tmp_path, 32), "--grid", "4",
                            "--out", str(tmp_path / "out"), "--steps", "4"])
    assert {r["method"] for r in records} == {"gradcam", "occlusion"}
    assert records[0]["predicted_name"].startswith("thing ")
    loaded = load_models("timm:resnet10t", weights="random")
    assert loaded.img_size == 176 and loaded.crop_pct == pytest.approx(0.875)  # timm's data config and loaded.stage == "timm"


def test_a_timm_model_offline_without_weights_fails_with_the_ways_out(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="(?s)not in the local cache.*--weights PATH.*--weights random"):
        load_models("timm:resnet10t")


def test_a_torch_export_program_is_a_black_box(factory_module, tmp_path):
    import importlib

    net = importlib.import_module(factory_module).make().eval()
    program = torch.export.export(net, (torch.rand(1, 3, 16, 16),))
    torch.export.save(program, tmp_path / "model.pt2")
    base = ["--model", str(tmp_path / "model.pt2"), "--img-size", "16", "--grid", "4", "--images", _image(tmp_path),
            "--out", str(tmp_path / "o"), "--steps", "4"]
    with pytest.raises(SystemExit, match="'saliency' is a white-box method.*black-box model"):
        explain.main([*base, "--method", "saliency"])
    records = explain.main([*base, "--method", "occlusion"])
    image = load_image(_image(tmp_path), 16)[None]
    direct = load_models(f"{factory_module}:make").classifier
    assert records[0]["predicted"] == int(direct(image).argmax())
    assert records[0]["confidence"] == pytest.approx(float(direct(image).softmax(1).max()), abs=1e-5)


def test_a_method_that_cannot_explain_the_model_is_refused_before_any_work(factory_module, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="'attention_rollout' cannot explain this model: it needs a ViT"):
        explain.main(["--model", f"{factory_module}:make", "--method", "occlusion,attention_rollout",
                      "--images", _image(tmp_path), "--out", str(out)])
    assert not out.exists() or not any(out.iterdir())
