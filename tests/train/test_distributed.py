# SPDX-License-Identifier: Apache-2.0
"""DDP through the Trainer on the CPU (gloo): 2 processes x half batch == 1 process x full batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from samkern.testing import assert_close
from samkern.train import distributed as dist_utils
from samkern.train.trainer import Trainer, TrainerConfig
from tests.train.toy import ToyDataset, ToyModel, collate, mse_loss

STEPS, BATCH = 4, 8


def _config(grad_accum: int = 1) -> TrainerConfig:
    return TrainerConfig(max_steps=STEPS, batch_size=BATCH, grad_accum=grad_accum, lr=2e-2, warmup_steps=1, seed=7,
                         progress="none", tensorboard=False, plot=False, save_final=False)


def _worker(rank: int, world: int, port: int, out: str, grad_accum: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    r, w, dev = dist_utils.init_distributed(device="cpu")
    assert (r, w, dev.type) == (rank, world, "cpu")
    try:
        t = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss, _config(grad_accum), collate_fn=collate)
        assert t.world_size == 2 and t.wrapped is not t.model  # DDP-wrapped
        hist = t.train()
        if rank == 0:
            torch.save({"params": {n: p.detach().clone() for n, p in t.model.named_parameters()},
                        "losses": [h["loss"] for h in hist], "tokens": [h["tokens"] for h in hist]}, out)
    finally:
        dist_utils.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_ddp_two_processes_equal_single_process(tmp_path, grad_accum):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), out, grad_accum), nprocs=2, join=True)
    ddp = torch.load(out)
    single = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss, _config(), collate_fn=collate)
    hist = single.train()
    assert single.world_size == 1 and single.wrapped is single.model
    for n, p in single.model.named_parameters():
        assert_close(n, ddp["params"][n], p, rtol=1e-5)
    # the logged loss is the global-batch mean, token counts are summed over processes
    assert ddp["losses"] == pytest.approx([h["loss"] for h in hist], rel=1e-5)
    assert ddp["tokens"] == [h["tokens"] for h in hist]
    # and training moved the weights (the comparison is not between two untouched models)
    assert not torch.equal(single.model.inp.weight, ToyModel(dropout=0.0).inp.weight)


def test_single_process_helpers_are_noops():
    assert dist_utils.world_size() == 1 and dist_utils.rank() == 0 and not dist_utils.is_distributed()
    x = torch.randn(3)
    assert dist_utils.all_reduce_mean(x) is x and dist_utils.all_reduce_sum(x) is x
    m = ToyModel()
    assert dist_utils.wrap_model(m, torch.device("cpu")) is m
    with pytest.raises(ValueError, match="strategy"):
        dist_utils.set_wrap_strategy("zero3")


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist_utils.init_distributed(device="cpu")
    dist_utils.set_wrap_strategy("fsdp")
    try:
        t = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss, _config(), collate_fn=collate)
        hist = t.train()
        # FSDP2 parameters are DTensor shards; gather them on every rank (a collective)
        full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                for n, p in t.model.named_parameters()}
        sharded = any(hasattr(p, "full_tensor") for p in t.model.parameters())
        if rank == 0:
            torch.save({"params": full, "losses": [h["loss"] for h in hist], "sharded": sharded}, out)
    finally:
        dist_utils.set_wrap_strategy("ddp")
        dist_utils.cleanup()


def test_fsdp2_two_processes_equal_single_process(tmp_path):
    """FSDP2 (``fully_shard``) through the Trainer on 2 CPU processes (gloo) == 1 process, full batch."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    out = str(tmp_path / "fsdp.pt")
    mp.spawn(_fsdp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    res = torch.load(out)
    assert res["sharded"], "parameters were not sharded (FSDP2 did not wrap the model)"
    single = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss, _config(), collate_fn=collate)
    hist = single.train()
    for n, p in single.model.named_parameters():
        assert_close(n, res["params"][n], p, rtol=1e-5)
    assert res["losses"] == pytest.approx([h["loss"] for h in hist], rel=1e-5)
