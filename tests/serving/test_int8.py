"""int8 serving: a bundle built with the int8 copy answers with int8 queries, records its precision, and a
bundle whose model did not make its embeddings is refused (never fp32 inventory with int8 queries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fashionrec.bundle.format import MANIFEST, MODEL, SUMS
from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import BundleContent, write_bundle
from fashionrec.core.errors import BundleError, ModelSourceError
from fashionrec.core.files import sha256_file
from fashionrec.data.images import Preprocessing, open_image
from fashionrec.deploy.model import choose_precision, read_preprocessing, resolve_model
from fashionrec.index import build_index
from fashionrec.registry.steps import int8_files
from fashionrec.runtime.embed import OnnxRunner
from fashionrec.runtime.metadata import read_precision
from fashionrec.runtime.quantize import mark_int8
from fashionrec.serve.app import ServeConfig, create_app
from tests.serving.utils import deploy_with, write_params


class _Random:
    """Calibration batches for onnxruntime's quantize_static (the shape is all it needs here)."""

    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{"image": rng.normal(0, 1, (8, 3, size, size)).astype(np.float32)}
                             for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.fixture(scope="module")
def int8_model(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model A quantized to int8 (uint8 activations, int8 weights) and marked as export marks it."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    size = Preprocessing.from_dict(read_preprocessing(assets.model_a)).size
    quantize_static(str(assets.model_a), str(out), _Random(size), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    mark_int8(assets.model_a, out)
    return out


def embed(model: Path, image: Path) -> np.ndarray:
    prep = Preprocessing.from_dict(read_preprocessing(model))
    emb = np.asarray(OnnxRunner(model).session.run(prep(open_image(image))[None])["embedding"], np.float32)
    return emb[0] / np.linalg.norm(emb[0])


def test_int8_bundle_embeds_items_and_queries_with_the_int8_model(assets, int8_model: Path,
                                                                  tmp_path: Path) -> None:
    assert read_precision(int8_model) == "int8" and read_precision(assets.model_a) == "fp32"
    params = write_params(tmp_path, int8_model, assets.catalog, serve__watch_interval_s=0)
    result = deploy_with(params, rebuild=True)
    bundle = load_bundle(Path(result.bundle))
    assert result.precision == bundle.precision == "int8"
    assert bundle.manifest["embeddings"] == {"model_sha256": sha256_file(int8_model), "precision": "int8"}
    assert sha256_file(bundle.model_file) == sha256_file(int8_model)
    image = Path(assets.catalog).parent / "images" / "item005.jpg"
    row = bundle.items["item_id"].index("item005")
    stored = bundle.embeddings[row]
    # the stored vector is the int8 model's, which differs measurably from the fp32 model's
    assert float(stored @ embed(int8_model, image)) > 0.9999
    fp32_cosine = float(stored @ embed(assets.model_a, image))
    assert fp32_cosine < 0.9995
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        assert client.get("/info").json()["model_precision"] == "int8"
        resp = client.post("/recommend", files={"image": ("q.jpg", image.read_bytes(), "image/jpeg")})
        top = resp.json()["items"][0]
    # the query went through the int8 model: it finds its own item at cosine ~1, above fp32's agreement
    assert top["item_id"] == "item005" and top["score"] > 0.9999 > fp32_cosine


def test_bundle_refuses_embeddings_made_by_another_model(assets, int8_model: Path, tmp_path: Path) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    folder = Path(deploy_with(params, activate=False).bundle)
    fp32 = load_bundle(folder)
    assert fp32.precision == "fp32" and fp32.embedded_with == sha256_file(assets.model_a)
    content = BundleContent(
        model_file=int8_model, preprocessing=fp32.preprocessing, model_version="local-int8", model_uri="x",
        embeddings=np.asarray(fp32.embeddings), items=fp32.items, inventory_root=None, index_kind="brute",
        index_params={}, index=build_index(np.asarray(fp32.embeddings), "brute"),
        embedded_with=fp32.embedded_with, precision="int8")
    with pytest.raises(BundleError, match=r"never fp32 embeddings with int8 queries"):
        write_bundle(tmp_path / "other", content)
    # a bundle on disk whose manifest names another model as the embeddings' maker (checksums redone)
    forged = tmp_path / "forged"
    shutil.copytree(folder, forged)
    for path in forged.iterdir():
        path.chmod(0o644)
    manifest = json.loads((forged / MANIFEST).read_text())
    manifest["embeddings"]["model_sha256"] = sha256_file(int8_model)
    (forged / MANIFEST).write_text(json.dumps(manifest))
    (forged / SUMS).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(forged.iterdir())
                                       if p.name != SUMS))
    with pytest.raises(BundleError, match=rf"embeddings were made by model .* {MODEL} is .*refused"):
        load_bundle(forged)


def test_precision_choice_follows_the_int8_check(assets, int8_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "version"
    (folder / "extra_files").mkdir(parents=True)
    fp32 = shutil.copy(assets.model_a, folder / "model.onnx")
    shutil.copy(int8_model, folder / "extra_files" / "model.int8.onnx")
    report = folder / "extra_files" / "quantization.json"
    report.write_text(json.dumps({"accepted": True, "reason": "within limits", "accuracy_fp32": 0.9,
                                  "accuracy_int8": 0.9, "neighbour_overlap": 0.95}))
    path, used, why = choose_precision(Path(fp32), folder, "auto")
    assert path.name == "model.int8.onnx" and used == "int8" and "accepted" in why
    assert choose_precision(Path(fp32), folder, "fp32")[1] == "fp32"
    report.write_text(json.dumps({"accepted": False, "reason": "accuracy drops 0.050 > 0.02"}))
    path, used, why = choose_precision(Path(fp32), folder, "auto")
    assert path.name == "model.onnx" and used == "fp32" and "accuracy drops 0.050" in why
    with pytest.raises(ModelSourceError, match=r"int8 asked for, but int8 refused by export"):
        choose_precision(Path(fp32), folder, "int8")
    # what register ships: the report of a refused copy travels without the copy, so deploy names the cause
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    shutil.copy(report, export_dir / "quantization.json")
    shutil.copy(int8_model, export_dir / "model.int8.onnx")
    assert int8_files(export_dir) == [export_dir / "quantization.json"]
    (folder / "extra_files" / "model.int8.onnx").unlink()
    assert "int8 refused by export: accuracy drops 0.050" in choose_precision(Path(fp32), folder, "auto")[2]
    with pytest.raises(ModelSourceError, match=r"is fp32, but index.precision asks for int8"):
        resolve_model(str(assets.model_a), tmp_path, precision="int8")
