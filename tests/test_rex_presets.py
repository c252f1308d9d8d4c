"""ReX's presets and public options: the values of each preset, overrides, the maps recorded before the presets
existed, and the command line refusing a bad option before any model loads."""
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import explain
import rex
from tests.rex_fixture_model import SpatialWeights

FIXTURE = Path(__file__).parent / "fixtures" / "rex_maps_before_presets.pt"


def test_paper_preset_is_section_6_1():
    paper = rex.PRESETS["paper"]
    assert paper.search == rex.SearchSettings(n_partitions=20, min_size=10, distribution="uniform", area_share=True,
                                              focus_after=None, monotone=False, blank_fails=False,
                                              combination="average", cache=True)
    assert paper.extraction == rex.ExtractionSettings(candidates=32, check=64, tie_sigma=0.0, prune_cell=None,
                                                      explanation_first=False, confidence_weight=0.0)


def test_fast_preset_is_the_frugal_row_it_was_chosen_as():
    fast = rex.PRESETS["fast"]
    assert fast.search == rex.SearchSettings(n_partitions=5, min_size=160, distribution="binom", area_share=False,
                                             focus_after=3, focus_min_size=40, blank_fails=True)
    assert fast.extraction == rex.ExtractionSettings(candidates=8, check=16, tie_sigma=2.0, prune_cell=8,
                                                     explanation_first=True, confidence_weight=0.3)
    default = rex.ReX()  # the default preset, chosen from rex_untouched_*.md
    assert (default.search, default.extraction) == (fast.search, fast.extraction)


def test_explicit_options_override_the_preset():
    r = rex.ReX(preset="fast", n_partitions=7, prune_cell=0, confidence_weight=0.0, cache=False)
    assert r.search.n_partitions == 7 and r.search.cache is False and r.search.min_size == 160
    assert r.extraction.prune_cell is None and r.extraction.confidence_weight == 0.0
    assert r.extraction.tie_sigma == 2.0  # not overridden: the preset's
    assert rex.ReX(preset="paper", prune_cell=4).extraction.prune_cell == 4
    contrastive = rex.ReX(preset="fast", explanation="contrastive")  # the preset's pruning needs a global one
    assert contrastive.extraction.prune_cell is None and not contrastive.extraction.explanation_first
    assert rex.ReX(preset=rex.PRESETS["paper"].but(min_size=50)).search.min_size == 50
    with pytest.raises(ValueError, match="unknown ReX settings"):
        rex.PRESETS["paper"].but(queue_len=2)
    with pytest.raises(ValueError, match="unknown ReX preset 'quick'"):
        rex.ReXConfig(preset="quick")


def test_the_public_option_set_is_small():
    assert len(fields(rex.ReXConfig)) <= 15
    assert {"preset", "n_partitions", "mask_value", "explanation", "n_explanations", "overlap", "engine", "cache",
            "seed"} <= {f.name for f in fields(rex.ReXConfig)}
    assert all("help" in f.metadata for f in fields(rex.ReXConfig))


@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_presets_give_the_maps_recorded_before_they_existed(preset, one_thread):
    """`paper` against the defaults and `fast` against the 13 options typed by hand, recorded at the commit before
    the presets (tests/fixtures/rex_maps_before_presets.pt, same black box, seed 3)."""
    before = torch.load(FIXTURE, weights_only=True)
    model, x = SpatialWeights(), before["images"]
    key = "" if preset == "paper" else "fast_"
    with torch.no_grad():
        res = rex.ReX(preset=preset, seed=3).explain(model, x)
    assert torch.equal(res.maps, before[f"{key}maps"])
    assert torch.equal(res.explanations, before[f"{key}explanations"])
    assert torch.equal(res.model_evaluated, before[f"{key}evaluated"])
    if preset == "paper":
        with torch.no_grad():
            spatial = rex.ReX(preset="paper", seed=3, explanation="spatial").explain(model, x)
        assert torch.equal(spatial.maps, before["spatial_maps"])
        assert torch.equal(spatial.explanations, before["spatial_explanations"])


def test_fast_preset_spends_fewer_evaluations_and_keeps_the_class(one_thread):
    before = torch.load(FIXTURE, weights_only=True)
    model, x = SpatialWeights(), before["images"]
    with torch.no_grad():
        paper, fast = (rex.ReX(preset=p, seed=3).explain(model, x) for p in ("paper", "fast"))
        kept = model(torch.where(fast.explanations[:, 0, None], x, torch.zeros(())))
    assert (fast.model_evaluated < paper.model_evaluated).all()
    assert torch.equal(kept.argmax(1), fast.target) and fast.found.all()


def _refuse_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the options were checked")


@pytest.mark.parametrize("option, message", [
    ("rex.n_partition=5", "did you mean 'n_partitions'"),
    ("rex.preset=fastest", "unknown ReX preset 'fastest'; known: paper, fast"),
    ("rex.n_partitions=0", "n_partitions must be a positive int or 'auto'"),
    ("rx.seed=1", "--option rx.* names no method"),
])
def test_bad_options_fail_before_any_model_loads(option, message, monkeypatch, tmp_path):
    monkeypatch.setattr(explain, "load_models", _refuse_loading)
    with pytest.raises(SystemExit, match=message.replace("*", r"\*")):
        explain.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--images", str(tmp_path / "missing.png"),
                      "--method", "rex", "--option", option])


def test_help_lists_the_chosen_methods_options(capsys):
    with pytest.raises(SystemExit):
        explain.main(["--method", "rex,rise", "--help"])
    out = capsys.readouterr().out
    assert "options of rex (--option rex.NAME=VALUE):" in out and "options of rise" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("preset "))
    assert "default 'fast'" in line and "paper" in line
    assert "options of occlusion" not in out
