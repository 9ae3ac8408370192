"""Data-parallel training (DDP) of the one training function: ranks, process group, launcher, batch split.

A worker is any process whose environment carries torchrun's variables (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`): started by `torchrun`, by Kubeflow Trainer's
`torch-distributed` runtime (which runs torchrun with `PET_*` set), or by `launch` below. Without them the
process is the only rank and nothing here is used (`dvc repro` trains as it always did).

Every rank walks the same global batch schedule (one permutation per epoch, `batch_size` images per
step) and computes its own slice of each global batch (`rank_slice`), so every rank takes the same number
of steps: no rank waits at the end of an epoch for a peer that has none left. The losses are weighted so
that DDP's gradient average equals the gradient of the global batch's mean loss, and batch norms
normalise over the global batch (`sync_batch_norm`), so 2 processes train what 1 process trains.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fashionrec.core.errors import TrainingError


@dataclass(frozen=True)
class DistributedConfig:
    """`train.distributed`: the job's shape (the cluster's `PET_*` variables take precedence)."""

    nodes: int = 1
    procs_per_node: int = 1
    backend: str = "auto"          # auto: nccl on CUDA, gloo on CPU
    master_port: int = 29500       # rendezvous port of a multi-node job (one node: a free port)
    timeout_s: float = 3600.0      # a collective waiting longer fails (a cache fill runs between two)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> DistributedConfig:
        block = dict(section.get("distributed") or {})

        def pick(name: str, env_name: str) -> int:
            raw = env.get(env_name)
            if raw is None or raw.strip().lower() in ("auto", "cpu", "gpu"):   # torchrun's words: params
                return int(block.get(name, getattr(cls, name)))
            try:
                value = int(raw)
            except ValueError:
                raise TrainingError(f"{env_name}={raw!r}: expected an integer") from None
            if value < 1:
                raise TrainingError(f"{env_name}={raw!r}: expected an integer >= 1")
            return value

        return cls(nodes=pick("nodes", "PET_NNODES"),
                   procs_per_node=pick("procs_per_node", "PET_NPROC_PER_NODE"),
                   backend=str(block.get("backend", cls.backend)),
                   master_port=int(block.get("master_port", cls.master_port)),
                   timeout_s=float(block.get("timeout_s", cls.timeout_s)))

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class Rank:
    """This process's place in the job (rank 0 of 1 when not launched as a worker)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Rank:
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        try:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
        except ValueError:
            raise TrainingError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
                                f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: expected integers") from None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The rank that logs to MLflow and writes checkpoints and outputs."""
        return self.rank == 0


SINGLE = Rank()    # the one process of a run that is not distributed


