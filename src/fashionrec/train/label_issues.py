"""`fashionrec label-review`: likely mislabelled training photos, by confident learning (cleanlab), as a
review sheet people read before anything changes.

Confident learning needs out-of-fold predicted probabilities: each training photo scored by a model that
never saw it. K fine-tunings of the candidate would give the best ones but cost K x a full training (about
15 CPU minutes each here), so the default is the cheap, defensible stand-in: K-fold multinomial logistic
regression on the candidate's pooled 1280-d features from its frozen ImageNet backbone (`features:
backbone`). Those features come through the candidate's own model code and the training's feature cache
(the frozen front's activations by content hash, the same cache `train` fills), so a warm cache makes the
whole review about a minute. Their errors are also independent of the crowd's labels, which is the point:
a photo the backbone places among dresses but the crowd calls a skirt is worth a look. `features: trained`
uses the trained candidate's pooled features instead (models/<candidate>/model.pt); they separate the
categories better, but the candidate was trained on these very labels, so its features have partly
learnt the mistakes (the folds are out-of-sample for the regression only) and it finds fewer of them.

Folds are grouped by sender (`group_by_sender`): one person's photos of one garment are near duplicates,
and with one in the training folds a held-out copy would inherit its label, right or wrong.

Outputs (`label_review.out`): `label_issues.csv` (the review sheet: image id, shard reference, given and
suggested label, self-confidence, sender, kids; least confident first), `contact_sheet.png` (the first
`contact_sheet` of them as thumbnails, given -> suggested), `reviewed_draft.csv` (a proposed reviewed list:
relabel where the suggested label's probability reaches `relabel_confidence`, else drop; nothing reads it
until a person has checked the rows and copied them into the list `subset.label_review` names) and
`summary.json` (counts per category pair, out-of-fold accuracy, the settings).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fashionrec.core.errors import TrainingError
from fashionrec.data.images import open_image
from fashionrec.data.manifest import read_manifest
from fashionrec.models.efficientnet import EfficientNetLite
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.store import load_model
from fashionrec.runtime.torch_runner import resolve_device
from fashionrec.train.config import train_config
from fashionrec.train.data import Split, load_training_data, to_input
from fashionrec.train.features import backbone_features, cached_pixels
from fashionrec.train.loop import candidate_block

FEATURES = ("backbone", "trained")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
SHEET = "label_issues.csv"
CONTACT = "contact_sheet.png"
DRAFT = "reviewed_draft.csv"
SUMMARY = "summary.json"
SHEET_COLUMNS = ["image_id", "given", "suggested", "self_confidence", "suggested_confidence", "sender_id",
                 "kids", "shard", "key", "path"]


@dataclass
class LabelReviewResult:
    out: str
    candidate: str
    features: str
    n_train: int
    n_issues: int
    oof_accuracy: float
    by_pair: dict[str, int]
    seconds: float
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pooled_features(model: EfficientNetLite, split: Split, views: tuple[str, ...], cache_dir: Path,
                    device: torch.device, batch_size: int = 32, num_workers: int = 1) -> np.ndarray:
    """float32 (N, 1280) pooled features of each image, averaged over `views` (eval mode).

    A frozen or fine-tuned candidate goes through the cached front activations (the training's cache:
    same spec, same folder); a `full` one has no frozen front, so its pixels are cached and the whole
    network runs."""
    model = model.eval().to(device)
    out = []
    with torch.no_grad():
        if model.cfg.mode == "full":
            pixels = cached_pixels(split, model.card.prep, cache_dir, num_workers)
            for i in range(0, len(pixels), 64):
                x = to_input(torch.from_numpy(pixels[i:i + 64]), model.card.prep).to(device)
                both = [model.pooled(x if v == "center" else x.flip(3)) for v in views]
                out.append(torch.stack(both).mean(0).float().cpu())
        else:
            acts = backbone_features(model, split, views, cache_dir, device, batch_size, num_workers)
            for i in range(0, len(acts), 64):
                a = torch.from_numpy(acts[i:i + 64]).to(device)
                n, v = a.shape[:2]
                out.append(model.cached_pooled(a.flatten(0, 1).float()).view(n, v, -1).mean(1).float().cpu())
    return torch.cat(out).numpy()


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int, seed: int,
                      groups: np.ndarray | None = None, c: float = 1.0, max_iter: int = 1000) -> np.ndarray:
    """(N, n_classes) probabilities of each row from a multinomial logistic regression (standardised
    features, L2 strength 1/c) fitted on the other folds; stratified by label, grouped when `groups`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if folds < 2:
        raise TrainingError(f"label_review.folds: {folds}; need at least 2")
    if len(np.unique(groups if groups is not None else np.arange(len(y)))) < folds:
        raise TrainingError(f"label_review.folds: {folds} folds need at least as many senders/photos")
    splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if groups is not None
                else StratifiedKFold(folds, shuffle=True, random_state=seed))
    probs = np.zeros((len(y), n_classes), np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # a category with fewer members than folds
        for train_idx, held_idx in splitter.split(x, y, groups):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
            clf.fit(x[train_idx], y[train_idx])
            probs[np.ix_(held_idx, clf[-1].classes_)] = clf.predict_proba(x[held_idx])
    return probs


def find_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """(boolean mask of likely label issues, self-confidence = out-of-fold probability of the given
    label) by cleanlab's confident learning."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if filter_by not in FILTERS:
        raise TrainingError(f"label_review.filter_by: '{filter_by}' is not one of {list(FILTERS)}")
    mask = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    return np.asarray(mask, dtype=bool), np.asarray(scores, dtype=np.float64)


def review_sheet(rows: pd.DataFrame, classes: list[str], labels: np.ndarray, probs: np.ndarray,
                 mask: np.ndarray, self_conf: np.ndarray) -> pd.DataFrame:
    """The flagged rows of the training split (manifest rows in `rows`, aligned with labels/probs), least
    confident first (ties by id, so the sheet is stable)."""
    suggested = probs.argmax(1)
    sheet = pd.DataFrame({
        "image_id": rows["id"].to_numpy(), "given": [classes[i] for i in labels],
        "suggested": [classes[i] for i in suggested], "self_confidence": self_conf.round(4),
        "suggested_confidence": probs[np.arange(len(labels)), suggested].round(4),
        "sender_id": rows["sender_id"].to_numpy(), "kids": rows["kids"].astype(bool).to_numpy(),
        "shard": rows["shard"].to_numpy() if "shard" in rows else None,
        "key": rows["key"].to_numpy() if "key" in rows else None, "path": rows["path"].to_numpy()})
    sheet = sheet[mask].sort_values(["self_confidence", "image_id"], kind="stable")
    return sheet[SHEET_COLUMNS].reset_index(drop=True)


def reviewed_draft(sheet: pd.DataFrame, relabel_confidence: float) -> pd.DataFrame:
    """A proposed reviewed list (the format of `subset.label_review`): relabel when the suggested label is
    confident enough, else drop. A draft: a person checks every row before it is used."""
    relabel = (sheet["suggested_confidence"] >= relabel_confidence) & (sheet["suggested"] != sheet["given"])
    notes = [f"cleanlab draft, unreviewed: given {g}, suggested {s} (p={p:.2f}), p(given)={q:.2f}"
             for g, s, p, q in sheet[["given", "suggested", "suggested_confidence", "self_confidence"]]
             .itertuples(index=False)]
    return pd.DataFrame({"image_id": sheet["image_id"], "action": np.where(relabel, "relabel", "drop"),
                         "label": np.where(relabel, sheet["suggested"], ""), "note": notes})


def contact_sheet(sheet: pd.DataFrame, abspaths: dict[str, str], path: Path, n: int, thumb: int,
                  title: str) -> Path:
    """The first `n` rows of the sheet as thumbnails captioned `given -> suggested` and the confidences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sheet.head(n)
    cols = 8
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * thumb / 60, rows * (thumb / 60 + 0.45)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, shown.itertuples(index=False), strict=False):
        img = open_image(abspaths[rec.image_id])
        img.thumbnail((thumb, thumb))
        ax.imshow(np.asarray(img))
        p = f"p={rec.self_confidence:.2f}/{rec.suggested_confidence:.2f}"
        ax.set_title(f"{rec.given} -> {rec.suggested}\n{p}{' kids' if rec.kids else ''}\n{rec.image_id[:8]}",
                     fontsize=6.5)
    if shown.empty:
        axes.flat[0].text(0.5, 0.5, "no label issues found", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label_review(manifest: Path, out: Path, section: dict[str, Any], train_section: dict[str, Any], *,
                 cache_dir: Path, models_dir: Path, seed: int) -> LabelReviewResult:
    """Score the training split of `manifest` out of fold, find likely label issues, write the review
    sheet, contact sheet, draft list and summary into `out` (see the module docstring)."""
    started = time.perf_counter()
    candidate = str(section.get("candidate", "efficientnet_lite0"))
    source = str(section.get("features", "backbone"))
    if source not in FEATURES:
        raise TrainingError(f"label_review.features: '{source}' is not one of {list(FEATURES)}")
    block = candidate_block(train_section, candidate)
    cfg = train_config(candidate, block)
    data = load_training_data(manifest)
    if source == "trained":
        model = load_model(models_dir / candidate)
        if model.card.classes != data.classes:
            raise TrainingError(f"{models_dir / candidate}: trained on categories {model.card.classes}, "
                                f"the manifest has {data.classes}")
    else:
        model = build_model(new_card(candidate, block, data.classes, data.labels), pretrained=True)
    if not isinstance(model, EfficientNetLite):
        raise TrainingError(f"label_review.candidate: '{candidate}' is not an efficientnet candidate "
                            "(the review uses its pooled backbone features)")
    device = torch.device(resolve_device(str(train_section.get("device", "auto")), "train.device"))
    # the views (and their order) the training caches, so a trained run's cache is reused as it is
    val_views = ("center", "hflip") if model.cfg.tta_flip else ("center",)
    views = tuple(dict.fromkeys(["center", *cfg.views, *val_views]))
    x = pooled_features(model, data.train, views, cache_dir, device, cfg.cache_batch_size, cfg.num_workers)

    df = read_manifest(manifest)
    rows = df[df["split"] == "train"].set_index("id").loc[data.train.ids].reset_index()
    labels = data.train.category
    groups = rows["sender_id"].to_numpy() if section.get("group_by_sender", True) else None
    probs = out_of_fold_probs(x, labels, len(data.classes), folds=int(section.get("folds", 5)), seed=seed,
                              groups=groups, c=float(section.get("c", 0.01)),
                              max_iter=int(section.get("max_iter", 1000)))
    mask, self_conf = find_issues(labels, probs, str(section.get("filter_by", "prune_by_noise_rate")))
    sheet = review_sheet(rows, data.classes, labels, probs, mask, self_conf)

    out.mkdir(parents=True, exist_ok=True)
    sheet.to_csv(out / SHEET, index=False)
    reviewed_draft(sheet, float(section.get("relabel_confidence", 0.8))).to_csv(out / DRAFT, index=False)
    by_pair = {f"{g} -> {s}": int(n) for (g, s), n in
               sheet.groupby(["given", "suggested"]).size().sort_values(ascending=False).items()}
    per_category = {c: {"train": int((labels == i).sum()), "issues": int((sheet["given"] == c).sum())}
                    for i, c in enumerate(data.classes)}
    oof_accuracy = float((probs.argmax(1) == labels).mean())
    eps = 1e-12
    summary = {"candidate": candidate, "features": source, "manifest": str(manifest), "n_train": len(labels),
               "n_issues": len(sheet), "kids_issues": int(sheet["kids"].sum()),
               "oof_accuracy": round(oof_accuracy, 4),
               "oof_log_loss": round(float(-np.log(probs[np.arange(len(labels)), labels] + eps).mean()), 4),
               "by_pair": by_pair, "per_category": per_category,
               "settings": {k: section.get(k) for k in ("folds", "group_by_sender", "c", "max_iter",
                                                         "filter_by", "relabel_confidence")},
               "views": list(views), "seed": seed}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    abspaths = dict(zip(rows["id"], rows["abspath"], strict=True))
    contact_sheet(sheet, abspaths, out / CONTACT, int(section.get("contact_sheet", 64)),
                  int(section.get("thumb_size", 112)),
                  f"{candidate} ({source} features): {len(sheet)} likely label issues of {len(labels)} "
                  f"training photos, least confident first (p = given/suggested)")
    return LabelReviewResult(out=str(out), candidate=candidate, features=source, n_train=len(labels),
                             n_issues=len(sheet), oof_accuracy=round(oof_accuracy, 4), by_pair=by_pair,
                             seconds=round(time.perf_counter() - started, 1),
                             files=[SHEET, CONTACT, DRAFT, SUMMARY])
