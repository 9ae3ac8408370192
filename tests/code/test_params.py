"""The typed params layer: a bad value in any section is one line naming its dotted key, refused before any
work starts, in-process, through the CLI and through `dvc repro`; params.yaml itself is clean."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fashionrec.core import settings
from fashionrec.core.config import Params, load_params, set_dotted
from fashionrec.core.errors import ParamsError
from fashionrec.core.settings import (
    BallTreeParams,
    BruteParams,
    DeployerSection,
    EvaluateIndex,
    ExportSection,
    HnswParams,
    IndexSection,
    InstanceSection,
    MilvusParams,
    RegisterSection,
    ServeSection,
)
from fashionrec.deploy.config import DeployConfig, DeployerConfig
from fashionrec.evaluate.instance import Augmentation
from fashionrec.index import AUTO_EXACT_MAX
from fashionrec.index.balltree import BallTreeIndex
from fashionrec.index.brute import BruteIndex
from fashionrec.index.hnsw import HnswIndex
from fashionrec.index.milvus import MilvusSettings
from fashionrec.kfp.io import component_params
from fashionrec.runtime.metadata import MIN_OPSET
from fashionrec.runtime.session import DEFAULT_PROVIDERS
from fashionrec.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]

# (override, dotted key named, what the line says): at least one per section the code reads.
BAD = [
    ("serve.compute_thread=4", "serve.compute_thread", "unknown key"),
    ("serve.compute_threads=2.7", "serve.compute_threads", "expected an integer, got 2.7"),
    ("serve.intra_op_spinning='false'", "serve.intra_op_spinning", "expected true or false"),
    ("serve.max_k=0", "serve.max_k", "expected a value >= 1"),
    ("index.activate='false'", "index.activate", "expected true or false"),
    ("index.kind=annoy", "index.kind", "expected one of"),
    ("index.hnsw.M=0", "index.hnsw.M", "expected a value >= 1"),
    ("index.balltree.leaf_sz=3", "index.balltree.leaf_sz", "unknown key"),
    ("index.milvus.timeout_s=0", "index.milvus.timeout_s", "expected a value > 0"),
    ("deployer.port=abc", "deployer.port", "expected an integer"),
    ("deployer.port=70000", "deployer.port", "expected a value <= 65535"),
    ("train.device=tpu", "train.device", "expected one of"),
    ("train.candidates=[]", "train.candidates", "expected at least 1 item"),
    ("train.recipe=tpu", "train.recipe", "expected one of"),
    ("train.recipes.cuda=[pixels, nope]", "train.recipes.cuda", "['nope'] have no block in train.models"),
    ("train.models.efficientnet_lite0_gpu.trainable_blocks=3", "train.models.efficientnet_lite0_gpu",
     "trainable_blocks is set but mode is 'full'"),
    ("train.models.efficientnet_lite0.crop_scale=[0.5, 1.0]", "train.models.efficientnet_lite0",
     "crop_scale is set but mode is 'finetune'"),
    ("train.models.simple_cnn.metric_weight=0.2", "train.models.simple_cnn",
     "metric_loss 'none' with metric_weight 0.2"),
    ("train.models.pixels.arch=vit", "train.models.pixels.arch", "expected one of"),
    ("evaluate.flip_tta=1", "evaluate.flip_tta", "expected true or false"),
    ("evaluate.instance.crop_scale=[0.35, '1']", "evaluate.instance.crop_scale.1", "expected a number"),
    ("select.max_regression=-0.1", "select.max_regression", "expected a value >= 0"),
    ("select.thresholds.test.micro_f1=high", "select.thresholds.test", "expected a number"),
    ("export.parity.top_k=2.5", "export.parity.top_k", "expected an integer"),
    ("export.quantize.enabled=yes_please", "export.quantize.enabled", "expected true or false"),
    ("register.promotion=sometimes", "register.promotion", "expected one of"),
    ("kfp.training_parallelism=0", "kfp.training_parallelism", "expected a value >= 1"),
    ("kfp.retry.num_retries='3'", "kfp.retry.num_retries", "expected an integer"),
    ("images.max_serve_mb=-1", "images.max_serve_mb", "expected a value >= 1"),
    ("images.build=[gui]", "images.build.0", "expected one of"),
    ("k8s.version=1.34", "k8s.version", "expected a string"),
    ("ingest.out=3", "ingest.out", "expected a string"),
    ("subset.subsets.catalog.split.shares.train=1.5", "subset.subsets.catalog.split.shares.train",
     "expected a value <= 1"),
    ("validate.on_bad_file=ignore", "validate.on_bad_file", "expected one of"),
    ("validate.chunk_size=0", "validate.chunk_size", "expected a value >= 1"),
    ("subset.shard_size=2.5", "subset.shard_size", "expected an integer"),
    ("synth.size=4", "synth.size", "expected a value >= 8"),
    ("describe.thumb_size=0", "describe.thumb_size", "expected a value >= 1"),
    ("label_review.folds=1", "label_review.folds", "expected a value >= 2"),
    ("label_review.features=pixels", "label_review.features", "expected one of"),
    ("subset.subsets.catalog.label_review=3", "subset.subsets.catalog.label_review", "expected a string"),
    ("intake.push='true'", "intake.push", "expected true or false"),
    ("mlflow.experiment=7", "mlflow.experiment", "expected a string"),
    ("seed=4.2", "seed", "expected an integer"),
    ("sevre.port=1", "sevre", "unknown key"),
]


def one_line(message: str, key: str, expected: str) -> None:
    assert "\n" not in message.strip(), message
    assert f"params: {key}: " in message, message
    assert expected in message, message


def test_params_yaml_is_clean_and_keeps_every_value() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.tree == yaml.safe_load((ROOT / "params.yaml").read_text())   # checked, never rewritten


@pytest.mark.parametrize(("override", "key", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_naming_the_key(override: str, key: str, expected: str) -> None:
    with pytest.raises(ParamsError) as exc:
        load_params(ROOT / "params.yaml", [override])
    one_line(str(exc.value), key, expected)


def test_every_section_has_a_bad_case() -> None:
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    covered = {override.split("=")[0].split(".")[0] for override, _, _ in BAD}
    assert sections <= covered, sorted(sections - covered)


def test_an_omitted_key_takes_the_section_default() -> None:
    params = Params(tree={"export": {"opset": 18}, "train": {"models": {}}}, root=ROOT)
    export = params.section("export")
    assert export["opset"] == 18 and export["manifest"] == ExportSection().manifest
    assert export["parity"] == ExportSection().parity.model_dump()
    assert params.section("train")["cache_dir"] == ".cache/features"
    assert "benchmark" not in Params(tree={"evaluate": {}}, root=ROOT).section("evaluate")   # null: absent
    with pytest.raises(ParamsError, match="missing section 'serve'"):
        params.section("serve")
    full = load_params(ROOT / "params.yaml")
    assert all(full.section(name) == value for name, value in full.tree.items() if isinstance(value, dict))


def test_ints_are_numbers_and_nulls_where_allowed() -> None:
    params = load_params(ROOT / "params.yaml", ["serve.max_aspect_ratio=20", "index.target_recall=null",
                                                "subset.classes=null", "serve.watch_interval_s=0"])
    assert ServeConfig.from_params(params).max_aspect_ratio == 20.0
    assert DeployConfig.from_params(params).index.target_recall is None


def test_candidate_list_items_are_typed() -> None:
    """`crop_scale: [0.35, "1"]` is refused by name (it crashed inside the range check)."""
    from fashionrec.core.errors import TrainingError
    from fashionrec.train.config import train_config

    with pytest.raises(TrainingError, match=r"^train\.models\.g\.crop_scale: expected a list of float"):
        train_config("g", {"arch": "efficientnet", "crop_scale": [0.35, "1"]})
    assert train_config("g", {"arch": "efficientnet", "crop_scale": [0.35, 1]}).crop_scale == (0.35, 1.0)


def test_configs_built_outside_load_params_are_checked_too() -> None:
    tree = {"serve": {"compute_threads": 2.7}}
    with pytest.raises(ParamsError, match=r"^params: serve\.compute_threads: expected an integer"):
        ServeConfig.from_params(Params(tree=tree, root=ROOT))
    with pytest.raises(ParamsError, match=r"^params: deployer\.port: expected an integer"):
        DeployerConfig.from_params(Params(tree={"deployer": {"port": "8001"}}, root=ROOT))
    with pytest.raises(ParamsError, match=r"^params: index\.activate: expected true or false"):
        DeployConfig.from_params(Params(tree={"index": {"activate": "false"}}, root=ROOT))
    with pytest.raises(ParamsError, match=r"^params: index\.keeep: unknown key"):
        component_params({"index": {"keeep": 3}, "serve": {}})


@pytest.mark.parametrize(("model", "config", "skip"), [
    (ServeSection, ServeConfig, {"admin_token"}),
    (DeployerSection, DeployerConfig, {"registered_model", "alias"}),
    (IndexSection, DeployConfig, {"bundles", "index", "inventory_root", "admin_token_env", "seed",
                                  "tracking_uri", "notify", "summary", "manifest", "catalog",
                                  "embed_missing_shards"}),   # set by the pipeline's assemble step
    (MilvusParams, MilvusSettings, set()),
])
def test_section_defaults_equal_the_config_defaults(model: type, config: type, skip: set[str]) -> None:
    """One set of defaults: the typed section's fields hold the values the config classes fall back to."""
    for f in dataclasses.fields(config):
        if f.name in skip or f.default is dataclasses.MISSING:
            continue
        assert f.name in model.model_fields, f"{model.__name__} lacks {f.name}"
        assert model.model_fields[f.name].default == f.default, f.name


