"""profile() under torch.distributed: every rank ends with the profile of all shards."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stats_helpers import dist_worker, image_batches, profiles_equal, tiny_vgg

import smart_transfer as st
from smart_transfer.stats import ActivationProfile

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(dist_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_gloo_ranks_get_the_one_process_profile(results):
    model = tiny_vgg()
    batches = image_batches(4, batch=3, size=12, seed=5)
    whole = st.profile(
        model,
        batches,
        progress=False,
        sample_per_batch=None,
        cov_sample_per_batch=None,
        hist_sample_per_batch=None,
    )
    rank0 = ActivationProfile.load(results / "sharded_rank0.pt")
    rank1 = ActivationProfile.load(results / "sharded_rank1.pt")
    profiles_equal(rank0, whole)
    profiles_equal(rank1, rank0, rtol=0)  # the same merge on both ranks: identical
    assert rank0.meta["world_size"] == 2 and rank0.num_samples == 12


def test_an_empty_shard_contributes_nothing(results):
    model = tiny_vgg()
    batches = image_batches(4, batch=3, size=12, seed=5)
    whole = st.profile(
        model,
        batches,
        progress=False,
        sample_per_batch=None,
        cov_sample_per_batch=None,
        hist_sample_per_batch=None,
    )
    for rank in (0, 1):
        profiles_equal(ActivationProfile.load(results / f"empty_rank{rank}.pt"), whole)


def test_a_failing_rank_makes_every_rank_raise(results):
    msg0 = (results / "error_rank0.txt").read_text()
    msg1 = (results / "error_rank1.txt").read_text()
    assert msg1.startswith("DataError") and "batch 1" in msg1
    assert msg0.startswith("ProfileError") and "rank 1" in msg0


def test_distributed_false_keeps_the_local_shard(results):
    model = tiny_vgg()
    batches = image_batches(4, batch=3, size=12, seed=5)
    local1 = ActivationProfile.load(results / "local_rank1.pt")
    profiles_equal(
        local1,
        st.profile(
            model,
            batches[1::2],
            progress=False,
            sample_per_batch=None,
            cov_sample_per_batch=None,
            hist_sample_per_batch=None,
        ),
        rtol=0,
    )
    assert torch.equal(local1["features.0"].count, torch.full((4,), 6.0 * 144, dtype=torch.float64))
