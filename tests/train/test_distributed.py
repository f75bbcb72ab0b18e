# SPDX-License-Identifier: Apache-2.0
"""DDP / FSDP2 through the Trainer on the CPU (gloo): 2 processes x half batch == 1 process x full batch,
and FSDP2 checkpoints that resume exactly (also across process counts)."""
from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file
import torch.multiprocessing as mp

from samkern.testing import assert_close
from samkern.train import distributed as dist_utils
from samkern.train.trainer import WEIGHTS_FILE, Trainer, TrainerConfig, load_model_weights
from tests.train.toy import ToyDataset, ToyModel, collate, mse_loss

STEPS, BATCH = 4, 8


def _config(grad_accum: int = 1, **kw) -> TrainerConfig:
    return TrainerConfig(max_steps=STEPS, batch_size=BATCH, grad_accum=grad_accum, lr=2e-2, warmup_steps=1, seed=7,
                         progress="none", tensorboard=False, plot=False, save_final=False, **kw)


def _join(rank: int, world: int, port: int) -> None:
    """Environment of process ``rank`` of a ``world``-process gloo group on localhost:``port``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _spawned(body):
    """A spawned worker: join the gloo group, run ``body(rank, *args)`` (its Trainer, DDP wrapper
    and sharded parameters are freed when it returns), then tear the group down."""
    def worker(rank: int, world: int, port: int, *args, fsdp: bool = False) -> None:
        _join(rank, world, port)
        r, w, dev = dist_utils.init_distributed(device="cpu")
        assert (r, w, dev.type) == (rank, world, "cpu")
        if fsdp:
            dist_utils.set_wrap_strategy("fsdp")
        try:
            body(rank, *args)
        finally:
            dist_utils.set_wrap_strategy("ddp")
            dist_utils.cleanup()
        # the work is done and its results are on disk: skip interpreter finalization, where
        # gloo's threads have (once in CI, under load) aborted a finished worker with SIGABRT
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return worker


def _ddp_body(rank: int, out: str, grad_accum: int) -> None:
    t = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss, _config(grad_accum), collate_fn=collate)
    assert t.world_size == 2 and t.wrapped is not t.model  # DDP-wrapped
    hist = t.train()
    if rank == 0:
        torch.save({"params": {n: p.detach().clone() for n, p in t.model.named_parameters()},
                    "losses": [h["loss"] for h in hist], "tokens": [h["tokens"] for h in hist]}, out)


def _worker(rank: int, world: int, port: int, out: str, grad_accum: int) -> None:
    _spawned(_ddp_body)(rank, world, port, out, grad_accum)


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


def _full_params(model: torch.nn.Module) -> dict:
    """Parameters as full tensors (FSDP2 DTensor shards are gathered: a collective)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _fsdp_body(rank: int, out: str, stages: int) -> None:
    model, hist = ToyModel(dropout=0.0), []
    for _ in range(stages):  # one Trainer per stage on the same model, as train_curriculum does
        t = Trainer(model, ToyDataset(n=40), mse_loss, _config(), collate_fn=collate)
        hist += t.train()
    full = _full_params(t.model)
    sharded = any(hasattr(p, "full_tensor") for p in t.model.parameters())
    if rank == 0:
        torch.save({"params": full, "losses": [h["loss"] for h in hist], "sharded": sharded}, out)


def _fsdp_worker(rank: int, world: int, port: int, out: str, stages: int = 1) -> None:
    _spawned(_fsdp_body)(rank, world, port, out, stages, fsdp=True)