def test_index_and_augmentation_defaults_equal_the_sections() -> None:
    """The index classes and the evaluation's augmentation default what a section leaves unset: the same
    values as the typed sections' fields."""
    for cls, model in ((BallTreeIndex, BallTreeParams), (BruteIndex, BruteParams), (HnswIndex, HnswParams)):
        for name, field in model.model_fields.items():
            assert inspect.signature(cls).parameters[name].default == field.default, (cls.__name__, name)
    assert IndexSection.model_fields["auto_exact_max"].default == AUTO_EXACT_MAX
    assert EvaluateIndex.model_fields["auto_exact_max"].default == AUTO_EXACT_MAX
    for f in dataclasses.fields(Augmentation):
        default = InstanceSection.model_fields[f.name].default
        assert (tuple(default) if isinstance(default, list) else default) == f.default, f.name


def test_export_and_register_defaults_equal_the_runtime_ones() -> None:
    assert ExportSection().providers == list(DEFAULT_PROVIDERS) == RegisterSection().execution_providers
    assert ExportSection().opset == MIN_OPSET


# --- through the CLI (a subprocess, as a user or a DVC stage runs it) ---------------------------------

def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "src"), "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


CLI_CASES = [("describe", b) for b in BAD] + [
    ("serve", ("serve.compute_thread=4", "serve.compute_thread", "unknown key")),
    ("deployer", ("deployer.port=abc", "deployer.port", "expected an integer")),
    ("train pixels", ("train.models.pixels.size=big", "train.models.pixels.size", "")),
]


