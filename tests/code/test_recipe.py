"""The recipe a run trains, decided in one place (`resolve_recipe`) from params and the run's GPU answer,
which is injected (no torch mocking); and the candidate-block rules that refuse a key the model ignores."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from fashionrec.core.config import load_params
from fashionrec.core.errors import ParamsError, TrainingError
from fashionrec.core.settings import CandidateBlock, check
from fashionrec.train.recipe import resolve_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train() -> dict:
    return load_params(ROOT / "params.yaml").section("train")


def test_auto_takes_the_cuda_recipe_only_where_cuda_is_present(train: dict) -> None:
    gpu, cpu = resolve_recipe(train, cuda_available=True), resolve_recipe(train, cuda_available=False)
    assert gpu.name == "cuda" and gpu.candidates == tuple(train["recipes"]["cuda"])
    assert cpu.name == "cpu" and cpu.candidates == tuple(train["recipes"]["cpu"])
    assert "efficientnet_lite0_gpu" in gpu.candidates and "efficientnet_lite0_gpu" not in cpu.candidates
    assert "efficientnet_lite2_gpu" in gpu.candidates and not gpu.explicit
    assert gpu.reason == "auto: CUDA present" and cpu.reason == "auto: no CUDA"


@pytest.mark.parametrize("cuda_available", [True, False])
def test_params_force_a_recipe_whatever_the_device(train: dict, cuda_available: bool) -> None:
    for forced in ("cpu", "cuda"):
        recipe = resolve_recipe({**train, "recipe": forced}, cuda_available=cuda_available)
        assert recipe.name == forced and recipe.candidates == tuple(train["recipes"][forced])
        assert recipe.reason == f"train.recipe: {forced}"
    # train.device cpu|cuda answers for auto (a CPU run on a GPU machine trains the cpu recipe)
    assert resolve_recipe({**train, "device": "cpu"}, cuda_available=True).name == "cpu"
    assert resolve_recipe({**train, "device": "cuda"}, cuda_available=False).name == "cuda"


def test_an_explicit_candidate_list_replaces_the_recipe(train: dict) -> None:
    recipe = resolve_recipe({**train, "candidates": ["pixels"]}, cuda_available=True)
    assert recipe.candidates == ("pixels",) and recipe.explicit and recipe.name == "cuda"


def test_without_recipes_every_model_trains_and_unknown_names_are_refused(train: dict) -> None:
    plain = {"models": train["models"]}
    assert resolve_recipe(plain, cuda_available=False).candidates == tuple(train["models"])
    with pytest.raises(TrainingError, match=r"train.recipes.cuda: \['nope'\] have no block"):
        resolve_recipe({**train, "recipes": {"cuda": ["nope"]}}, cuda_available=True)
    with pytest.raises(TrainingError, match="train.recipes: no 'cpu' recipe"):
        resolve_recipe({**train, "recipes": {"cuda": ["pixels"]}}, cuda_available=False)


def test_a_force_through_the_cli_overrides_reaches_the_resolution() -> None:
    params = load_params(ROOT / "params.yaml", ["train.recipe=cuda"])
    assert resolve_recipe(params.section("train"), cuda_available=False).name == "cuda"


GPU_BLOCK = {"arch": "efficientnet", "variant": "lite0", "mode": "full", "embedding_dim": 256}


@pytest.mark.parametrize(("block", "says"), [
    (GPU_BLOCK, "embedding_dim is set without embedding"),
    ({**GPU_BLOCK, "embedding": "centered", "trainable_blocks": 5},
     "trainable_blocks is set but mode is 'full'"),
    ({**GPU_BLOCK, "embedding": "centered", "views": ["center"]}, "views is set but mode is 'full'"),
    ({"arch": "efficientnet", "cosine_scale": 8.0}, "cosine_scale is set but head is 'linear'"),
    ({"arch": "simple_cnn", "schedule": "onecycle", "warmup_epochs": 1}, "warmup_epochs is set"),
    ({"arch": "simple_cnn", "metric_loss": "supcon"},
     "metric_loss .supcon. with metric_weight 0.0: a metric loss needs"),
    ({"arch": "simple_cnn", "metric_loss": "supcon", "metric_weight": 0.2, "margin": 0.3},
     "margin is set but metric_loss is 'supcon'"),
])
def test_a_block_setting_a_key_its_model_ignores_is_refused(block: dict, says: str) -> None:
    with pytest.raises(ParamsError, match=f"params: train.models.c: {says}"):
        check(CandidateBlock, block, prefix="train.models.c")


def test_the_project_blocks_say_what_they_use(train: dict) -> None:
    for name, block in train["models"].items():
        check(CandidateBlock, block, prefix=f"train.models.{name}")
    for name in ("efficientnet_lite0_gpu", "efficientnet_lite2_gpu"):
        assert train["models"][name]["embedding"] == "centered" and train["models"][name]["mode"] == "full"
    assert train["models"]["efficientnet_lite2_gpu"]["variant"] == "lite2"


# --- the CLI: `fashionrec recipe` (DVC's list) and `fashionrec train` (refuses outside the recipe) --------


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from fashionrec.cli import main

    monkeypatch.setattr(sys, "argv", ["fashionrec", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recipe_writes_the_list_and_check_refuses_a_stale_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    record = tmp_path / "models" / "recipe.yaml"
    code, out, _ = cli(monkeypatch, capsys, "recipe", "-p", str(params), "-s", "train.device=cpu")
    assert code == 0 and json.loads(out)["changed"] is True
    cpu = yaml.safe_load(record.read_text())["recipe"]
    recipes = yaml.safe_load(params.read_text())["train"]["recipes"]
    assert cpu["name"] == "cpu" and cpu["candidates"] == recipes["cpu"]
    # the same answer again: current, --check passes and writes one file per candidate for DVC's deps
    code, _, _ = cli(monkeypatch, capsys, "recipe", "-p", str(params), "-s", "train.device=cpu", "--check",
                     "--out", str(tmp_path / "reports" / "recipe"))
    assert code == 0
    assert json.loads((tmp_path / "reports/recipe/efficientnet_lite0.json").read_text()) == {
        "candidate": "efficientnet_lite0", "recipe": "cpu"}
    # a GPU machine (here: forced) with the CPU-made file: --check rewrites it and fails
    code, _, err = cli(monkeypatch, capsys, "recipe", "-p", str(params), "-s", "train.recipe=cuda", "--check")
    assert code == 1 and "models/recipe.yaml was stale" in err and "run `dvc repro` again" in err
    assert yaml.safe_load(record.read_text())["recipe"]["name"] == "cuda"


def test_train_refuses_a_candidate_outside_the_recipe(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(monkeypatch, capsys, "train", "efficientnet_lite0_gpu",
                       "-p", str(ROOT / "params.yaml"), "--device", "cpu")
    assert code == 1
    assert err.startswith("error: train efficientnet_lite0_gpu: not in the cpu recipe (train.device: cpu)")
    assert "--set train.recipe=<cpu|cuda>" in err and "\n" not in err.strip()
