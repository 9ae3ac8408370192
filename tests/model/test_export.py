"""Export to ONNX of real candidates (factory-built simple_cnn and ImageNet efficientnet_lite0), the
preprocessing they carry, parity with PyTorch on real images, a tampered graph refused, and int8 (each
`export.quantize` choice checked in the graph it produces)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper

from fashionrec.core.errors import FashionrecError, ParityError
from fashionrec.data.images import Preprocessing
from fashionrec.data.manifest import read_dataset
from fashionrec.models.base import EmbeddingModel
from fashionrec.registry.export import export, parity_images, verify
from fashionrec.runtime.export import export_onnx, preprocessing_spec
from fashionrec.runtime.metadata import METADATA_KEY, read_metadata, read_precision
from fashionrec.runtime.quantize import DEFAULTS, front_nodes, quantize, settings, static_options
from fashionrec.runtime.session import create_session
from tests.model.utils import export_params, real_model, save_candidate, tamper


@pytest.fixture(scope="module")
def vocab(tiny_validated) -> tuple[list[str], list[str]]:
    info = read_dataset(tiny_validated.validated)
    return list(info["classes"]), list(info["attributes"])


@pytest.fixture(scope="module")
def cnn(vocab) -> EmbeddingModel:
    return real_model("simple_cnn", *vocab, pretrained=False)


@pytest.fixture(scope="module")
def effnet(vocab) -> EmbeddingModel:
    return real_model("efficientnet_lite0", *vocab, pretrained=True)


@pytest.fixture(scope="module")
def cnn_onnx(cnn, tmp_path_factory) -> Path:
    return export_onnx(cnn, tmp_path_factory.mktemp("cnn_onnx"))[0]


def manifest(tiny_validated) -> Path:
    return tiny_validated.validated / "manifest.parquet"


def test_graph_contract_and_preprocessing(cnn: EmbeddingModel, cnn_onnx: Path) -> None:
    graph = onnx.load(str(cnn_onnx))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = graph.graph.input
    assert inp.name == "image" and inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 64, 64]
    assert [o.name for o in graph.graph.output] == ["embedding", "logits"]

    spec = json.loads((cnn_onnx.parent / "preprocessing.json").read_text())
    assert read_metadata(cnn_onnx) == spec and METADATA_KEY in {p.key for p in graph.metadata_props}
    assert Preprocessing.from_dict(spec) == cnn.card.prep
    assert spec["labels"] == cnn.card.labels and spec["classes"] == cnn.card.classes
    assert (spec["size"], spec["mean"], spec["std"], spec["resize"]) == (64, [0.5] * 3, [0.5] * 3,
                                                                          "shorter_side_then_center_crop")

    session = create_session(cnn_onnx)
    assert session.providers[-1] == "CPUExecutionProvider" and session.provider in session.requested
    for n in (1, 5):  # dynamic batch axis
        out = session.run(np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32))
        assert out["embedding"].shape == (n, cnn.card.embedding_dim)
        assert out["logits"].shape == (n, len(cnn.card.labels))
        np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("which", ["cnn", "effnet"])
def test_parity_on_real_test_images(which: str, request, tiny_validated, tmp_path: Path) -> None:
    model = request.getfixturevalue(which)
    onnx_path, _ = export_onnx(model, tmp_path)
    queries, inventory = parity_images(manifest(tiny_validated), export_params(), model)
    assert queries.batch.shape[1:] == (3, model.card.prep.size, model.card.prep.size)
    report = verify(model, onnx_path, queries, inventory, export_params(), tmp_path / "parity.json")
    assert report["passed"], report["reason"]
    assert report["embedding_max_abs_diff"] <= 1e-4
    assert report["neighbours"]["identical"] + report["neighbours"]["tie_swaps"] == len(queries.ids) > 0
    assert report["neighbours"]["mismatch_count"] == 0 and report["same_argmax"] == 1.0
    assert report["provider"] == "CPUExecutionProvider" or report["provider"].startswith("CUDA")
    assert json.loads((tmp_path / "parity.json").read_text())["onnx_sha256"] == report["onnx_sha256"]


def test_the_spec_carries_the_attribute_thresholds_of_the_model(vocab) -> None:
    """Serving reads the multi-label decision from the spec: a threshold chosen in training goes with it."""
    model = real_model("simple_cnn", *vocab, pretrained=False)
    assert preprocessing_spec(model, 17)["outputs"]["logits"]["thresholds"] == {}
    model.card.thresholds = {"kids": 0.2}
    assert preprocessing_spec(model, 17)["outputs"]["logits"]["thresholds"] == {"kids": 0.2}


def test_tampered_graph_fails_parity(cnn: EmbeddingModel, cnn_onnx: Path, tiny_validated,
                                     tmp_path: Path) -> None:
    bad = tamper(cnn_onnx, tmp_path / "model.onnx")
    queries, inventory = parity_images(manifest(tiny_validated), export_params(), cnn)
    with pytest.raises(ParityError, match=r"does not reproduce PyTorch \(embedding max abs diff"):
        verify(cnn, bad, queries, inventory, export_params(), tmp_path / "parity.json")
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False and report["embedding_max_abs_diff"] > 1e-3


def test_export_step_writes_everything_and_int8(cnn: EmbeddingModel, tiny_validated, tmp_path: Path) -> None:
    save_candidate(tmp_path / "models", cnn)
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"passed": True, "winner": "simple_cnn", "metrics": {}}))
    params = export_params()
    params["quantize"]["enabled"] = True
    result = export(tmp_path / "models", decision, manifest(tiny_validated), tmp_path / "export", params)
    files = set(result.files)
    assert {"model.onnx", "preprocessing.json", "parity.json", "model.int8.onnx",
            "quantization.json"} <= files
    assert "model.pre.onnx" not in files and result.parity["passed"] and result.export_seconds > 0
    q = json.loads((tmp_path / "export/quantization.json").read_text())
    assert q["size_mb_int8"] < q["size_mb_fp32"] / 2  # int8 weights
    assert 0.0 <= q["accuracy_int8"] <= 1.0 and q["images_per_s_int8"] > 0 and q["eval_images"] == 8
    assert q["settings"] == {**DEFAULTS, "calibration_images": 16}
    assert q["embedding_mean_cosine"] > 0.5 and isinstance(q["accepted"], bool)
    assert q["serving_precision"] == ("int8" if q["accepted"] else "fp32")
    # the int8 copy describes itself: the fp32 model's preprocessing, and its own precision
    int8, fp32 = tmp_path / "export/model.int8.onnx", tmp_path / "export/model.onnx"
    assert read_precision(int8) == "int8" and read_precision(fp32) == "fp32"
    assert read_metadata(int8) == read_metadata(fp32)
    # int8 and fp32 answer to the same input/output names
    emb = create_session(tmp_path / "export/model.int8.onnx").run(
        np.zeros((2, 3, 64, 64), np.float32))["embedding"]
    assert emb.shape == (2, cnn.card.embedding_dim)


def run_quantize(cnn: EmbeddingModel, cnn_onnx: Path, tiny_validated, out: Path,
                 **choices) -> tuple[dict, onnx.ModelProto]:
    params = export_params()
    params["quantize"].update(choices)
    queries, inventory = parity_images(manifest(tiny_validated), params, cnn)
    out.mkdir()
    report = quantize(cnn_onnx, manifest(tiny_validated), cnn, queries, inventory, params, out)
    return report, onnx.load(str(out / "model.int8.onnx"))


def zero_points(graph: onnx.ModelProto) -> tuple[set[str], set[str], list[int]]:
    """QDQ graph: dtypes of the activations' and the weights' zero points, and each weight's scale count."""
    init = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    activations, weights, scales = set(), set(), []
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 2:
            if node.input[0] in init and init[node.input[0]].ndim > 1:  # a conv or dense weight
                weights.add(init[node.input[2]].dtype.name)
                scales.append(init[node.input[1]].size)
            elif node.input[0] not in init:
                activations.add(init[node.input[2]].dtype.name)
    return activations, weights, scales


