"""st.train under torch.distributed: 2 gloo processes reach the weights of 1 process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny_images import make_images

import smart_transfer as st
from smart_transfer.models.small import small_vgg
from smart_transfer.training.distributed import launched_group


def _net():
    torch.manual_seed(0)
    net = small_vgg(widths=(8, 16), batch_norm=False)
    net.pretrained_cfg["input_size"] = (3, 16, 16)
    return net


def _train(out=None):
    x, y = make_images(96)
    ds = st.data.arrays(x, y)
    idx = torch.arange(96)
    r = st.train(
        _net(),
        (ds, idx[:64]),
        (ds, idx[64:]),
        strategy="full-finetune",
        epochs=3,
        lr=0.01,
        batch_size=16,
        optimizer="sgd",
        patience=None,
        progress=False,
        out=out,
    )
    return r


def _worker(rank, world, port, out):
    # the variables torchrun sets; launched_group joins the group they describe
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    with launched_group("cpu") as (r, n):
        assert (r, n) == (rank, world)
        _train(out)  # every rank trains; only rank 0 writes the run folder
    assert not torch.distributed.is_initialized()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_reach_the_single_process_weights(tmp_path):
    torch.set_num_threads(1)
    from smart_transfer.training.checkpoint import WEIGHTS, latest, load_weights

    _train(tmp_path / "one")
    mp.spawn(_worker, args=(2, _free_port(), tmp_path / "two"), nprocs=2, join=True)
    last_epoch = (
        latest(tmp_path / "one" / "checkpoints/full-finetune").relative_to(tmp_path / "one")
        / WEIGHTS
    )
    for name in (last_epoch, "model.safetensors"):  # last epoch, best epoch
        single, ddp = load_weights(tmp_path / "one" / name), load_weights(tmp_path / "two" / name)
        assert set(ddp) == set(single)
        for k, v in single.items():
            torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-5, msg=k)
    last = load_weights(tmp_path / "one" / last_epoch)
    init = _net().state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in last.items() if "classifier" not in k)
    cfg = (tmp_path / "two" / "config.json").read_text()
    assert '"world_size": 2' in cfg
