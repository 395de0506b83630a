"""Unreadable and missing weights files at every entry point: one error path.

Each entry point that reads weights (``train --resume``, ``evaluate``, ``predict --weights``,
``export --weights``, ``bench --weights`` and ``facemark.Predictor``) gets a file of random bytes,
a truncated checkpoint, and a file that does not exist. The command line must answer with one
line naming the file and a non-zero exit status (an exception escaping ``main`` would be a
traceback); the Python API raises :class:`facemark.errors.WeightsError` (missing:
:class:`~facemark.errors.WeightsNotFoundError`, also a ``FileNotFoundError``).
"""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

from engine_fixtures import make_wflw_fixture
from facemark.cli import main
from facemark.errors import WeightsError, WeightsNotFoundError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_wflw_fixture(tmp_path_factory.mktemp("wflw"), num_train=3, num_test=1)


def _bad_files(folder) -> dict:
    """Weights files that cannot be read, by what is wrong with them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    garbage = folder / "garbage.pt"
    garbage.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    whole = folder / "whole.pt"
    torch.save({"weight": torch.zeros(64, 64)}, whole)
    truncated = folder / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    not_onnx = folder / "garbage.onnx"
    not_onnx.write_bytes(garbage.read_bytes())
    fake_torchscript = folder / "fake_torchscript.pt"  # a zip with TorchScript's names, no valid records
    with zipfile.ZipFile(fake_torchscript, "w") as archive:
        archive.writestr("model/code/__torch__.py", "junk")
        archive.writestr("model/constants.pkl", "junk")
    return {"garbage": garbage, "truncated": truncated, "not_onnx": not_onnx, "fake_torchscript": fake_torchscript,
            "missing": folder / "missing.pt"}


def _command_line(tmp_path, dataset, entry: str, weights):
    if entry == "train --resume":
        # --resume reads <output_dir>/last.pt: the bad file goes there (or nothing, for "missing").
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        if weights.exists():
            (run_dir / "last.pt").write_bytes(weights.read_bytes())
        config = tmp_path / "recipe.yaml"
        config.write_text(yaml.safe_dump({"data": {"dataset": "wflw", "root": str(dataset), "workers": 0},
                                          "model": {"method": "slpt"}}))
        return ["train", str(config), "--resume", "--output-dir", str(run_dir), "--device", "cpu"], run_dir / "last.pt"
    argv = {
        "evaluate": ["evaluate", str(weights), "--data", str(dataset), "--dataset", "wflw", "--workers", "0",
                     "--device", "cpu", "--no-progress"],
        "predict": ["predict", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "out"), "--no-progress"],
        "export": ["export", "--weights", str(weights), "--out", str(tmp_path / "model.onnx")],
        "bench": ["bench", "--weights", str(weights), "--backends", "eager", "--device", "cpu"],
    }[entry]
    return argv, weights


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing"])
@pytest.mark.parametrize("entry", ["train --resume", "evaluate", "predict", "export", "bench"])
def test_command_line_unreadable_weights_is_one_line(tmp_path, dataset, capsys, entry, kind):
    argv, named = _command_line(tmp_path, dataset, entry, _bad_files(tmp_path / "weights")[kind])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # anything else escaping main is a traceback
        main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # training logs its progress (INFO lines) before it reads last.pt
    prefix = f"facemark {entry.split()[0]}: error: "
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], err
    assert lines[-1].startswith(prefix) and str(named) in lines[-1], err
    assert "Traceback" not in err and "usage:" not in err


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not_onnx", "fake_torchscript", "missing"])
def test_predictor_raises_weights_error_naming_the_file(tmp_path, kind):
    from facemark import Predictor

    path = _bad_files(tmp_path)[kind]
    expected = WeightsNotFoundError if kind == "missing" else WeightsError
    with pytest.raises(expected) as error_info:
        Predictor(path, detector=None)
    message = str(error_info.value)
    assert str(path) in message and "\n" not in message
    if kind == "missing":
        assert isinstance(error_info.value, FileNotFoundError)
