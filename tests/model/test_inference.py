"""embed_images: every input kind and both backends give the same normalised embeddings, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fashionrec.core.errors import DataError, TrainingError
from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel, ModelCard
from fashionrec.runtime.embed import OnnxRunner, embed_images
from fashionrec.runtime.torch_runner import TorchRunner, embed_model, make_runner

SIZE = 16


class TinyModel(EmbeddingModel):
    """A conv layer, global pooling and a head: enough to test the plumbing around a model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.card = ModelCard(candidate="tiny", arch="tiny", classes=["a", "b"], labels=["a", "b", "kids"],
                              embedding_dim=8, preprocessing=Preprocessing(size=SIZE).to_dict())
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)[:, :8]
        return F.normalize(h, dim=1), self.head(h)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_backends_and_input_kinds_agree(photos: list[str]) -> None:
    model = TinyModel().eval()
    prep = model.card.prep
    torch_out = embed_model(model, photos, batch_size=3, backend="torch", progress=False)
    onnx_out = embed_model(model, photos, batch_size=4, backend="onnx", progress=False)
    assert torch_out.backend == "torch:cpu" and onnx_out.backend.startswith("onnx:")
    assert torch_out.embeddings.shape == (7, 8) and torch_out.logits.shape == (7, 3)
    np.testing.assert_allclose(onnx_out.embeddings, torch_out.embeddings, atol=1e-5)
    np.testing.assert_allclose(onnx_out.logits, torch_out.logits, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(torch_out.embeddings, axis=1), 1.0, atol=1e-5)
    # Decoded images, pre-resized pixels, normalised arrays and raw bytes give the same vectors.
    images = [Image.open(p) for p in photos]
    pixels = [np.asarray(prep.resize_crop(im.convert("RGB"))) for im in images]
    for items in (images, pixels, [prep(im.convert("RGB")) for im in images],
                  [open(p, "rb").read() for p in photos]):  # noqa: SIM115
        out = embed_model(model, items, batch_size=32, backend="torch", progress=False)
        np.testing.assert_allclose(out.embeddings, torch_out.embeddings, atol=1e-6)
    assert torch_out.ms_per_image > 0


def test_a_runner_is_reused_and_order_is_kept(photos: list[str]) -> None:
    model = TinyModel().eval()
    runner = make_runner(model, "auto")
    assert isinstance(runner, OnnxRunner)
    full = embed_images(runner, photos, batch_size=2, prep=model.card.prep, progress=False)
    reversed_out = embed_images(runner, photos[::-1], batch_size=5, prep=model.card.prep, progress=False)
    np.testing.assert_allclose(reversed_out.embeddings[::-1], full.embeddings, atol=1e-6)
    assert isinstance(make_runner(model, "torch"), TorchRunner)


def test_flip_tta_makes_embeddings_mirror_invariant(photos: list[str]) -> None:
    model = TinyModel().eval()
    pixels = [np.asarray(model.card.prep.resize_crop(Image.open(p).convert("RGB"))) for p in photos]
    mirrored = [np.ascontiguousarray(px[:, ::-1]) for px in pixels]
    plain = embed_model(model, pixels, backend="torch", progress=False).embeddings
    plain_m = embed_model(model, mirrored, backend="torch", progress=False).embeddings
    assert not np.allclose(plain, plain_m, atol=1e-4)  # the model itself is not mirror-invariant
    tta = embed_model(model, pixels, backend="torch", flip_tta=True, progress=False)
    tta_m = embed_model(model, mirrored, backend="torch", flip_tta=True, progress=False)
    np.testing.assert_allclose(tta.embeddings, tta_m.embeddings, atol=1e-5)
    np.testing.assert_allclose(tta.logits, tta_m.logits, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tta.embeddings, axis=1), 1.0, atol=1e-5)


def test_bad_inputs_name_the_problem(tmp_path, photos: list[str]) -> None:
    model = TinyModel().eval()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        embed_model(model, [photos[0], str(broken)], backend="torch", progress=False)
    with pytest.raises(DataError, match="image array of shape"):
        embed_model(model, [np.zeros((5, 5), np.uint8)], backend="torch", progress=False)
    with pytest.raises(TrainingError, match="backend 'tpu'"):
        embed_model(model, photos, backend="tpu", progress=False)
    with pytest.raises(TrainingError, match="pass `prep`"):
        embed_images(make_runner(model, "onnx").session, photos, progress=False)
    with pytest.raises(TrainingError, match="embed_model"):   # a PyTorch model is no runner
        embed_images(model, photos, progress=False)
    empty = embed_model(model, [], backend="torch", progress=False)
    assert len(empty.embeddings) == 0