@pytest.mark.parametrize("stages", [1, 2])
def test_fsdp2_two_processes_equal_single_process(tmp_path, stages):
    """FSDP2 (``fully_shard``) through the Trainer on 2 CPU processes (gloo) == 1 process, full
    batch; with 2 stages a second Trainer takes the already-sharded model (curriculum stages)."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    out = str(tmp_path / "fsdp.pt")
    mp.spawn(_fsdp_worker, args=(2, _free_port(), out, stages), nprocs=2, join=True)
    res = torch.load(out)
    assert res["sharded"], "parameters were not sharded (FSDP2 did not wrap the model)"
    model, hist = ToyModel(dropout=0.0), []
    for _ in range(stages):
        single = Trainer(model, ToyDataset(n=40), mse_loss, _config(), collate_fn=collate)
        hist += single.train()
    for n, p in single.model.named_parameters():
        assert_close(n, res["params"][n], p, rtol=1e-5)
    assert res["losses"] == pytest.approx([h["loss"] for h in hist], rel=1e-5)


# FSDP2 checkpoints: cases are (directory, dropout). "det" (no dropout) also equals the single-process
# run; "dropout" checks that every process gets its own RNG stream back on resume.
_CKPT_CASES = (("det", 0.0), ("dropout", 0.1))
_MID = STEPS // 2


def _fsdp_ckpt_body(rank: int, root: str, phase: str) -> None:
    runs = []  # (dropout, out_dir, resume_from, result file)
    for case, drop in _CKPT_CASES:
        d = os.path.join(root, case)
        if phase == "train":  # uninterrupted, writing checkpoint-<_MID> on the way
            runs.append((drop, d, None, os.path.join(d, "uninterrupted.pt")))
        else:  # a fresh process group resumes from that checkpoint
            runs.append((drop, os.path.join(d, "resumed"), os.path.join(d, f"checkpoint-{_MID}"),
                         os.path.join(d, "resumed.pt")))
    if phase == "resume":  # and one from a single-process checkpoint
        runs.append((0.0, os.path.join(root, "from_single"), os.path.join(root, "single", f"checkpoint-{_MID}"),
                     os.path.join(root, "from_single.pt")))
    for drop, out_dir, resume_from, res in runs:
        torch.manual_seed(1000 + rank)  # scramble the global RNG: resume must restore it
        t = Trainer(ToyModel(dropout=drop), ToyDataset(n=40), mse_loss,
                    _config(out_dir=out_dir, checkpoint_every=_MID), collate_fn=collate)
        assert t.sharded, "FSDP2 did not shard the model"
        hist = t.train(resume_from=resume_from)
        full = _full_params(t.model)
        if rank == 0:
            torch.save({"params": full, "losses": [h["loss"] for h in hist], "steps": [h["step"] for h in hist]},
                       res)


def _fsdp_ckpt_worker(rank: int, world: int, port: int, root: str, phase: str) -> None:
    _spawned(_fsdp_ckpt_body)(rank, world, port, root, phase, fsdp=True)


def _assert_same_run(a: dict, b: dict, what: str) -> None:
    assert a["steps"] == b["steps"] == list(range(1, STEPS + 1)), what
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=1e-7), what
    assert a["params"].keys() == b["params"].keys(), what
    for n in a["params"]:
        assert_close(f"{what}: {n}", a["params"][n], b["params"][n], rtol=1e-5)


def _single_run(out_dir=None, resume_from=None) -> dict:
    t = Trainer(ToyModel(dropout=0.0), ToyDataset(n=40), mse_loss,
                _config(out_dir=out_dir, checkpoint_every=_MID if out_dir else 0), collate_fn=collate)
    hist = t.train(resume_from=resume_from)
    return {"params": {n: p.detach().clone() for n, p in t.model.named_parameters()},
            "losses": [h["loss"] for h in hist], "steps": [h["step"] for h in hist]}


def test_fsdp2_checkpoint_resumes_exactly(tmp_path):
    """FSDP2 on 2 CPU processes: train with a checkpoint midway, resume it in a fresh process group
    == the uninterrupted run (== the single-process run without dropout). The checkpoint holds full,
    unsharded weights (a single-process run loads and resumes it), and a single-process checkpoint
    resumes under FSDP2."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    root = str(tmp_path)
    single = _single_run(out_dir=os.path.join(root, "single"))  # also writes single/checkpoint-<_MID>
    mp.spawn(_fsdp_ckpt_worker, args=(2, _free_port(), root, "train"), nprocs=2, join=True)
    mp.spawn(_fsdp_ckpt_worker, args=(2, _free_port(), root, "resume"), nprocs=2, join=True)
    res = {case: {k: torch.load(os.path.join(root, case, f"{k}.pt")) for k in ("uninterrupted", "resumed")}
           for case, _ in _CKPT_CASES}

    _assert_same_run(res["det"]["uninterrupted"], single, "FSDP2 vs single process")
    for case, _ in _CKPT_CASES:
        _assert_same_run(res[case]["resumed"], res[case]["uninterrupted"], f"{case}: FSDP2 resumed vs uninterrupted")
    # dropout really drew random masks (else the "dropout" case checks nothing more than "det")
    assert res["dropout"]["uninterrupted"]["losses"] != pytest.approx(res["det"]["uninterrupted"]["losses"], rel=1e-5)

    # the FSDP2 checkpoint is a plain full safetensors file, tensor for tensor the single-process one
    ckpt = os.path.join(root, "det", f"checkpoint-{_MID}")
    fsdp_sd = load_file(os.path.join(ckpt, WEIGHTS_FILE))
    single_sd = load_file(os.path.join(root, "single", f"checkpoint-{_MID}", WEIGHTS_FILE))
    assert fsdp_sd.keys() == single_sd.keys() and "alias.weight" not in fsdp_sd  # the tied copy stored once
    for k, v in single_sd.items():
        assert type(fsdp_sd[k]) is torch.Tensor
        assert_close(k, fsdp_sd[k], v, rtol=1e-5)
    m = ToyModel(dropout=0.0, seed=1)
    load_model_weights(m, os.path.join(ckpt, WEIGHTS_FILE))
    assert torch.equal(m.alias.weight, fsdp_sd["out.weight"]) and torch.equal(m.frozen_scale, fsdp_sd["frozen_scale"])

    # a single process resumes the FSDP2 checkpoint, FSDP2 resumes the single-process one
    _assert_same_run(_single_run(resume_from=ckpt), single, "single process resumed from FSDP2")
    _assert_same_run(torch.load(os.path.join(root, "from_single.pt")), single, "FSDP2 resumed from single process")