def test_quantize_defaults_are_params_yaml() -> None:
    tree = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    assert settings(tree["export"]["quantize"]) == settings({}) == DEFAULTS


def test_quantize_options_reach_onnxruntime() -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    chosen = static_options(settings({}))
    assert (chosen["quant_format"], chosen["activation_type"], chosen["weight_type"]) == \
        (QuantFormat.QDQ, QuantType.QUInt8, QuantType.QInt8)
    assert chosen["per_channel"] and not chosen["reduce_range"] and chosen["nodes_to_exclude"] == []
    assert chosen["calibrate_method"] == CalibrationMethod.Percentile
    assert chosen["extra_options"] == {"CalibPercentile": 99.999}
    other = static_options(settings({"format": "qoperator", "activation_type": "int8", "weight_type": "uint8",
                                     "per_channel": False, "reduce_range": True, "calibration": "entropy"}))
    assert (other["quant_format"], other["activation_type"], other["weight_type"]) == \
        (QuantFormat.QOperator, QuantType.QInt8, QuantType.QUInt8)
    assert not other["per_channel"] and other["reduce_range"] and other["extra_options"] == {}
    assert other["calibrate_method"] == CalibrationMethod.Entropy
    assert static_options(settings({"calibration": "minmax"}))["calibrate_method"] == CalibrationMethod.MinMax


@pytest.mark.parametrize(("key", "value"), [("format", "qdx"), ("activation_type", "int4"),
                                            ("weight_type", "float8"), ("calibration", "mse"),
                                            ("percentile", 0), ("percentile", "high"), ("fp32_front", 1.5),
                                            ("fp32_front", -0.1), ("fp32_front", "a quarter")])
