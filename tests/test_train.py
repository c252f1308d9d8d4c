"""train.py end to end on tiny settings: outputs, checkpoints, resume, pipeline, and errors before training."""
import json
import pickle
from pathlib import Path

import wandb
import yaml

import pytest
import torch

import train
from models import ClassifierModule, load_checkpoint, load_stage
from salvage import SurrogateModule
from tests.conftest import tiny_stage_args


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    return tmp, train.main(tiny_stage_args(tmp, "cls"))[0]


def test_stage_writes_checkpoints_config_and_results(classifier_run):
    tmp, results = classifier_run
    run = tmp / "runs" / "cls"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    saved = json.loads((run / "results.json").read_text())
    assert saved["stage"] == "classifier" and saved["best_checkpoint"].endswith("best.ckpt")
    assert set(saved["test"]) == {f"test/acc_masked_{p}" for p in (0, 25, 50, 75)}
    assert all(0.0 <= v <= 1.0 for v in saved["test"].values())


def test_checkpoint_reloads_with_weights_only_and_identical_logits(classifier_run):
    tmp, results = classifier_run
    path = results["best_checkpoint"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["stage"] == "classifier"
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    model = ClassifierModule(**hparams).eval()
    model.load_state_dict(ckpt["state_dict"])
    reloaded = load_stage(path, expect="classifier").eval()
    images = torch.rand(4, 3, 32, 32)
    mask = torch.rand(4, 16) < 0.5
    with torch.no_grad():
        assert torch.equal(model(images), reloaded(images))
        assert torch.equal(model(images, mask), reloaded(images, mask))


def test_run_killed_mid_epoch_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    steps = []
    original = ClassifierModule.training_step

    def step(self, batch, i):
        if kill and self.global_step == 2:
            raise KeyboardInterrupt("killed")
        steps.append(i)
        return original(self, batch, i)

    monkeypatch.setattr(ClassifierModule, "training_step", step)
    args = tiny_stage_args(tmp_path, "kill", "classifier_synthetic", "--checkpoint_every_n_steps", "1")
    kill = True
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train.main(args + ["--trainer.max_epochs", "2"])
    last = torch.load(tmp_path / "runs" / "kill" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 and last["epoch"] == 0
    steps.clear()
    kill = False
    results = train.main(args + ["--trainer.max_epochs", "2", "--ckpt_path", "last"])[0]
    final = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=True)
    assert final["global_step"] == 6, (final["global_step"], steps)
    assert steps == [2, 0, 1, 2]  # the batch left of epoch 0, then the 3 of epoch 1


def test_surrogate_starts_from_the_classifier_and_keeps_the_teacher_out(classifier_run, tmp_path):
    _, cls = classifier_run
    surrogate = SurrogateModule(classifier_ckpt=cls["best_checkpoint"], lr=1e-3)
    surrogate.setup("fit")
    classifier = load_stage(cls["best_checkpoint"]).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(surrogate.eval()(images), classifier(images))
    assert not any(k.startswith("teacher") for k in surrogate.state_dict())
    args = tiny_stage_args(tmp_path, "sur", "surrogate_synthetic", "--model.init_args.classifier_ckpt", cls["best_checkpoint"])
    results = train.main(args)[0]
    assert results["stage"] == "surrogate" and 0 <= results["test"]["test/agreement_top1"] <= 1
    with pytest.raises(ValueError, match="is a surrogate checkpoint, but a classifier checkpoint is needed"):
        SurrogateModule(classifier_ckpt=results["best_checkpoint"])
    reloaded = load_stage(results["best_checkpoint"], expect="surrogate")
    assert reloaded.hparams.backbone_spec["img_size"] == 32


def test_pipeline_runs_stages_in_order_and_skips_finished_ones_on_resume(tmp_path, capsys):
    data_and_trainer = tiny_stage_args(tmp_path, "x", "surrogate_synthetic")[6:]
    spec = tmp_path / "pipe.yaml"
    spec.write_text(
        "name: pipe\n"
        "pipeline:\n"
        "  - name: classifier\n    config: classifier_synthetic\n"
        "    overrides: {model.init_args.img_size: 32, model.init_args.backbone_kwargs: "
        "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, reg_tokens: 4, stem_act: relu}}\n"
        "  - name: surrogate\n    config: surrogate_synthetic\n"
        "    overrides: {model.init_args.classifier_ckpt: '{classifier}'}\n"
    )
    # the run root only on the command line (resuming looks there); hflip, an option of the classifier's model alone,
    # reaches the classifier stage only (the surrogate's model would refuse it)
    extra = ["--run_root", str(tmp_path / "runs"), "--classifier.model.init_args.hflip=true"] + data_and_trainer
    results = train.main(["--config", str(spec)] + extra)
    assert [r["stage"] for r in results] == ["classifier", "surrogate"]
    assert "hflip: true" in (tmp_path / "runs" / "pipe" / "classifier" / "config.yaml").read_text()
    assert (tmp_path / "runs" / "pipe" / "surrogate" / "results.json").is_file()
    out = capsys.readouterr().out
    assert "best ckpt" in out and "pipe/surrogate" in out
    assert "stem_act: relu" in (tmp_path / "runs" / "pipe" / "classifier" / "config.yaml").read_text()
    again = train.main(["--config", str(spec), "--ckpt_path", "last"] + extra)
    assert "already finished" in capsys.readouterr().out and len(again) == 2


def test_a_pipeline_run_is_renamed_by_name_and_its_stages_keep_their_own_names():
    spec, config = {"name": "finegrid"}, Path("finegrid.yaml")
    assert train.pipeline_name(config, spec, ["--wandb", "false"]) == ("finegrid", ["--wandb", "false"])
    assert train.pipeline_name(config, spec, ["--name", "try2", "--wandb", "false"]) == ("try2", ["--wandb", "false"])
    assert train.pipeline_name(config, {}, ["--name=try3"]) == ("try3", [])
    assert train.pipeline_name(config, {}, []) == ("finegrid", [])
    common, own = train.stage_arguments(["--a.x", "1", "--b.y=2", "--z", "3", "--ab.w", "4"], ["a", "b", "ab"])
    assert common == ["--z", "3"] and own == {"a": ["--x", "1"], "b": ["--y", "2"], "ab": ["--w", "4"]}
    with pytest.raises(SystemExit, match="--a.x needs a value"):
        train.stage_arguments(["--a.x"], ["a"])
    argv = ["--config=a.yaml", "-c", "b.yaml", "--trainer.x=1", "--name"]
    assert train.split_option(argv, ("--config", "-c")) == (["a.yaml", "b.yaml"], ["--trainer.x=1", "--name"])


def test_wandb_is_the_default_logger_and_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert train.wandb_offline()
    args = [a for a in tiny_stage_args(tmp_path, "wb") if a not in ("--wandb",)]
    args.remove("false")
    train.main(args)
    assert list((tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*"))


def test_unknown_config_fails_at_once_and_lists_configs():
    with pytest.raises(SystemExit, match="(?s)unknown config .salvage_nothing.*classifier_synthetic.yaml"):
        train.main(["--config", "salvage_nothing"])


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.lr", "-0.1"], "lr must be positive"),
        (["--model.init_args.backbone", "vit_nonexistent_1"], "unknown backbone"),
        (["--model.init_args.num_classes", "4"], "model predicts 4 classes but the data has 6"),
    ],
)
def test_invalid_values_fail_before_training(tmp_path, override, message, monkeypatch):
    monkeypatch.setattr(train.L.Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises((ValueError, SystemExit), match=message):
        train.main(tiny_stage_args(tmp_path, "bad") + override)


def test_unknown_field_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(tiny_stage_args(tmp_path, "bad") + ["--model.init_args.learning_rate", "1"])
    assert "learning_rate" in capsys.readouterr().err


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite training loss.*Lower the learning rate"):
        train.main(tiny_stage_args(tmp_path, "nan") + ["--model.init_args.lr", "1e30", "--trainer.gradient_clip_val", "0"])


def test_mixed_precision_with_gradient_clipping_trains_and_decays_only_weight_matrices(tmp_path):
    # bf16-mixed with clipping is every GPU config's setting; Lightning refuses to clip for a fused optimizer there
    train.main(tiny_stage_args(tmp_path, "bf16") + ["--trainer.precision", "bf16-mixed"])
    module = ClassifierModule(backbone="vit_tiny_convpatch16", num_classes=3, img_size=32, pretrained=False,
                              backbone_kwargs={"patch_size": 8, "depth": 1})
    names = {id(p): n for n, p in module.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in module.weight_decay_groups(0.05)}
    assert {"model.backbone.pos_embed", "model.backbone.reg_token", "model.backbone.cls_token",
            "model.backbone.blocks.0.norm1.weight", "model.backbone.head.bias"} <= groups[0.0]
    assert all(n.endswith(".weight") and "norm" not in n for n in groups[0.05])
    assert groups[0.0] | groups[0.05] == set(names.values())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_with_code_or_of_the_wrong_kind_are_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": {}, "x": _Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load .*not a plain Lightning checkpoint"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_pipeline_stages_are_separate_wandb_runs_in_one_group(tmp_path):
    """One offline W&B run per stage, each with its own stage config, grouped by the pipeline's name."""
    tiny = tiny_stage_args(tmp_path, "x")
    overrides = {a.lstrip("-"): b for a, b in zip(tiny[::2], tiny[1::2]) if a.startswith(("--trainer", "--data"))}
    model = {"model.init_args.img_size": 32, "model.init_args.backbone_kwargs": tiny[-1]}
    pipeline = {"name": "pipe", "pipeline": [
        {"name": "classifier", "config": "classifier_synthetic.yaml",
         "overrides": {**overrides, **model, "trainer.callbacks": "[]"}},
        {"name": "surrogate", "config": "surrogate_synthetic.yaml",
         "overrides": {**overrides, "model.init_args.classifier_ckpt": "{classifier}"}},
    ]}
    config = tmp_path / "pipe.yaml"
    config.write_text(yaml.safe_dump(pipeline))
    train.main(["--config", str(config), "--run_root", str(tmp_path / "runs"), "--wandb", "true"])
    wandb.teardown()  # the W&B service writes an offline run's records out behind finish(): wait for it
    runs = {stage: list((tmp_path / "runs" / "pipe" / stage / "wandb").glob("offline-run-*"))
            for stage in ("classifier", "surrogate")}
    assert all(len(found) == 1 for found in runs.values()), runs
    assert runs["classifier"][0].name != runs["surrogate"][0].name
    expected = {"classifier": b"models.ClassifierModule", "surrogate": b"salvage.SurrogateModule"}
    for stage, (run,) in runs.items():
        record = next(run.glob("run-*.wandb")).read_bytes()  # the offline run's protobuf records
        assert b"stage_config" in record and expected[stage] in record  # its own resolved stage config
        other = expected["surrogate" if stage == "classifier" else "classifier"]
        assert other not in record
        assert b"pipe" in record and stage.encode() in record  # group and job type travel in the run record
