"""Pretrained weights resolved before any work: offline failure in seconds with the ways out, local files, the cache;
errors raised while a config is instantiated shown as one message."""
from __future__ import annotations

import time

import pytest
import timm
import torch

import train
from models import ClassifierModule
from models import weights
from models.weights import WeightsUnavailable

SMALL = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _no_network(monkeypatch, cached=None):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co' (network is unreachable)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename, **kw: cached)
    monkeypatch.setattr(weights, "_unreachable", lambda url, timeout=3.0: None)  # the host answers; the download fails
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _weights_file(tmp_path, suffix=".pth"):
    torch.manual_seed(3)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, **SMALL)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    return net, path


def test_no_network_and_no_cache_fails_in_seconds_with_the_ways_out(monkeypatch):
    _no_network(monkeypatch)
    start = time.time()
    with pytest.raises(WeightsUnavailable) as info:
        ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL)
    assert time.time() - start < 5
    text = str(info.value)
    for needed in ("'vit_tiny_patch16_224'", "timm/vit_tiny_patch16_224", "not in the local cache", "no network",
                   "python -c \"import timm; timm.create_model('vit_tiny_patch16_224', pretrained=True)\"",
                   "HF_HUB_OFFLINE=1", "--model.init_args.pretrained_file PATH", "pretrained false"):
        assert needed in text, needed


def test_offline_mode_is_honoured_without_touching_the_network(monkeypatch):
    import huggingface_hub

    _no_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("network call in offline mode"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="HF_HUB_OFFLINE is set"):
        ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_weights_file_is_loaded_through_timm(monkeypatch, tmp_path, suffix):
    _no_network(monkeypatch)
    net, path = _weights_file(tmp_path, suffix)
    module = ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL,
                              pretrained=False, pretrained_file=str(path))
    loaded = module.model.backbone.state_dict()
    # timm drops the file's classifier when num_classes differs from the weights' (1000 for this model's config)
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items() if not k.startswith("head."))
    with pytest.raises(FileNotFoundError, match="pretrained_file not found: .*nothing.pth"):
        ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL,
                         pretrained_file=str(tmp_path / "nothing.pth"))


def test_a_cached_copy_is_used_without_a_download(monkeypatch, tmp_path):
    net, path = _weights_file(tmp_path, ".safetensors")
    _no_network(monkeypatch, cached=str(path))
    module = ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL)
    assert torch.equal(module.model.backbone.pos_embed, net.pos_embed)


def _pet_args(tmp_path, *extra):
    return ["--config", "classifier_pet", "--run_root", str(tmp_path / "runs"), "--wandb", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
            "--model.init_args.backbone", "vit_tiny_patch16_224", "--model.init_args.img_size", "32",
            "--model.init_args.backbone_kwargs", '{"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}',
            "--data.init_args.root", str(tmp_path / "no_pets_here"), "--data.init_args.img_size", "32", *extra]


def test_train_offline_prints_one_message_and_the_dataset_root_error_still_comes_when_weights_are_fine(
        monkeypatch, tmp_path, capsys):
    _no_network(monkeypatch)
    with pytest.raises(SystemExit) as info:
        train.main(_pet_args(tmp_path, "--model.init_args.num_classes", "37"))
    message = str(info.value.code)
    assert message.startswith("error: cannot build the stage of") and "Expected a <class 'NoneType'>" not in message
    assert "no network" in message and "Namespace(" not in message
    _, path = _weights_file(tmp_path)
    with pytest.raises(SystemExit) as info:
        train.main(_pet_args(tmp_path, "--model.init_args.num_classes", "37", "--model.init_args.pretrained_file", str(path)))
    assert "Oxford-IIIT Pet not found under root=" in str(info.value.code) or "not found under root=" in str(info.value.code)


def test_a_missing_upstream_checkpoint_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(SystemExit) as info:
        train.main(["--config", "salvage_pet", "--run_root", str(tmp_path), "--wandb", "false"])
    message = str(info.value.code)
    assert "checkpoint not found: 'runs/surrogate_pet/checkpoints/best.ckpt'" in message
    assert "python train.py --config surrogate_pet.yaml" in message and "Namespace(" not in message


@pytest.mark.parametrize("dataset", ["pet", "imagenette", "mura"])
def test_each_real_dataset_has_a_pipeline_config_chaining_its_three_stages(dataset):
    import yaml

    from evaluation.configs import resolve_config

    spec = yaml.safe_load(resolve_config(f"pipeline_{dataset}").read_text())
    assert [s["config"] for s in spec["pipeline"]] == [f"classifier_{dataset}.yaml", f"surrogate_{dataset}.yaml",
                                                       f"salvage_{dataset}.yaml"]
    assert spec["pipeline"][1]["overrides"] == {"model.init_args.classifier_ckpt": "{classifier}"}
    assert spec["pipeline"][2]["overrides"] == {"model.init_args.surrogate_ckpt": "{surrogate}"}


def test_a_pipeline_stops_at_its_first_stage_with_the_dataset_root_message(tmp_path):
    with pytest.raises(SystemExit, match="not found under root="):
        train.main(["--config", "pipeline_pet", "--run_root", str(tmp_path), "--wandb", "false",
                    "--model.init_args.pretrained", "false", "--trainer.accelerator", "cpu",
                    "--data.init_args.root", str(tmp_path / "nothing")])


@pytest.mark.parametrize("config", ["bridge_pet", "bridge_imagenette", "pipeline_pet"])
def test_real_data_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--config", config, "--print_config"])
    assert info.value.code in (0, None)
    if config.startswith("bridge"):
        assert "rcsb.BridgeModule" in capsys.readouterr().out


def test_the_hub_s_own_offline_error_is_reported_as_no_network_not_as_a_missing_file(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(weights, "_unreachable", lambda url, timeout=3.0: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsUnavailable, match="no network\\? An error happened"):
        ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL)


def test_an_unreachable_hub_is_detected_by_one_quick_probe_without_the_client_s_retries(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("no download without network"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens, refused at once
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.time()
    with pytest.raises(WeightsUnavailable, match="no network: cannot reach 127.0.0.1:9"):
        ClassifierModule(backbone="vit_tiny_patch16_224", num_classes=5, img_size=32, backbone_kwargs=SMALL)
    assert time.time() - start < 5
