"""No entry point runs code from a file: weights and checkpoints are read with the restricted
unpickler (``torch.load(weights_only=True)``), TorchScript programs only when trusted.

Each payload file, when unpickled the ordinary way, creates a marker file. The tests first show
that the payload is live (the ordinary unpickler runs it), then give the file to every entry point
and check that the marker was never created and that the error names the file.
"""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from engine_fixtures import TINY_METHODS, make_wflw_fixture, tiny_config
from facemark.cli import main
from facemark.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model, save_checkpoint
from facemark.engine.train import train
from facemark.inference.export import export_model
from facemark.inference.predictor import OFFICIAL_SLPT_KEYS, Predictor
from facemark.models.official_slpt import load_official_slpt
from facemark.errors import WeightsError
from facemark.models.weights import load_matching_weights


class Payload:
    """Unpickling this calls ``exec`` with code that creates ``marker``: what an attacker's file does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('code ran')",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real (tiny) facemark run: its checkpoint is the base of the 'valid checkpoint + payload' file."""
    folder = tmp_path_factory.mktemp("trained")
    root = make_wflw_fixture(folder / "wflw", num_train=6, num_test=2)
    config = tiny_config(root, folder / "run", "optim.epochs=1")
    result = train(config, methods=TINY_METHODS)
    return folder, root, config, result


def _payload_files(folder, trained_checkpoint, marker):
    """The three kinds of crafted file, each proven live with the ordinary unpickler."""
    raw = folder / "raw_pickle.pt"
    with open(raw, "wb") as file:
        pickle.dump({"state_dict": Payload(marker)}, file)

    # A valid facemark checkpoint with one extra entry: it would work normally after the payload ran.
    checkpoint = load_checkpoint(trained_checkpoint)
    checkpoint["notes"] = Payload(marker)
    zipped = folder / "checkpoint_with_payload.pt"
    torch.save(checkpoint, zipped)

    # The authors' SLPT release layout (a plain state dict, recognised by its keys) with a payload.
    authors = {key: torch.zeros(2) for key in OFFICIAL_SLPT_KEYS}
    authors["Transformer.Transformer_block.layers.0.linear1.bias"] = Payload(marker)
    authors_file = folder / "WFLW_6_layer.pth"
    torch.save({"state_dict": authors}, authors_file)

    files = {"raw pickle": raw, "zip checkpoint": zipped, "authors' state dict": authors_file}
    for name, path in files.items():
        if name == "raw pickle":
            with open(path, "rb") as file:
                pickle.load(file)  # the ordinary unpickler ...
        else:
            torch.load(path, weights_only=False)  # ... or torch's, unrestricted ...
        assert marker.read_text() == "code ran", name  # ... runs the payload
        marker.unlink()
    return files


@pytest.fixture()
def payloads(tmp_path, trained):
    marker = tmp_path / "marker.txt"
    return marker, _payload_files(tmp_path, trained[3].best_checkpoint, marker)


def test_library_loaders_refuse_payloads_without_running_them(payloads, trained):
    marker, files = payloads
    module = torch.nn.Linear(2, 2)
    for name, path in files.items():
        loaders = {
            "load_checkpoint": lambda: load_checkpoint(path),
            "load_model": lambda: load_model(path, methods=TINY_METHODS),
            "Predictor": lambda: Predictor(path, detector=None),
            "Predictor onnx": lambda: Predictor(path, backend="onnx", detector=None),
            "export_model": lambda: export_model(path, path.with_suffix(".onnx")),
            "load_official_slpt": lambda: load_official_slpt(path),
            "pretrained backbone": lambda: load_matching_weights(module, path, "ImageNet HRNet"),
        }
        for loader_name, load in loaders.items():
            with pytest.raises(WeightsError) as caught:
                load()
            assert str(path) in str(caught.value), (name, loader_name)
            assert "pickled Python object" in str(caught.value), (name, loader_name)
            assert not marker.exists(), f"{loader_name} ran the code in the {name} file"


def test_resume_refuses_a_payload_last_checkpoint(payloads, trained, tmp_path):
    marker, files = payloads
    _, root, _, result = trained
    run = tmp_path / "run"
    shutil.copytree(result.best_checkpoint.parent, run)
    shutil.copy(files["zip checkpoint"], run / "last.pt")
    config = tiny_config(root, run, "optim.epochs=2")
    with pytest.raises(WeightsError, match=r"last\.pt could not be read: it holds pickled Python objects"):
        train(config, resume=True, methods=TINY_METHODS)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_command_line_refuses_payloads_with_one_line(command, payloads, trained, tmp_path, capsys):
    marker, files = payloads
    _, root, _, _ = trained
    image = next((root / "WFLW_images").rglob("*.png"))
    for name, path in files.items():
        argv = {
            "evaluate": ["evaluate", str(path), "--data", str(root), "--dataset", "wflw", "--split", "test", "--workers", "0"],
            "predict": ["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "out"), "--box", "0,0,63,63"],
            "export": ["export", "--weights", str(path), "--out", str(tmp_path / "model.onnx")],
        }[command]
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        error = capsys.readouterr().err
        assert str(path) in error and "pickled Python object" in error and "Traceback" not in error, (name, error)
        assert not marker.exists(), f"facemark {command} ran the code in the {name} file"


def test_checkpoints_hold_only_tensors_and_plain_values(trained, tmp_path):
    result = trained[3]
    for path in (result.best_checkpoint, result.best_checkpoint.parent / "last.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        state = torch.load(path, weights_only=True)  # the strict loader, no allow-list
        assert state["format"] == CHECKPOINT_FORMAT and state["version"] == 2
    # Numpy arrays (statistics, the NumPy RNG state) come back as numpy arrays of the same dtype.
    state = load_checkpoint(result.best_checkpoint)
    mean_face = state["model_spec"]["statistics"]["mean_face"]
    assert isinstance(mean_face, np.ndarray) and mean_face.shape == (98, 2)
    assert state["rng"][0]["numpy"][1].dtype == np.uint32  # one state per process

    # Anything else is refused when saving, naming where it is.
    with pytest.raises(TypeError, match=r"state\.config\.callback"):
        save_checkpoint({"config": {"callback": Payload(tmp_path / "never")}}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_format_1_checkpoints_with_pickled_numpy_still_load(trained, tmp_path):
    """Files written before plain-type checkpoints pickled numpy arrays: they load with only
    numpy's array reconstruction allowed, and give the same model."""
    result = trained[3]
    state = load_checkpoint(result.best_checkpoint)
    state["version"] = 1
    old = tmp_path / "format1.pt"
    torch.save(state, old)  # numpy arrays pickled as such, as format 1 did
    assert any("numpy" in name for name in torch.serialization.get_unsafe_globals_in_checkpoint(old))
    loaded = load_model(old, methods=TINY_METHODS)
    reference = load_model(result.best_checkpoint, methods=TINY_METHODS)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(images).landmarks, reference.model(images).landmarks)


def test_a_file_that_is_no_weights_file_says_so(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match=r"notes\.pt could not be read: it is not a PyTorch weights file"):
        Predictor(text, detector=None)