def test_bad_quantize_choice_names_the_key(key: str, value) -> None:
    with pytest.raises(FashionrecError, match=f"export.quantize.{key}: "):
        settings({key: value})


def test_int8_graph_follows_the_choices(cnn: EmbeddingModel, cnn_onnx: Path, tiny_validated,
                                        tmp_path: Path) -> None:
    # 21 calibration images in batches of at most 8: the histogram calibrator gets equal batches (3 x 7)
    report, graph = run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "default", calibration_images=21)
    activations, weights, scales = zero_points(graph)
    assert activations == {"uint8"} and weights == {"int8"}
    assert len(scales) == 4 and min(scales) > 1  # per channel: two convolutions, the dense layer, the head
    assert report["settings"]["calibration"] == "percentile" and report["calibration_images"] == 21

    _, graph = run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "s8", activation_type="int8",
                            per_channel=False, calibration="minmax")
    activations, weights, scales = zero_points(graph)
    assert activations == {"int8"} and weights == {"int8"} and set(scales) == {1}

    _, graph = run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "qop", format="qoperator")
    ops = {n.op_type for n in graph.graph.node}
    assert "QLinearConv" in ops and "DequantizeLinear" in ops and "Conv" not in ops


def test_excluded_node_stays_float(cnn: EmbeddingModel, cnn_onnx: Path, tiny_validated,
                                   tmp_path: Path) -> None:
    first = next(n.name for n in onnx.load(str(cnn_onnx)).graph.node if n.op_type == "Conv")
    _, graph = run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "ok", nodes_to_exclude=[first])
    init = {i.name: i for i in graph.graph.initializer}
    (conv,) = [n for n in graph.graph.node if n.name == first]
    assert conv.op_type == "Conv" and conv.input[1] in init  # its weight: no DequantizeLinear in front
    assert init[conv.input[1]].data_type == onnx.TensorProto.FLOAT
    with pytest.raises(FashionrecError, match="nodes_to_exclude: no node named /no/such/Conv"):
        run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "bad", nodes_to_exclude=["/no/such/Conv"])
    assert not (tmp_path / "bad" / "model.pre.onnx").exists()


def test_fp32_front_is_a_prefix_up_to_the_next_convolution() -> None:
    ops = ["Pad", "Conv", "Clip", "Conv", "Add", "Pad", "Conv", "Conv", "ReduceMean", "Gemm"]
    nodes = [onnx.helper.make_node(op, [], [], name=f"n{i}") for i, op in enumerate(ops)]
    assert front_nodes(nodes, 0.0) == [] and front_nodes(nodes, 0.2) == []   # a quarter of 4 convs: 1
    assert front_nodes(nodes, 0.25) == ["n0", "n1", "n2"]
    assert front_nodes(nodes, 0.5) == ["n0", "n1", "n2", "n3", "n4", "n5"]   # the Add and Pad before conv 3
    assert front_nodes(nodes, 1.0) == [n.name for n in nodes]


def test_fp32_front_keeps_the_first_convolution_float(cnn: EmbeddingModel, cnn_onnx: Path, tiny_validated,
                                                      tmp_path: Path) -> None:
    report, graph = run_quantize(cnn, cnn_onnx, tiny_validated, tmp_path / "front", fp32_front=0.5)
    init = {i.name: i for i in graph.graph.initializer}
    first, second = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert first.input[1] in init and init[first.input[1]].data_type == onnx.TensorProto.FLOAT
    assert second.input[1] not in init   # its weight comes through a DequantizeLinear
    assert report["fp32_nodes"] >= 1 and report["settings"]["fp32_front"] == 0.5
    _, weights, scales = zero_points(graph)
    assert weights == {"int8"} and len(scales) == 3   # the second convolution, the dense layer, the head


def test_export_refuses_a_failed_decision(tmp_path: Path) -> None:
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"passed": False, "winner": "simple_cnn", "reason": "too weak",
                                    "metrics": {}}))
    with pytest.raises(FashionrecError, match="gate refused simple_cnn \\(too weak\\); nothing to export"):
        export(tmp_path / "models", decision, tmp_path / "m.parquet", tmp_path / "export", export_params())
    assert not (tmp_path / "export").exists()


def test_opset_below_17_is_refused(cnn: EmbeddingModel, tmp_path: Path) -> None:
    with pytest.raises(FashionrecError, match="export.opset: must be >= 17"):
        export_onnx(cnn, tmp_path, opset=13)


def test_torch_and_onnx_agree_on_category(cnn: EmbeddingModel, cnn_onnx: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        _, logits = cnn(torch.from_numpy(x))
    got = create_session(cnn_onnx).run(x)["logits"]
    np.testing.assert_allclose(got, logits.numpy(), atol=1e-4)
