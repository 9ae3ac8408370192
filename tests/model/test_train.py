"""The train stage on the tiny dataset: every candidate really trains, logs to a real MLflow server,
saves a model that `load_model` rebuilds, resumes exactly, and refuses bad configs clearly."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from fashionrec.core.errors import TrainingError
from fashionrec.data.manifest import read_dataset, read_manifest
from fashionrec.models.factory import build_model
from fashionrec.models.store import load_model
from fashionrec.train.loop import train
from fashionrec.train.report import COLUMNS

TINY = {
    "pixels": {"size": 16},
    "simple_cnn": {"epochs": 1, "size": 32, "batch_size": 8},
    "efficientnet_lite0": {"epochs": 1, "size": 64, "batch_size": 8},
}


def section_for(project, candidate: str, **changes) -> dict:
    s = project.params.section("train")
    s["models"][candidate].update({**TINY.get(candidate, {}), **changes})
    return s


def run(project, root: Path, candidate: str, section: dict, **kwargs):
    return train(candidate, section, manifest=project.validated / "manifest.parquet",
                 out_dir=root / "models" / candidate, cache_dir=root / ".cache" / "features",
                 checkpoint_dir=root / ".cache" / "checkpoints" / candidate,
                 tracking_params=project.params, seed=0, **kwargs)


def val_batch(project, model, n: int = 3) -> torch.Tensor:
    df = read_manifest(project.validated)
    paths = list(df[df["split"] == "validation"]["abspath"])[:n]
    from fashionrec.data.images import open_image

    return torch.from_numpy(np.stack([model.card.prep(open_image(p)) for p in paths]))


@pytest.mark.parametrize("candidate", ["pixels", "simple_cnn", "efficientnet_lite0"])
def test_candidate_trains_saves_and_logs_its_run(tiny_validated, mlflow_server: str, tmp_path: Path,
                                                 candidate: str) -> None:
    result = run(tiny_validated, tmp_path, candidate, section_for(tiny_validated, candidate))
    out = tmp_path / "models" / candidate
    for name in ("model.pt", "card.json", "history.csv", "loss_curve.png", "mlflow.json"):
        assert (out / name).is_file(), name

    model = load_model(out)
    info = read_dataset(tiny_validated.validated)
    assert model.card.labels == info["labels"] and model.card.classes == info["classes"]
    with torch.no_grad():
        emb, logits = model(val_batch(tiny_validated, model))
    assert emb.shape == (3, model.card.embedding_dim)
    assert logits.shape == (3, len(info["labels"]))
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)

    with (out / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    thresholds = [f"val_threshold.{a}" for a in model.card.thresholds]   # the project's lite0 carries kids'
    assert list(rows[0]) == COLUMNS + thresholds
    assert all(float(rows[-1][c]) == model.card.thresholds[c.split(".", 1)[1]] for c in thresholds)
    assert len(rows) == (1 if candidate == "pixels" else TINY[candidate]["epochs"])
    assert float(rows[-1]["val_micro_f1"]) == pytest.approx(result.val_micro_f1)

    ref = json.loads((out / "mlflow.json").read_text())
    assert ref["run_id"] == result.run_id and ref["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    mlrun = client.get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    manifest_hash = hashlib.sha256((tiny_validated.validated / "manifest.parquet").read_bytes()).hexdigest()
    assert mlrun.data.tags["data_version"] == "sha256:" + manifest_hash[:16]  # no dvc.lock here
    assert len(mlrun.data.tags["git_commit"]) in (40, len("unknown"))
    assert mlrun.data.tags["candidate"] == candidate
    tags = mlrun.data.tags   # where and how it trained: the recipe of its device, the device, the versions
    on_gpu = result.device == "cuda"
    assert tags["device"] == result.device and tags["recipe"] == ("cuda" if on_gpu else "cpu")
    assert tags["torch_version"] == torch.__version__
    assert tags["cuda_version"] == str(torch.version.cuda or "none")
    assert tags["device_name"] == (torch.cuda.get_device_name() if on_gpu else "cpu")
    assert mlrun.data.params["arch"] == model.card.arch
    assert mlrun.data.metrics["best_val_micro_f1"] == pytest.approx(result.val_micro_f1)
    assert 0.0 <= mlrun.data.metrics["val_accuracy"] <= 1.0
    if candidate != "pixels":
        steps = [m.step for m in client.get_metric_history(result.run_id, "train_loss")]
        assert steps == list(range(1, TINY[candidate]["epochs"] + 1))
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "model")}
    assert {"model/model.pt", "model/card.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/loss_curve.png"]


def test_a_forced_recipe_is_the_runs_tag(tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """train.recipe forces the recipe whatever the device; the run says so (and why) in its tags."""
    section = {**section_for(tiny_validated, "pixels"), "recipe": "cuda", "device": "cpu"}
    result = run(tiny_validated, tmp_path, "pixels", section)
    tags = MlflowClient(tracking_uri=mlflow_server).get_run(result.run_id).data.tags
    assert (tags["recipe"], tags["recipe_reason"], tags["device"]) == ("cuda", "train.recipe: cuda", "cpu")


def test_simple_cnn_learns_the_tiny_classes(tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """A few epochs on four colour/shape classes must beat chance (0.25) by far: training really trains."""
    result = run(tiny_validated, tmp_path, "simple_cnn",
                 section_for(tiny_validated, "simple_cnn", epochs=8, lr=0.003, patience=8))
    assert result.val_accuracy >= 0.75, result


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_efficientnet_trains_only_what_its_mode_says(tiny_validated, mlflow_server: str, tmp_path: Path,
                                                     mode: str) -> None:
    section = section_for(tiny_validated, "efficientnet_lite0", mode=mode, lr=0.01)
    result = run(tiny_validated, tmp_path, "efficientnet_lite0", section)
    trained = load_model(tmp_path / "models" / "efficientnet_lite0")
    pretrained = build_model(trained.card, pretrained=True).state_dict()
    state = trained.state_dict()
    split = len(trained.blocks) if mode == "frozen" else len(trained.blocks) - trained.cfg.trainable_blocks
    front = ("stem.", *(f"blocks.{i}." for i in range(split)))
    frozen = [k for k in state if k.startswith(front)]
    tail = [k for k in state if k.startswith(f"blocks.{split}.") or k.startswith("head_conv.0.weight")]
    assert frozen and all(torch.equal(state[k], pretrained[k]) for k in frozen)
    assert all(torch.equal(state[k], pretrained[k]) for k in tail) == (mode == "frozen")
    assert result.epochs_run == 1


def test_gpu_config_runs_one_step_on_cpu(tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """The GPU candidate (every block trains on raw augmented images) works end to end on a CPU."""
    section = tiny_validated.params.section("train")
    section["models"]["efficientnet_lite0_gpu"].update(epochs=1, max_steps_per_epoch=1, batch_size=4,
                                                       num_workers=0)
    section["device"] = "cpu"
    result = run(tiny_validated, tmp_path, "efficientnet_lite0_gpu", section)
    trained = _state(tmp_path / "models" / "efficientnet_lite0_gpu")
    pretrained = build_model(load_model(tmp_path / "models" / "efficientnet_lite0_gpu").card,
                             pretrained=True).state_dict()
    assert not torch.equal(trained["stem.0.weight"], pretrained["stem.0.weight"])  # the stem trained too
    assert result.device == "cpu" and result.epochs_run == 1


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("candidate", ["simple_cnn", "efficientnet_lite0"])
def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_validated, mlflow_server: str,
                                                               tmp_path: Path, candidate: str) -> None:
    section = section_for(tiny_validated, candidate, epochs=3, patience=5)
    whole = run(tiny_validated, tmp_path / "whole", candidate, section)

    def stop_after_first(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny_validated, tmp_path / "split", candidate, section, on_epoch_end=stop_after_first)
    assert not (tmp_path / "split" / "models" / candidate / "model.pt").exists()
    client = MlflowClient(tracking_uri=mlflow_server)
    last = tmp_path / "split" / ".cache" / "checkpoints" / candidate / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 1
    assert client.get_run(ckpt["run_id"]).info.status == "KILLED"

    resumed = run(tiny_validated, tmp_path / "split", candidate, section, resume=True)
    assert resumed.resumed_from_epoch == 1 and resumed.run_id == ckpt["run_id"]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    a = _state(tmp_path / "whole" / "models" / candidate)
    b = _state(tmp_path / "split" / "models" / candidate)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    ha = (tmp_path / "whole" / "models" / candidate / "history.csv").read_text()
    hb = (tmp_path / "split" / "models" / candidate / "history.csv").read_text()
    assert ha == hb
    assert (whole.best_epoch, whole.val_micro_f1) == (resumed.best_epoch, resumed.val_micro_f1)
    losses = client.get_metric_history(resumed.run_id, "train_loss")
    assert sorted({m.step for m in losses}) == [1, 2, 3]


@pytest.mark.parametrize("candidate", ["simple_cnn", "efficientnet_lite0"])
def test_channels_last_trains_the_same_model_and_saves_it_contiguous(tiny_validated, mlflow_server: str,
                                                                     tmp_path: Path, candidate: str) -> None:
    """The weights' layout while training is a speed choice: the same steps give the same losses and
    weights up to the summation order (which Adam's normalised steps amplify to about lr per step), and
    what is saved (then exported) is the ordinary contiguous layout."""
    for fmt in ("contiguous", "channels_last"):
        run(tiny_validated, tmp_path / fmt, candidate,
            section_for(tiny_validated, candidate, epochs=2, patience=5, memory_format=fmt))
    a = _state(tmp_path / "contiguous" / "models" / candidate)
    b = _state(tmp_path / "channels_last" / "models" / candidate)
    assert a.keys() == b.keys()
    assert all(t.is_contiguous() for t in b.values()), "a channels_last tensor was saved"
    convs = [k for k in a if a[k].ndim == 4]
    assert convs, "no convolution weights to compare"
    for k in convs:
        torch.testing.assert_close(b[k], a[k], rtol=0.0, atol=0.02, msg=lambda m, k=k: f"{k}: {m}")
    ha, hb = (pd.read_csv(tmp_path / fmt / "models" / candidate / "history.csv")
              for fmt in ("contiguous", "channels_last"))
    assert list(ha["epoch"]) == list(hb["epoch"]) == [1, 2]
    for col in ("train_loss", "val_loss"):
        np.testing.assert_allclose(hb[col], ha[col], rtol=5e-3, err_msg=col)


def test_resume_refuses_a_changed_config_or_a_missing_checkpoint(tiny_validated, mlflow_server: str,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no checkpoint"):
        run(tiny_validated, tmp_path, "simple_cnn", section_for(tiny_validated, "simple_cnn"), resume=True)
    run(tiny_validated, tmp_path, "simple_cnn", section_for(tiny_validated, "simple_cnn"))
    with pytest.raises(TrainingError, match="different config"):
        run(tiny_validated, tmp_path, "simple_cnn", section_for(tiny_validated, "simple_cnn", lr=0.5),
            resume=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({"lrr": 0.1}, r"train\.models\.simple_cnn: unknown key\(s\) \['lrr'\]"),
    ({"epochs": "ten"}, r"train\.models\.simple_cnn\.epochs: expected int"),
    ({"lr": -1.0}, r"train\.models\.simple_cnn\.lr: -1\.0 must be positive"),
    ({"size": 30}, r"train\.models\.simple_cnn\.size: 30 must be a multiple of 4"),
    ({"arch": "resnet"}, r"train\.models\.simple_cnn\.arch: 'resnet' is not one of"),
    ({"metric_loss": "arcface"}, r"metric_loss: 'arcface' is not one of"),
    ({"memory_format": "nhwc"}, r"train\.models\.simple_cnn\.memory_format: 'nhwc' is not one of"),
])
def test_bad_config_is_refused_naming_the_key(tiny_validated, tmp_path: Path, changes: dict,
                                              message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        run(tiny_validated, tmp_path, "simple_cnn", section_for(tiny_validated, "simple_cnn", **changes))
    assert not (tmp_path / "models").exists()


def test_cli_reports_an_unknown_candidate_in_one_line(tiny_validated, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    from fashionrec.cli import main

    monkeypatch.setattr(sys, "argv", ["fashionrec", "train", "nosuch", "-p",
                                      str(tiny_validated.root / "params.yaml")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.models: no candidate 'nosuch'") and "\n" not in err


def test_final_fit_trains_on_validation_for_the_set_epochs_and_says_validation_is_not_held_out(
        tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """fit_on train+validation: the validation photos train too, every epoch runs (no early stopping even
    with patience 1), the last weights are saved, and the card and the MLflow run say the validation
    scores are not held out."""
    section = section_for(tiny_validated, "simple_cnn", epochs=3, patience=1, fit_on="train+validation",
                          epochs_source="best epoch of a held-out run")
    result = run(tiny_validated, tmp_path, "simple_cnn", section)
    assert result.epochs_run == 3 and result.best_epoch == 3 and not result.stopped_early
    card = json.loads((tmp_path / "models" / "simple_cnn" / "card.json").read_text())
    assert card["extra"]["fit_on"] == "train+validation" and card["extra"]["validation_held_out"] is False
    assert card["extra"]["epochs_source"] == "best epoch of a held-out run"
    saved = load_model(tmp_path / "models" / "simple_cnn").state_dict()
    last = torch.load(tmp_path / ".cache" / "checkpoints" / "simple_cnn" / "last.pt", weights_only=False)
    assert all(torch.equal(saved[k], v) for k, v in last["model"].items())

    df = read_manifest(tiny_validated.validated)
    mlrun = MlflowClient(tracking_uri=mlflow_server).get_run(result.run_id)
    assert mlrun.data.tags["validation_held_out"] == "false"
    assert mlrun.data.tags["fit_on"] == "train+validation"
    assert int(mlrun.data.params["n_train"]) == int(df["split"].isin(["train", "validation"]).sum())

    held_out = run(tiny_validated, tmp_path / "plain", "simple_cnn",
                   section_for(tiny_validated, "simple_cnn"))
    plain = MlflowClient(tracking_uri=mlflow_server).get_run(held_out.run_id)
    assert plain.data.tags["validation_held_out"] == "true"
    assert int(plain.data.params["n_train"]) == int((df["split"] == "train").sum())


def test_prevalence_threshold_is_chosen_per_epoch_and_a_final_fit_carries_it(
        tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """attribute_threshold prevalence (a held-out run): the kept weights decide kids for the share of the
    validation photos that train has kids, history.csv records each epoch's threshold, and a final fit
    stores the carried one (a held-out run's epoch) as given, saying where it came from. A final fit
    cannot choose on the photos it trains on, nor carry a threshold for a label that is no attribute."""
    manifest = tiny_validated.catalog_validated / "manifest.parquet"

    def fit(name: str, **changes):
        section = section_for(tiny_validated, "simple_cnn", epochs=2, patience=2,
                              attribute_pos_weight="balanced", **changes)
        return train("simple_cnn", section, manifest=manifest, out_dir=tmp_path / name / "simple_cnn",
                     cache_dir=tmp_path / ".cache", checkpoint_dir=tmp_path / ".cache" / name,
                     tracking_params=tiny_validated.params, seed=0)

    held_out = fit("held", attribute_threshold="prevalence")
    model = load_model(tmp_path / "held" / "simple_cnn")
    df = read_manifest(tiny_validated.catalog_validated)
    train_share = df.loc[df["split"] == "train", "kids"].astype(bool).mean()
    val = df[df["split"] == "validation"]
    from fashionrec.data.images import open_image

    batch = torch.from_numpy(np.stack([model.card.prep(open_image(p)) for p in val["abspath"]]))
    model.eval()
    with torch.no_grad():
        _, logits = model(batch)
    kids = torch.sigmoid(logits[:, model.card.labels.index("kids")]).numpy()
    decided = int((kids >= model.card.thresholds["kids"]).sum())
    assert decided == max(1, round(train_share * len(val)))
    assert model.card.extra["thresholds_from"] == "validation (prevalence)"
    history = pd.read_csv(tmp_path / "held" / "simple_cnn" / "history.csv").set_index("epoch")
    assert list(history.columns)[-1] == "val_threshold.kids" and len(history) == 2
    assert history.loc[held_out.best_epoch, "val_threshold.kids"] == pytest.approx(
        model.card.thresholds["kids"], abs=1e-6)

    carried = float(history.loc[2, "val_threshold.kids"])
    fit("final", fit_on="train+validation", epochs_source="2: the held-out run",
        attribute_threshold="carried", carried_thresholds={"kids": carried},
        thresholds_source="epoch 2 of the held-out run")
    final = load_model(tmp_path / "final" / "simple_cnn")
    assert final.card.thresholds == {"kids": carried}
    assert final.card.extra["thresholds_from"] == "carried: epoch 2 of the held-out run"

    for rule in ("validation", "prevalence"):
        with pytest.raises(TrainingError, match=r"simple_cnn\.attribute_threshold: .* chooses on photos"):
            fit("refused", fit_on="train+validation", epochs_source="2", attribute_threshold=rule)
    with pytest.raises(TrainingError, match=r"simple_cnn\.carried_thresholds: \['teens'\] are not attr"):
        fit("refused", attribute_threshold="carried", carried_thresholds={"teens": 0.8},
            thresholds_source="a run")
    assert not (tmp_path / "refused").exists()


def test_resuming_a_checkpoint_without_recorded_thresholds_chooses_them_on_the_kept_weights(
        tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """A checkpoint written before history recorded `val_threshold.*` (older code) still yields the
    kept weights' thresholds on --resume: the same as an uninterrupted run's, never none."""
    manifest = tiny_validated.catalog_validated / "manifest.parquet"
    section = section_for(tiny_validated, "simple_cnn", epochs=1, patience=2,
                          attribute_pos_weight="balanced", attribute_threshold="prevalence")

    def fit(name: str, **kwargs):
        return train("simple_cnn", section, manifest=manifest, out_dir=tmp_path / name / "simple_cnn",
                     cache_dir=tmp_path / ".cache", checkpoint_dir=tmp_path / ".cache" / name,
                     tracking_params=tiny_validated.params, seed=0, **kwargs)

    fit("whole")

    def interrupt(epoch: int, record: dict) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        fit("old", on_epoch_end=interrupt)
    last = tmp_path / ".cache" / "old" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert any(k.startswith("val_threshold.") for k in ckpt["history"][0])
    ckpt["history"] = [{k: v for k, v in row.items() if not k.startswith("val_threshold.")}
                       for row in ckpt["history"]]
    torch.save(ckpt, last)
    fit("old", resume=True)
    whole, resumed = (load_model(tmp_path / name / "simple_cnn") for name in ("whole", "old"))
    assert set(resumed.card.thresholds) == {"kids"}
    assert resumed.card.thresholds["kids"] == pytest.approx(whole.card.thresholds["kids"], abs=1e-6)


def test_kids_head_gets_a_positive_weight_a_validation_threshold_and_a_group_weight(
        tiny_validated, mlflow_server: str, tmp_path: Path) -> None:
    """On the catalog (kids included): the threshold chosen on validation is stored with the model and
    evaluate decides the kids label with it; a group weight naming no attribute is refused, naming the key."""
    from fashionrec.evaluate.evaluate import evaluate

    section = section_for(tiny_validated, "simple_cnn", epochs=2, attribute_pos_weight="balanced",
                          attribute_threshold="validation", group_weights={"kids": 3.0})
    manifest = tiny_validated.catalog_validated / "manifest.parquet"
    result = train("simple_cnn", section, manifest=manifest, out_dir=tmp_path / "models" / "simple_cnn",
                   cache_dir=tmp_path / ".cache", checkpoint_dir=tmp_path / ".cache" / "ck",
                   tracking_params=tiny_validated.params, seed=0)
    model = load_model(tmp_path / "models" / "simple_cnn")
    assert set(model.card.thresholds) == {"kids"} and 0.0 < model.card.thresholds["kids"] < 1.0
    assert model.card.extra["thresholds_from"] == "validation"
    params = MlflowClient(tracking_uri=mlflow_server).get_run(result.run_id).data.params
    assert params["group_weights.kids"] == "3.0" and params["attribute_pos_weight"] == "balanced"

    evaluate_section = tiny_validated.params.section("evaluate")
    evaluate_section.update({"instance": {**evaluate_section["instance"], "n_queries": 24},
                             "latency_queries": 20, "mlflow": False, "benchmark": None})
    evaluate(tmp_path / "models" / "simple_cnn", tiny_validated.catalog_validated, tmp_path / "m.json",
             tmp_path / "reports", evaluate_section, progress=False)
    per_class = pd.read_csv(tmp_path / "reports" / "per_class.csv").set_index("label")
    assert per_class.loc["kids", "decision"] == f"sigmoid>={model.card.thresholds['kids']:.4g}"

    with pytest.raises(TrainingError, match=r"simple_cnn\.group_weights: \['teens'\] are not attributes"):
        train("simple_cnn", section_for(tiny_validated, "simple_cnn", group_weights={"teens": 2.0}),
              manifest=manifest, out_dir=tmp_path / "bad", cache_dir=tmp_path / ".cache",
              checkpoint_dir=tmp_path / ".cache" / "bad", tracking_params=tiny_validated.params, seed=0)
    assert not (tmp_path / "bad").exists()