def die_with_launcher() -> None:
    """Make this rank die with the process that started it. torch's launcher starts ranks in their own
    sessions, so a launcher killed outright (SIGKILL, OOM) would leave them training on, unseen, holding
    the GPUs and the checkpoint; the kernel kills them instead (Linux; elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:      # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


# --- the process group ---------------------------------------------------------------------------------


@contextlib.contextmanager
def process_group(rank: Rank, device: torch.device, cfg: DistributedConfig) -> Iterator[None]:
    """The job's process group for the duration of one training (nothing when there is one rank)."""
    if not rank.distributed:
        yield
        return
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise TrainingError("train.distributed.backend: nccl needs CUDA devices; use gloo (or auto) on CPU")
    if device.type == "cuda":
        torch.cuda.set_device(rank.local_rank)
    dist.init_process_group(backend, rank=rank.rank, world_size=rank.world_size,
                            timeout=datetime.timedelta(seconds=cfg.timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def worker_device(device: torch.device, rank: Rank) -> torch.device:
    """A CUDA rank uses its own GPU (`cuda:LOCAL_RANK`)."""
    if device.type == "cuda" and rank.distributed:
        return torch.device("cuda", rank.local_rank)
    return device


def barrier(rank: Rank) -> None:
    if rank.distributed:
        dist.barrier()


def all_sum(values: Sequence[float], rank: Rank) -> list[float]:
    """Element-wise sums over ranks (float64, so a sum does not depend on the number of ranks' rounding)."""
    if not rank.distributed:
        return [float(v) for v in values]
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(list(values), dtype=torch.float64, device=on)   # nccl reduces CUDA tensors only
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather(obj: Any, rank: Rank) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not rank.distributed:
        return [obj]
    out: list[Any] = [None] * rank.world_size
    dist.all_gather_object(out, obj)
    return out


def rank_slice(n: int, rank: Rank) -> slice:
    """Rank's contiguous part of n items (sizes differ by at most one; the first ranks get the extra)."""
    base, extra = divmod(n, rank.world_size)
    start = rank.rank * base + min(rank.rank, extra)
    return slice(start, start + base + (1 if rank.rank < extra else 0))


def per_rank_batch(batch_size: int, rank: Rank, where: str) -> int:
    """The per-rank batch of a global batch, or a TrainingError when it does not divide evenly."""
    if batch_size % rank.world_size:
        raise TrainingError(f"{where}.batch_size: {batch_size} is the global batch and must divide by the "
                            f"{rank.world_size} processes (train.distributed: nodes x procs_per_node)")
    return batch_size // rank.world_size


def check_equal_steps(steps: int, epoch: int, rank: Rank) -> None:
    """Refuse an epoch in which ranks took different numbers of steps (a peer would wait forever next)."""
    if not rank.distributed:
        return
    counts = gather(steps, rank)
    if len(set(counts)) > 1:
        raise TrainingError(f"epoch {epoch}: ranks took different numbers of steps {counts}; each rank must "
                            "walk the same global batches")


# --- batch norm over the global batch -------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients (the loss is the ranks' sum)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class _GlobalBatchNorm:
    """Training-mode batch statistics over every rank's slice of the global batch (torch's SyncBatchNorm
    is CUDA-only). Eval mode, and a single process, use the layer's own forward."""

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else float(self.momentum))
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    pass


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """Batch norms that normalise over the global batch (CPU and CUDA alike): the same instances, turned
    into the layers above, so parameters, buffers, state-dict keys and `isinstance` checks are kept."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d     # same instance: parameters, buffers and hooks kept
        elif type(module) is nn.BatchNorm1d:
            module.__class__ = GlobalBatchNorm1d
    return model


def plain_batch_norm(model: nn.Module) -> nn.Module:
    """Undo `sync_batch_norm` (the trained model leaves training as the model code built it)."""
    for module in model.modules():
        if type(module) is GlobalBatchNorm2d:
            module.__class__ = nn.BatchNorm2d
        elif type(module) is GlobalBatchNorm1d:
            module.__class__ = nn.BatchNorm1d
    return model


# --- the launcher ---------------------------------------------------------------------------------------


def launch(argv: Sequence[str], cfg: DistributedConfig, env: Mapping[str, str]) -> None:
    """Run `python -m fashionrec.cli <argv>` as `cfg.procs_per_node` workers on this node (torchrun's
    machinery: torch.distributed.launcher), and wait for them; a failed worker fails the job at once
    with a TrainingError naming its rank, how it ended, and how to resume.

    One node: a standalone rendezvous on a free loopback port. Several: this node is `PET_NODE_RANK`
    (or NODE_RANK) and meets the others at `PET_MASTER_ADDR:PET_MASTER_PORT` (or MASTER_ADDR/PORT,
    default port `train.distributed.master_port`).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if cfg.nodes == 1:
        rdzv = {"rdzv_backend": "c10d", "rdzv_endpoint": "127.0.0.1:0"}
    else:
        addr = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR")
        if not addr:
            raise TrainingError(f"train.distributed.nodes: {cfg.nodes} nodes need PET_MASTER_ADDR (or "
                                "MASTER_ADDR): the address of node 0")
        port = env.get("PET_MASTER_PORT") or env.get("MASTER_PORT") or str(cfg.master_port)
        node_rank = env.get("PET_NODE_RANK") or env.get("NODE_RANK") or "0"
        rdzv = {"rdzv_backend": "static", "rdzv_endpoint": f"{addr}:{port}",
                "rdzv_configs": {"rank": int(node_rank)}}
    config = LaunchConfig(min_nodes=cfg.nodes, max_nodes=cfg.nodes, nproc_per_node=cfg.procs_per_node,
                          run_id=env.get("PET_RDZV_ID", f"fashionrec-{uuid.uuid4().hex[:8]}"),
                          max_restarts=0, monitor_interval=0.1, **rdzv)
    try:
        elastic_launch(config, sys.executable)("-m", "fashionrec.cli", *argv)
    except ChildFailedError as exc:
        raise TrainingError(describe_failure(exc.failures)) from None


def describe_failure(failures: Mapping[int, Any]) -> str:
    """One line naming the rank that failed first (killed by a signal other than the launcher's SIGTERM,
    else one that raised), then how the other ranks ended."""
    def how(f: Any) -> str:
        if f.exitcode < 0:
            try:
                return f"was killed by {signal.Signals(-f.exitcode).name}"
            except ValueError:
                return f"was killed by signal {-f.exitcode}"
        return f"exited with code {f.exitcode}"

    def cause_order(item: tuple[int, Any]) -> tuple[int, int, int]:
        rank, f = item
        killed = f.exitcode < 0 and -f.exitcode != signal.SIGTERM
        return (0 if killed else 1 if f.exitcode > 0 else 2, int(f.timestamp or 0), rank)

    ordered = sorted(failures.items(), key=cause_order)
    rank, first = ordered[0]
    line = f"distributed training failed: rank {rank} (local rank {first.local_rank}) {how(first)}"
    others = [f"rank {r} {how(f)}" for r, f in ordered[1:]]
    if others:
        line += f"; then {', '.join(others)}"
    return line + ". Rerun with --resume to continue from the last checkpoint."
