"""Stage `train@<candidate>`: fit one candidate and write `models/<candidate>/` (see docs/ARCHITECTURE.md).

Device-agnostic (CUDA with autocast when present, else CPU), seeded, resumable from the checkpoint written
after every epoch, early stopping on validation micro-F1 with the best weights kept, logged to MLflow
(params, per-epoch metrics, tags `data_version` and `git_commit`, the model folder and the loss curve).

The same function runs as every rank of a DDP job (`train.distributed`, train/distributed.py): each rank
trains on its slice of every global batch and validates its part of the validation split; rank 0 alone
logs to MLflow and writes checkpoints and outputs, and every rank resumes from the same checkpoint, which
holds nothing that depends on the number of ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fashionrec.core import tracking
from fashionrec.core.config import DEFAULT_SEED, Params
from fashionrec.core.errors import TrainingError
from fashionrec.evaluate.metrics import accuracy, f1_threshold, micro_f1, prevalence_threshold, sigmoid
from fashionrec.models.base import EmbeddingModel
from fashionrec.models.factory import ARCHES, arch_config, arch_of, build_model, new_card
from fashionrec.models.losses import LossConfig, compute_loss
from fashionrec.models.store import save_model
from fashionrec.runtime.torch_runner import resolve_device
from fashionrec.train.checkpoint import (
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from fashionrec.train.config import TrainConfig, train_config
from fashionrec.train.data import TrainingData, load_training_data, to_input
from fashionrec.train.distributed import (
    SINGLE,
    DistributedConfig,
    Rank,
    all_sum,
    barrier,
    check_equal_steps,
    die_with_launcher,
    gather,
    per_rank_batch,
    plain_batch_norm,
    process_group,
    sync_batch_norm,
    worker_device,
)
from fashionrec.train.features import cached_pixels
from fashionrec.train.inputs import ArrayInputs, ImageInputs, as_numpy, make_inputs
from fashionrec.train.recipe import resolve_recipe
from fashionrec.train.report import THRESHOLD, plot_history, thresholds_of, write_history

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    candidate: str
    out_dir: str
    epochs_run: int
    best_epoch: int
    val_micro_f1: float
    val_accuracy: float
    seconds: float
    run_id: str
    device: str
    resumed_from_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_block(section: dict[str, Any], candidate: str) -> dict[str, Any]:
    models = section.get("models") or {}
    if candidate not in models:
        raise TrainingError(f"train.models: no candidate '{candidate}' (have: {sorted(models)})")
    return dict(models[candidate])


def check_world(candidate: str, section: dict[str, Any], world_size: int) -> None:
    """Before launching ranks: the candidate's global batch must split evenly over them."""
    block = candidate_block(section, candidate)
    if ARCHES[arch_of(candidate, block)][1].iterative:
        per_rank_batch(train_config(candidate, block).batch_size, Rank(0, world_size, 0),
                       f"train.models.{candidate}")


def run_environment_tags(section: dict[str, Any], device: torch.device) -> dict[str, str]:
    """Where and how a run trained: the recipe (cpu|cuda, and why), the device and its name, the torch,
    CUDA and cuDNN versions (a run's figures depend on them; the MLflow UI filters on tags)."""
    on_gpu = device.type == "cuda"
    recipe = resolve_recipe(section, cuda_available=on_gpu)
    cudnn = torch.backends.cudnn.version() if on_gpu else None
    return {"recipe": recipe.name, "recipe_reason": recipe.reason, "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if on_gpu else "cpu",
            "torch_version": torch.__version__, "cuda_version": str(torch.version.cuda or "none"),
            "cudnn_version": str(cudnn or "none")}


