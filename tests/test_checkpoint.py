"""Checkpoints: atomic writes, RNG states, clear errors, and rebuilding a model from the file alone."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from engine_fixtures import TINY_METHODS, make_wflw_fixture, tiny_config
from facemark.engine import checkpoint as checkpoint_module
from facemark.engine.checkpoint import capture_rng_state, load_checkpoint, load_model, restore_rng_state, save_checkpoint
from facemark.engine.train import train


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.arange(3)}, path)
    assert load_checkpoint(path)["epoch"] == 1

    # A write that dies half-way leaves the previous checkpoint intact and no temporary file.
    def failing_save(state, file):
        file.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]

    save_checkpoint({"epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 3


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt could not be read"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a facemark checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_rng_states_round_trip():
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])


def test_load_model_rebuilds_from_the_file_alone(tmp_path):
    root = make_wflw_fixture(tmp_path / "wflw", num_train=6, num_test=2)
    result = train(tiny_config(root, tmp_path / "run", "optim.epochs=1"), methods=TINY_METHODS)
    images = torch.randn(2, 3, 64, 64)
    result.model.eval()
    with torch.no_grad():
        expected = result.model(images).landmarks

    # Only the checkpoint file survives: no config, no dataset.
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(result.best_checkpoint, alone)
    shutil.rmtree(tmp_path / "run")
    shutil.rmtree(root)
    loaded = load_model(alone, methods=TINY_METHODS)
    assert not loaded.model.training
    assert loaded.layout.name == "wflw98" and loaded.crop.size == 64 and loaded.crop.box_source == "landmarks"
    assert loaded.method == "tiny" and loaded.epoch == 1 and loaded.config["optim"]["epochs"] == 1
    with torch.no_grad():
        assert torch.equal(loaded.model(images).landmarks, expected)

    # Weights that do not fit the described model are an error, not a partial load.
    state = load_checkpoint(alone)
    state["model"].pop("head.bias")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "broken.pt", methods=TINY_METHODS)


def test_interrupted_writes_are_cleaned_and_a_damaged_last_checkpoint_names_the_way_out(tmp_path):
    root = make_wflw_fixture(tmp_path / "wflw", num_train=6, num_test=2)
    run = tmp_path / "run"
    train(tiny_config(root, run, "optim.epochs=1"), methods=TINY_METHODS)
    # What a write killed between mkstemp and os.replace leaves behind.
    stale = [run / ".last.pt.k3x9q.tmp", run / ".best.pt.a1b2c3.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    # A truncated last.pt (disk full, a copy cut short).
    last = run / "last.pt"
    complete = last.read_bytes()
    last.unlink()  # a new file (best.pt may be a hard link of the same epoch's last.pt)
    last.write_bytes(complete[: len(complete) // 2])

    config = tiny_config(root, run, "optim.epochs=2")
    with pytest.raises(ValueError) as caught:
        train(config, resume=True, methods=TINY_METHODS)
    message = str(caught.value)
    assert "last.pt could not be read" in message
    assert f"{run / 'best.pt'} (after epoch 1)" in message and f"--resume-from {run / 'best.pt'}" in message
    assert not any(path.exists() for path in stale)
    assert "left by a checkpoint write that was interrupted" in (run / "train.log").read_text()

    result = train(config, resume_from=run / "best.pt", methods=TINY_METHODS)
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 2
