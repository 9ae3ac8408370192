"""Training losses: multi-label classification on the logits, optional metric learning on the embedding.

Targets are multi-hot over `card.labels` (categories first, then attributes such as `kids`). The
classification loss is BCE-with-logits over every label (label smoothing pulls targets towards 0.5; a
rare attribute's positives may weigh more, `pos_weight`, or its logit learns to stay below 0.5),
optionally plus softmax cross-entropy over the category logits (one category per image sharpens argmax).
The metric loss acts on the L2-normalised embedding with in-batch positives = same category.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

METRIC_LOSSES = ("none", "supcon", "triplet")


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing: 1 -> 1 - s/2, 0 -> s/2."""
    return targets * (1.0 - smoothing) + 0.5 * smoothing


def supcon_loss(emb: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over a batch of unit embeddings.

    Every other sample of the same group is a positive; anchors without a positive are skipped.
    """
    n = emb.shape[0]
    sim = emb @ emb.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    counts = positive.sum(dim=1)
    has = counts > 0
    if not has.any():
        return emb.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[has] / counts[has]
    return -mean_log_prob.mean()


def triplet_loss(emb: torch.Tensor, groups: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss: hardest positive and hardest in-batch negative per anchor."""
    dist = torch.cdist(emb, emb)
    same = groups[:, None] == groups[None, :]
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    positive, negative = same & ~eye, ~same
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return emb.sum() * 0.0
    hardest_pos = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_neg = dist.masked_fill(~negative, float("inf")).min(dim=1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


@dataclass(frozen=True)
class LossConfig:
    n_classes: int
    label_smoothing: float = 0.0
    ce_weight: float = 0.0            # weight of the softmax CE over the category logits
    metric_loss: str = "none"         # none | supcon | triplet
    metric_weight: float = 0.0
    temperature: float = 0.1          # supcon
    margin: float = 0.2               # triplet
    pos_weight: tuple[float, ...] | None = None   # BCE weight of a positive, per label (None: 1 for all)


def compute_loss(cfg: LossConfig, emb: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (for logging). `sample_weights` (B,) carry the class weights."""
    logits = logits.float()
    pos_weight = (None if cfg.pos_weight is None
                  else torch.tensor(cfg.pos_weight, dtype=torch.float32, device=logits.device))
    per_sample = F.binary_cross_entropy_with_logits(
        logits, smooth_targets(targets, cfg.label_smoothing), reduction="none",
        pos_weight=pos_weight).mean(dim=1)
    category = targets[:, : cfg.n_classes].argmax(dim=1)
    if cfg.ce_weight > 0:
        ce = F.cross_entropy(logits[:, : cfg.n_classes], category, reduction="none",
                             label_smoothing=cfg.label_smoothing)
        per_sample = per_sample + cfg.ce_weight * ce
    weights = sample_weights if sample_weights is not None else torch.ones_like(per_sample)
    classification = (per_sample * weights).sum() / weights.sum()
    parts = {"classification": float(classification.detach())}
    total = classification
    if cfg.metric_loss != "none" and cfg.metric_weight > 0:
        emb = emb.float()
        metric = (supcon_loss(emb, category, cfg.temperature) if cfg.metric_loss == "supcon"
                  else triplet_loss(emb, category, cfg.margin))
        parts["metric"] = float(metric.detach())
        total = total + cfg.metric_weight * metric
    return total, parts
