"""Distributed data-parallel training: two CPU processes on gloo end with identical weights."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from engine_fixtures import distributed_worker, make_wflw_fixture
from facemark.engine.checkpoint import load_checkpoint
from facemark.engine.distributed import DistributedContext, broadcast_flag, init_distributed, resolve_device


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch built without gloo")
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    root = make_wflw_fixture(tmp_path / "wflw", num_train=6, num_test=2)
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(distributed_worker, args=(2, _free_port(), str(root), str(tmp_path / "run"), str(results)),
             nprocs=2, join=True)
    rank0 = torch.load(results / "rank0.pt")
    rank1 = torch.load(results / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]) or key.endswith(("running_mean", "running_var", "num_batches_tracked")), key
    # Only rank 0 writes checkpoints, and they hold the trained weights.
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and len(state["rng"]) == 2
    for key, value in state["model"].items():
        assert torch.equal(value, rank0[key]), key
    # Each rank saw a different shard: BatchNorm statistics differ (they are not synchronised).
    assert not torch.equal(rank0["features.3.running_mean"], rank1["features.3.running_mean"])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch built without gloo")
def test_two_process_run_resumed_ends_like_an_uninterrupted_one(tmp_path):
    # A 2-process run stopped after epoch 1 (its checkpoint holds both ranks' RNG states) and
    # resumed with 2 processes ends with exactly the weights of an uninterrupted 3-epoch run.
    root = make_wflw_fixture(tmp_path / "wflw", num_train=6, num_test=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for folder in (straight, resumed):
        (folder / "results").mkdir(parents=True)
    three_epochs = ("optim.epochs=3", "optim.milestones=[2]")
    mp.spawn(distributed_worker, args=(2, _free_port(), str(root), str(straight / "run"), str(straight / "results"),
                                       three_epochs), nprocs=2, join=True)
    mp.spawn(distributed_worker, args=(2, _free_port(), str(root), str(resumed / "run"), str(resumed / "results"),
                                       ("optim.epochs=1", "optim.milestones=[2]")), nprocs=2, join=True)
    assert load_checkpoint(resumed / "run" / "last.pt")["epoch"] == 1
    mp.spawn(distributed_worker, args=(2, _free_port(), str(root), str(resumed / "run"), str(resumed / "results"),
                                       three_epochs, True), nprocs=2, join=True)
    assert "resumed from" in (resumed / "run" / "train.log").read_text()
    for rank in (0, 1):
        expected = torch.load(straight / "results" / f"rank{rank}.pt")
        actual = torch.load(resumed / "results" / f"rank{rank}.pt")
        for key in expected:
            assert torch.equal(actual[key], expected[key]), (rank, key)
    assert load_checkpoint(resumed / "run" / "last.pt")["epoch"] == 3


def test_single_process_context_and_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(0, 0, 1, torch.device("cpu")) and context.is_main
    assert broadcast_flag(True, context) and not broadcast_flag(False, context)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