def lr_factor(step: int, total: int, warmup: int, schedule: str, pct_start: float = 0.25) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` of `total`."""
    if schedule == "constant" or total <= 0:
        return 1.0
    if schedule == "onecycle":
        up = max(1, round(pct_start * total))
        if step < up:
            return 0.04 + 0.96 * step / up
        progress = (step - up) / max(1, total - up)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: EmbeddingModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters: decay on weights only; pretrained backbone layers at lr * backbone_lr_mult."""
    groups = []
    for params, lr in model.parameter_sets(cfg.lr, cfg.backbone_lr_mult):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def validation_outputs(model: EmbeddingModel, inputs: ArrayInputs | ImageInputs, loss_cfg: LossConfig,
                       device: torch.device, amp: torch.dtype | None,
                       rank: Rank = SINGLE) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean classification loss, logits, boolean targets) of the whole validation split; under DDP each
    rank scores its part and every rank gets the whole split's."""
    model.eval()
    plain = dataclasses.replace(loss_cfg, metric_loss="none")
    losses, logits_all, targets_all = [], [], []
    for x, y in inputs.val_batches(128, rank):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            emb, logits = inputs.forward(model, x.to(device), views=True)
        loss, _ = compute_loss(plain, emb, logits, y.to(device))
        losses.append(float(loss) * len(y))
        logits_all.append(as_numpy(logits))
        targets_all.append(y.numpy())
    if rank.distributed:
        parts = gather((losses, logits_all, targets_all), rank)
        losses = [v for part in parts for v in part[0]]
        logits_all = [a for part in parts for a in part[1]]
        targets_all = [a for part in parts for a in part[2]]
    targets = np.concatenate(targets_all).astype(bool)
    return sum(losses) / len(targets), np.concatenate(logits_all), targets


ThresholdRule = Callable[[np.ndarray, np.ndarray, list[str], int], dict[str, float]]
"""(validation sigmoid probabilities, targets, labels, number of classes) -> {attribute: threshold}."""


def threshold_rule(cfg: TrainConfig, data: TrainingData) -> ThresholdRule | None:
    """How the attributes are decided, as the saved model will decide them (`attribute_threshold`);
    None: sigmoid >= 0.5."""
    if cfg.attribute_threshold == "validation":
        return chosen_thresholds
    if cfg.attribute_threshold == "prevalence":
        shares = data.attribute_shares()
        return lambda probs, targets, labels, n: prevalence_thresholds(probs, labels, n, shares)
    if cfg.attribute_threshold == "carried":
        carried = dict(cfg.carried_thresholds or {})
        return lambda probs, targets, labels, n: carried
    return None


def chosen_thresholds(probs: np.ndarray, targets: np.ndarray, labels: list[str],
                      n_classes: int) -> dict[str, float]:
    """{attribute: its F1-best sigmoid threshold} over these probabilities (the labels after the
    classes)."""
    return {labels[j]: round(f1_threshold(probs[:, j], targets[:, j]), 6)
            for j in range(n_classes, len(labels))}


def prevalence_thresholds(probs: np.ndarray, labels: list[str], n_classes: int,
                          shares: dict[str, float]) -> dict[str, float]:
    """{attribute: the sigmoid threshold deciding its `shares` of these photos positive}: a quantile,
    which a held-out split of a few hundred photos pins down where an F1 over its handful of positives
    does not."""
    return {labels[j]: round(prevalence_threshold(probs[:, j], shares[labels[j]]), 6)
            for j in range(n_classes, len(labels))}


def thresholds_from(cfg: TrainConfig) -> str:
    """Where the stored attribute thresholds come from (the card's `thresholds_from`)."""
    if cfg.attribute_threshold == "carried":
        return f"carried: {cfg.thresholds_source}"
    return "validation" if cfg.attribute_threshold == "validation" else "validation (prevalence)"


@torch.no_grad()
def validate(model: EmbeddingModel, inputs: ArrayInputs | ImageInputs, loss_cfg: LossConfig,
             device: torch.device, amp: torch.dtype | None, rank: Rank = SINGLE,
             rule: ThresholdRule | None = None) -> dict[str, float]:
    """Validation loss (the training's classification loss, comparable with train_loss when no metric
    loss is added), micro-F1 and category accuracy. Micro-F1 decides each attribute as the saved model
    will: sigmoid >= 0.5 without a `rule`, else at the rule's threshold over these photos (a
    positive-weighted attribute is over-predicted at 0.5), which is also returned per epoch
    (`val_threshold.<attribute>`: what a final fit of that many epochs carries). Under DDP each rank
    scores its part and every rank gets the scores of the whole split (same early-stopping decisions)."""
    loss, logits, targets = validation_outputs(model, inputs, loss_cfg, device, amp, rank)
    n = loss_cfg.n_classes
    decided = logits >= 0.0
    thresholds: dict[str, float] = {}
    if rule is not None:
        probs = sigmoid(logits)
        thresholds = rule(probs, targets, model.card.labels, n)
        for label, threshold in thresholds.items():
            j = model.card.labels.index(label)
            decided[:, j] = probs[:, j] >= threshold
    return {"val_loss": loss,
            "val_micro_f1": micro_f1(targets, decided),
            "val_accuracy": accuracy(targets[:, :n].argmax(1), logits[:, :n].argmax(1)),
            **{f"{THRESHOLD}{label}": t for label, t in thresholds.items()}}


def fit_once(model: EmbeddingModel, data: TrainingData, cache_dir: Path, cfg: TrainConfig,
               loss_cfg: LossConfig, device: torch.device) -> dict[str, Any]:
    """A non-iterative model's one pass (the pixels baseline: label centroids of the training pixels),
    then validation scores."""
    prep = model.card.prep
    pixels = cached_pixels(data.train, prep, cache_dir, cfg.num_workers)
    embs = torch.cat([model.embed(to_input(torch.from_numpy(pixels[i:i + 256]), prep))
                      for i in range(0, len(pixels), 256)])
    model.fit_once(embs, torch.from_numpy(data.train.targets))
    val = ArrayInputs(torch.empty(0), torch.empty(0),
                      torch.from_numpy(cached_pixels(data.validation, prep, cache_dir, cfg.num_workers)),
                      torch.from_numpy(data.validation.targets), "pixels", prep)
    return {"epoch": 0, "train_loss": math.nan, **validate(model, val, loss_cfg, device, None), "lr": 0.0}


def train(candidate: str, section: dict[str, Any], *, manifest: Path, out_dir: Path, cache_dir: Path,
          checkpoint_dir: Path, tracking_params: Params, seed: int = DEFAULT_SEED, resume: bool = False,
          on_epoch_end: EpochCallback | None = None, env: Mapping[str, str] | None = None) -> TrainResult:
    """Train `candidate` (a block of `section['models']`) on the validated manifest; write out_dir.

    `on_epoch_end(epoch, record)` runs after each epoch's checkpoint (progress reporting, tests that
    interrupt a run). With `resume`, training continues from `checkpoint_dir/last.pt`. `env` (default:
    the process environment) says whether this process is one rank of a DDP job (torchrun's RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); a rank other than 0 returns a result without run or outputs.
    """
    started = time.perf_counter()
    env = os.environ if env is None else env
    rank = Rank.from_env(env)
    if rank.distributed:
        die_with_launcher()
    block = candidate_block(section, candidate)
    cfg = train_config(candidate, block)
    arch_config(candidate, block)
    device = worker_device(torch.device(resolve_device(str(section.get("device", "auto")), "train.device")),
                           rank)
    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    data = load_training_data(manifest)
    if cfg.final_fit:
        data = data.with_validation_in_train()
    sample_weights(data, cfg, f"train.models.{candidate}")   # a bad group_weights fails before any run
    data.check_attributes(cfg.carried_thresholds or {}, f"train.models.{candidate}.carried_thresholds")
    fp = fingerprint(block, seed, data.labels, data.train.shas, data.validation.shas)
    checkpoint = load_checkpoint(checkpoint_dir, fp) if resume else None

    seed_everything(seed)
    card = new_card(candidate, block, data.classes, data.labels)
    model = build_model(card, pretrained=True).to(device)
    loss_cfg = LossConfig(n_classes=len(data.classes), label_smoothing=cfg.label_smoothing,
                          ce_weight=cfg.ce_weight, metric_loss=cfg.metric_loss,
                          metric_weight=cfg.metric_weight, temperature=cfg.temperature, margin=cfg.margin,
                          pos_weight=(data.attribute_pos_weight() if cfg.attribute_pos_weight == "balanced"
                                      else None))
    with process_group(rank, device, DistributedConfig.from_section(section, env)):
        if not rank.main:   # a worker rank: steps in time with rank 0, which logs and writes
            if model.iterative:
                _fit(model, data, cfg, loss_cfg, device, amp, cache_dir, checkpoint_dir, checkpoint, seed, fp,
                     "", on_epoch_end, rank)
            return TrainResult(candidate, "", 0, 0, math.nan, math.nan,
                               round(time.perf_counter() - started, 1), "", device.type)
        return _train_and_log(candidate, block, model, data, cfg, loss_cfg, device, amp, cache_dir,
                              checkpoint_dir, checkpoint, seed, fp, manifest, out_dir, tracking_params,
                              on_epoch_end, rank, started, run_environment_tags(section, device))


def _train_and_log(candidate: str, block: dict[str, Any], model: EmbeddingModel, data: TrainingData,
                   cfg: TrainConfig, loss_cfg: LossConfig, device: torch.device, amp: torch.dtype | None,
                   cache_dir: Path, checkpoint_dir: Path, checkpoint: dict[str, Any] | None, seed: int,
                   fp: str, manifest: Path, out_dir: Path, tracking_params: Params,
                   on_epoch_end: EpochCallback | None, rank: Rank, started: float,
                   env_tags: dict[str, str]) -> TrainResult:
    """Rank 0's training: the MLflow run around the epoch loop, then the model folder (the run tagged
    with `env_tags`: recipe, device, versions)."""
    card = model.card
    experiment_id = tracking.configure(tracking_params)
    import mlflow

    # A final fit trains on the validation photos: its validation scores are not held-out figures.
    tags = tracking.run_tags(tracking_params, manifest, candidate=candidate, arch=card.arch,
                             fit_on=cfg.fit_on, validation_held_out=str(not cfg.final_fit).lower(),
                             **env_tags)
    run = tracking.start_run(checkpoint["run_id"] if checkpoint else None, candidate, tags)
    try:
        if not checkpoint:
            mlflow.log_params(tracking.flatten({
                "candidate": candidate, "seed": seed, "device": device.type, "n_train": len(data.train),
                "n_validation": len(data.validation), "world_size": rank.world_size, **block}))
        if not model.iterative:
            history = [fit_once(model, data, cache_dir, cfg, loss_cfg, device)]
            mlflow.log_metrics({k: v for k, v in history[0].items() if k != "epoch"
                                and not math.isnan(v)}, step=0)
            best_epoch, stopped, start_epoch = 0, False, None
        else:
            history, best_epoch, stopped, start_epoch = _fit(
                model, data, cfg, loss_cfg, device, amp, cache_dir, checkpoint_dir, checkpoint, seed, fp,
                run.info.run_id, on_epoch_end, rank)
        best = next(row for row in history if row["epoch"] == best_epoch)
        epochs_run = len(history) if model.iterative else 0
        model.card.extra = {"epochs_run": epochs_run, "best_epoch": best_epoch,
                            "val_micro_f1": best["val_micro_f1"], "val_accuracy": best["val_accuracy"],
                            "stopped_early": stopped, "seed": seed, "device": device.type,
                            "data_version": tags["data_version"], "fit_on": cfg.fit_on,
                            "validation_held_out": not cfg.final_fit,
                            **({"epochs_source": cfg.epochs_source} if cfg.final_fit else {}),
                            **({"thresholds_from": thresholds_from(cfg)} if model.card.thresholds else {})}
        model = model.cpu().eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, out_dir)
        write_history(history, out_dir / "history.csv")
        plot_history(history, out_dir / "loss_curve.png", f"{candidate}: training history")
        seconds = time.perf_counter() - started
        mlflow.log_metrics({"best_val_micro_f1": best["val_micro_f1"],
                            "best_val_accuracy": best["val_accuracy"], "best_epoch": best_epoch,
                            "train_seconds": seconds})
        for name in ("model.pt", "card.json", "history.csv"):
            mlflow.log_artifact(str(out_dir / name), artifact_path="model" if name != "history.csv" else None)
        mlflow.log_artifact(str(out_dir / "loss_curve.png"), artifact_path="plots")
        tracking.write_run_ref(out_dir, run.info.run_id, experiment_id, mlflow.get_tracking_uri())
        mlflow.end_run()
    except BaseException:
        mlflow.end_run(status="KILLED")
        raise
    tqdm.write(f"{candidate}: best val micro-F1 {best['val_micro_f1']:.4f} (epoch {best_epoch}) "
               f"in {seconds:.0f}s")
    return TrainResult(candidate, str(out_dir), epochs_run, best_epoch,
                       float(best["val_micro_f1"]), float(best["val_accuracy"]), round(seconds, 1),
                       run.info.run_id, device.type, start_epoch, stopped)


def _fit(model: EmbeddingModel, data: TrainingData, cfg: TrainConfig, loss_cfg: LossConfig,
         device: torch.device, amp: torch.dtype | None, cache_dir: Path, checkpoint_dir: Path,
         checkpoint: dict[str, Any] | None, seed: int, fp: str, run_id: str,
         on_epoch_end: EpochCallback | None,
         rank: Rank = SINGLE) -> tuple[list[dict[str, Any]], int, bool, int | None]:
    """The epoch loop; returns (history, best epoch, stopped early, epoch resumed from).

    Under DDP (`rank.distributed`) the model runs wrapped in DistributedDataParallel with batch norms over
    the global batch; each rank's loss is weighted by its share of the global batch, so the averaged
    gradient is the global batch's. Dropout draws from a generator seeded per epoch and rank.
    """
    import mlflow

    where = f"train.models.{model.card.candidate}"
    if cfg.epochs < 1:
        raise TrainingError(f"{where}.epochs: {cfg.epochs}; need at least 1")
    per_rank_batch(cfg.batch_size, rank, where)
    if rank.local_rank != 0:
        barrier(rank)      # the node's rank 0 fills the caches first; the others then read them
    inputs = make_inputs(model, data, cfg, cache_dir, device)
    rule = threshold_rule(cfg, data)
    if rank.local_rank == 0:
        barrier(rank)
    seed_everything(seed)  # filling a cache draws random numbers; a warm cache must not change the run
    steps = math.ceil(inputs.n_train() / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    total = steps * cfg.epochs
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    model.to(memory_format=memory_format(cfg))   # in place: the same Parameter objects, before the optimizer
    groups = param_groups(model, cfg)
    if not groups:
        raise TrainingError(f"{model.card.candidate}: nothing to train (every parameter is frozen)")
    optimizer = optimizer_cls(groups)
    step_model: torch.nn.Module = _Forward(model, inputs)
    if rank.distributed:
        sync_batch_norm(model)
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    warmup = round(cfg.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule, cfg.pct_start))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    weights = sample_weights(data, cfg, where)
    weights = torch.from_numpy(weights).to(device) if weights is not None else None

    history: list[dict[str, Any]] = []
    best_f1, best_epoch, best_state, bad_epochs, start = -1.0, 0, None, 0, 1
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        history, best_f1, best_epoch = checkpoint["history"], checkpoint["best_f1"], checkpoint["best_epoch"]
        best_state, bad_epochs = checkpoint["best_state"], checkpoint["bad_epochs"]
        start = checkpoint["epoch"] + 1
        set_rng_state(checkpoint["rng"])
        if checkpoint.get("stopped"):
            start = cfg.epochs + 1
    stopped = bool(checkpoint and checkpoint.get("stopped"))
    epochs = tqdm(range(start, cfg.epochs + 1), desc=f"train {model.card.candidate}", unit="epoch",
                  initial=start - 1, total=cfg.epochs, disable=not rank.main)
    for epoch in epochs:
        model.set_train_mode(cfg.bn_train)
        if rank.distributed:   # a rank's dropout masks depend on the epoch, not on how many ranks ran before
            torch.manual_seed(seed * 100_003 + epoch * 1_009 + rank.rank)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        total_loss, seen, taken = 0.0, 0, 0
        batches = tqdm(inputs.train_batches(generator, cfg.batch_size, rank), total=steps, leave=False,
                       desc=f"epoch {epoch}", unit="batch", disable=not rank.main)
        for step, (x, y, idx, n_global) in enumerate(batches):
            if step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                emb, logits = step_model(x)
            sample_w = weights[idx.to(device)] if weights is not None else None
            loss, _ = compute_loss(loss_cfg, emb, logits, y, sample_w)
            if not torch.isfinite(loss):
                raise TrainingError(f"{model.card.candidate}: loss became {float(loss)} at epoch {epoch} "
                                    f"step {step}; lower train.models.{model.card.candidate}.lr")
            # DDP averages the ranks' gradients: weight by the rank's share of the global batch
            share = len(y) * rank.world_size / n_global
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * share if share != 1 else loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            taken += 1
            batches.set_postfix(loss=f"{total_loss / seen:.4f}")
        check_equal_steps(taken, epoch, rank)
        total_loss, seen = all_sum([total_loss, seen], rank)
        record = {"epoch": epoch, "train_loss": total_loss / max(seen, 1),
                  **validate(model, inputs, loss_cfg, device, amp, rank, rule=rule),
                  "lr": optimizer.param_groups[-1]["lr"]}
        history.append(record)
        if cfg.final_fit:   # validation is trained on: it cannot choose; the last weights are kept
            best_f1, best_epoch = record["val_micro_f1"], epoch
        elif record["val_micro_f1"] > best_f1 + cfg.min_delta:
            best_f1, best_epoch, bad_epochs = record["val_micro_f1"], epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        stopped = bad_epochs >= cfg.patience and epoch < cfg.epochs and not cfg.final_fit
        epochs.set_postfix(val_f1=f"{record['val_micro_f1']:.4f}", acc=f"{record['val_accuracy']:.4f}")
        if rank.main:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            save_checkpoint(checkpoint_dir, {
                "fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "history": history,
                "best_f1": best_f1, "best_epoch": best_epoch, "best_state": best_state,
                "bad_epochs": bad_epochs, "stopped": stopped, "run_id": run_id,
                "world_size": rank.world_size})
        if on_epoch_end is not None:
            on_epoch_end(epoch, copy.deepcopy(record))
        if stopped:
            tqdm.write(f"{model.card.candidate}: early stop after epoch {epoch} "
                       f"(no val micro-F1 gain for {cfg.patience} epochs)")
            break
    plain_batch_norm(model)
    model.to(memory_format=torch.contiguous_format)   # what is saved, exported and evaluated
    if best_state is not None:
        model.load_state_dict(best_state)
    if rule is not None:   # the kept weights' thresholds: validate chose them on those weights
        thresholds = thresholds_of(next(row for row in history if row["epoch"] == best_epoch))
        if not thresholds and len(model.card.labels) > loss_cfg.n_classes:
            # a checkpoint written before history recorded them: choose them again on the kept weights
            thresholds = thresholds_of(validate(model, inputs, loss_cfg, device, amp, rank, rule=rule))
        model.card.thresholds = thresholds
    if rank.main:
        model.after_fit(lambda: inputs.train_pooled(model, device))
    return history, best_epoch, stopped, (start - 1 if checkpoint else None)


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The layout the model's convolution weights train in (`memory_format` of the candidate block)."""
    return torch.channels_last if cfg.memory_format == "channels_last" else torch.contiguous_format


def sample_weights(data: TrainingData, cfg: TrainConfig, where: str) -> np.ndarray | None:
    """Loss weight per training photo: its category's (class_weights balanced) times its groups'
    (group_weights); None when neither is set."""
    out = None
    if cfg.class_weights == "balanced":
        out = data.class_weights()[data.train.category]
    if cfg.group_weights:
        groups = data.group_weights(cfg.group_weights, where)
        out = groups if out is None else out * groups
    return out


class _Forward(torch.nn.Module):
    """One training forward (`inputs.forward(model, x)`) as a module, so DDP can wrap it whatever the
    inputs are (pixels, cached activations, images)."""

    def __init__(self, model: EmbeddingModel, inputs: ArrayInputs | ImageInputs) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs.forward(self.model, x)
