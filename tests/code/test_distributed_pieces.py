"""The pieces of DDP training that need no process group: how ranks split batches and data, the job's
shape from params and the cluster's PET_* variables, the messages of a failed job and a bad batch size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fashionrec.core.errors import ParamsError, TrainingError
from fashionrec.core.settings import ParamsTree, check
from fashionrec.data.images import Preprocessing
from fashionrec.train.data import shift_flip
from fashionrec.train.distributed import DistributedConfig, Rank, describe_failure, per_rank_batch, rank_slice
from fashionrec.train.inputs import ArrayInputs


@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (3, 2), (10, 4), (5, 3), (1, 1)])
def test_rank_slices_cover_a_batch_once_in_order(n: int, world: int) -> None:
    parts = [rank_slice(n, Rank(r, world, r)) for r in range(world)]
    assert [i for s in parts for i in range(n)[s]] == list(range(n))
    sizes = [s.stop - s.start for s in parts]
    assert max(sizes) - min(sizes) <= 1


def test_a_global_batch_must_split_evenly() -> None:
    assert per_rank_batch(64, Rank(0, 4, 0), "train.models.x") == 16
    with pytest.raises(TrainingError, match=r"^train\.models\.x\.batch_size: 6 is the global batch and must "
                                            r"divide by the 4 processes"):
        per_rank_batch(6, Rank(0, 4, 0), "train.models.x")


def test_job_shape_from_params_and_the_clusters_variables() -> None:
    section = {"distributed": {"nodes": 1, "procs_per_node": 2, "backend": "gloo"}}
    assert DistributedConfig.from_section(section, {}).world_size == 2
    cluster = {"PET_NNODES": "3", "PET_NPROC_PER_NODE": "4"}
    shape = DistributedConfig.from_section(section, cluster)
    assert (shape.nodes, shape.procs_per_node, shape.world_size) == (3, 4, 12)
    # torchrun's words for "decide yourself" leave params in charge
    assert DistributedConfig.from_section(section, {"PET_NPROC_PER_NODE": "auto"}).procs_per_node == 2
    with pytest.raises(TrainingError, match=r"^PET_NNODES='two': expected an integer$"):
        DistributedConfig.from_section(section, {"PET_NNODES": "two"})
    with pytest.raises(TrainingError, match=r"^PET_NNODES='0': expected an integer >= 1$"):
        DistributedConfig.from_section(section, {"PET_NNODES": "0"})
    assert Rank.from_env({}) == Rank(0, 1, 0) and not Rank.from_env({}).distributed
    assert Rank.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Rank(3, 4, 1)


def test_params_refuse_a_bad_distributed_key() -> None:
    with pytest.raises(ParamsError, match=r"^params: train\.distributed\.nodes: expected a value >= 1, "
                                          r"got 0$"):
        check(ParamsTree, {"train": {"distributed": {"nodes": 0}}})
    with pytest.raises(ParamsError, match=r"^params: train\.distributed\.procs: unknown key"):
        check(ParamsTree, {"train": {"distributed": {"procs": 2}}})
    with pytest.raises(ParamsError, match=r"^params: train\.distributed\.backend: expected one of"):
        check(ParamsTree, {"train": {"distributed": {"backend": "mpi"}}})
    tree = check(ParamsTree, {})
    assert (tree.train.distributed.nodes, tree.train.distributed.procs_per_node) == (1, 1)
    assert tree.kfp.trainer.runtime == "torch-distributed"


def test_a_failed_job_names_the_rank_that_died_first() -> None:
    def failure(local_rank: int, exitcode: int, timestamp: int) -> SimpleNamespace:
        return SimpleNamespace(local_rank=local_rank, exitcode=exitcode, timestamp=timestamp)

    # the launcher stops the others with SIGTERM once one dies: the SIGKILLed rank is the cause
    line = describe_failure({0: failure(0, -15, 100), 1: failure(1, -9, 100)})
    assert line == ("distributed training failed: rank 1 (local rank 1) was killed by SIGKILL; then rank 0 "
                    "was killed by SIGTERM. Rerun with --resume to continue from the last checkpoint.")
    # a rank that raised beats one the launcher stopped
    assert describe_failure({0: failure(0, -15, 5), 3: failure(1, 1, 9)}).startswith(
        "distributed training failed: rank 3 (local rank 1) exited with code 1; then rank 0")


def test_a_ranks_augmented_slice_is_what_one_process_makes_of_those_rows() -> None:
    pixels = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    whole = shift_flip(pixels, torch.Generator().manual_seed(3), 2)
    for rows in (slice(0, 3), slice(3, 5)):
        part = shift_flip(pixels[rows], torch.Generator().manual_seed(3), 2, rows, len(pixels))
        assert torch.equal(part, whole[rows])


def test_ranks_walk_the_same_global_batches() -> None:
    """Two ranks' slices of every step are one process's batch, split; equal step counts even when the
    last batch is odd."""
    prep = Preprocessing(size=8)
    x = torch.randint(0, 256, (11, 8, 8, 3), dtype=torch.uint8)
    y = torch.arange(11, dtype=torch.float32)[:, None]
    inputs = ArrayInputs(x, y, x[:3], y[:3], "pixels", prep, max_shift=1)

    def batches(rank: Rank) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        return list(inputs.train_batches(torch.Generator().manual_seed(5), 4, rank))

    one = batches(Rank())
    ranks = [batches(Rank(r, 2, r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 3
    for step, (x1, y1, i1, n1) in enumerate(one):
        parts = [ranks[r][step] for r in range(2)]
        assert all(n == n1 == len(i1) for *_, n in parts)
        assert torch.equal(torch.cat([p[2] for p in parts]), i1)
        assert torch.equal(torch.cat([p[1] for p in parts]), y1)
        assert torch.allclose(torch.cat([p[0] for p in parts]), x1)
    assert [len(p[2]) for p in (ranks[0][-1], ranks[1][-1])] == [2, 1]   # 11 = 4 + 4 + 3
    val = [torch.cat([v for _, v in inputs.val_batches(2, Rank(r, 2, r))]) for r in range(2)]
    assert torch.equal(torch.cat(val), y[:3])