@pytest.mark.parametrize(("command", "case"), CLI_CASES, ids=[f"{c} {b[0]}" for c, b in CLI_CASES])
def test_cli_prints_one_line_and_no_traceback(command: str, case: tuple[str, str, str],
                                              tmp_path: Path) -> None:
    override, key, expected = case
    proc = subprocess.run(["fashionrec", *command.split(),
                           "-p", str(ROOT / "params.yaml"), "-s", override],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and key in lines[0] and expected in lines[0], lines[0]


# --- through `dvc repro` (the real stage command of dvc.yaml, in a temp project) -----------------------

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("serve.compute_thread", 4, "params: serve.compute_thread: unknown key"),
    ("index.activate", "false", "params: index.activate: expected true or false"),
])
def test_dvc_repro_stage_fails_with_the_one_line(key: str, value: object, expected: str,
                                                 tmp_path: Path) -> None:
    repo = tmp_path / "project"
    (repo / "data" / "additions").mkdir(parents=True)
    (repo / "data" / "additions" / "README").write_text("no new photos\n")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": stages["ingest"]}}, sort_keys=False))
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    run_env = {**env(), "PYTHONPATH": str(repo / "src")}   # the stage's `fashionrec` runs this copy
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo, env=run_env, check=True, timeout=300)
    proc = subprocess.run(["dvc", "repro", "ingest"], cwd=repo, env=run_env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    named = [line for line in out.splitlines() if expected in line]
    assert len(named) == 1 and named[0].startswith("error: params: "), out
    assert not (repo / "data" / "manifest").exists()   # refused before any work


def test_kfp_task_reports_one_line(tmp_path: Path) -> None:
    """A component's process (KFP's executor loaded) ends on a bad section with the one line, exit 1."""
    code = ("import kfp.dsl.executor_main\n"
            "from fashionrec.kfp.io import component_params\n"
            "component_params({'serve': {'compute_threads': 2.7}}, None)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: params: serve.compute_threads: expected an integer, got 2.7"


READERS = ("cli.py", "core/tracking.py", "data/describe.py", "data/ingest.py", "data/intake.py",
           "data/subset.py", "data/validate.py", "deploy/config.py", "evaluate/evaluate.py", "kfp/client.py",
           "registry/export.py", "registry/gate.py", "registry/steps.py", "runtime/quantize.py",
           "serve/config.py", "train/label_issues.py")   # the modules reading params sections


def section_defaults() -> dict[str, list[object]]:
    """{field name: its defaults in every section model that has it}."""
    found: dict[str, list[object]] = {}
    for model in vars(settings).values():
        if isinstance(model, type) and issubclass(model, settings.Section) and model is not settings.Section:
            for name, field in model.model_fields.items():
                if not field.is_required():
                    found.setdefault(field.alias or name, []).append(
                        field.get_default(call_default_factory=True))
    return found


def test_readers_fall_back_to_the_section_defaults() -> None:
    """A reader's `.get("key", literal)` fallback (a key params.yaml may omit) is the typed section's
    default, so the defaults stay one set: a literal that differs from every section's default fails."""
    defaults = section_defaults()
    stray = []
    for path in sorted(ROOT / "src" / "fashionrec" / name for name in READERS):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and len(node.args) == 2
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in defaults):
                try:
                    literal = ast.literal_eval(node.args[1])
                except ValueError:
                    continue   # a named constant (DEFAULT_SEED, ...)
                if literal not in defaults[node.args[0].value] and literal not in ({}, None):
                    stray.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.args[0].value}={literal!r}")
    assert not stray, stray


def test_image_build_reports_one_line(tmp_path: Path) -> None:
    """`make images` (deploy/build_images.py) reads the images section through the same check."""
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, "images.max_serve_mb", "400")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "build_images.py"), "--params",
                           str(tmp_path / "params.yaml")], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == "error: params: images.max_serve_mb: expected an integer, got '400'"
