"""``facemark predict`` on many images: results streamed to predictions.jsonl, --resume, two runs
into one --out, worker processes, batches across images, and sharding over 2 gloo processes."""
from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from facemark.data.transforms import CropConvention
from facemark.errors import CommandError
from facemark.inference import batch
from facemark.inference.commands import add_predict_arguments, run_predict
from facemark.inference.predictor import Predictor
from facemark.inference.stream import StreamWriter, read_stream
from facemark.models.slpt import load_official_mean_face

pytest.importorskip("onnxruntime")
BOX = "6,6,42,42"
CROP = CropConvention("landmarks", 1.2, 32)


class ImageDependentModel(nn.Module):
    """The mean face moved by the crop's mean colour: every image gets its own landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_face", load_official_mean_face(98).float())
        self.shift = nn.Parameter(torch.tensor([0.05, -0.03]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images.mean(dim=(1, 2, 3))[:, None, None]
        return self.mean_face.expand(images.shape[0], -1, -1) + self.shift * brightness


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    from facemark.inference.export import export_model

    path = tmp_path_factory.mktemp("weights") / "model.onnx"
    export_model(ImageDependentModel(), path, "onnx", layout="wflw98", crop_convention=CROP)
    return str(path)


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` small noise images in two sub-folders (a recursive, sorted walk)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        path = folder / f"part{index % 2}" / f"image{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    return folder


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    return parser.parse_args([*argv, "--no-progress"])


def _predict(inputs, model_file, out, *options) -> int:
    return run_predict(_args(*map(str, inputs), "--weights", model_file, "--box", BOX, "--out", str(out), *options))


def _predict_in_subprocess(prelude: str, folder: Path, model_file: str, out: Path, workers: int) -> dict:
    """``facemark predict`` with ``--workers`` in a fresh Python process after ``prelude`` (code
    that sets up a hazard for forked workers), so that a hang fails the test (timeout) instead of
    stopping CI; returns predictions.json."""
    import subprocess
    import sys

    script = prelude + "from facemark.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    result = subprocess.run([sys.executable, "-c", script, "predict", str(folder), "--weights", model_file, "--box", BOX,
                             "--out", str(out), "--workers", str(workers), "--no-progress"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(batch.__file__).parents[2])})
    assert result.returncode == 0, result.stderr
    return json.loads((out / "predictions.json").read_text())


def test_streamed_output_equals_the_all_at_end_document(tmp_path, model_file):
    folder = _images(tmp_path / "photos", 5)
    out = tmp_path / "out"
    assert _predict([folder], model_file, out, "--batch-size", "3") == 0
    text = (out / "predictions.json").read_text()
    document = json.loads(text)
    # What facemark predict wrote before streaming: one json.dumps(document, indent=1) at the end,
    # images in the order of the sorted recursive walk, each predicted on its own.
    assert text == json.dumps(document, indent=1)
    predictor = Predictor(model_file, detector=None)
    box = np.array([[float(v) for v in BOX.split(",")]])
    files = sorted(folder.rglob("*.png"))
    expected = [{"file": str(path), "width": 48, "height": 48, "faces": [face.to_dict() for face in predictor.predict(str(path), box)]}
                for path in files]
    assert document["images"] == expected
    assert len({json.dumps(entry["faces"]) for entry in expected}) == 5  # the model tells the images apart
    assert (document["videos"], document["failed"], document["skipped_links"]) == ([], [], [])
    assert list(document)[:3] == ["weights", "model", "backend"] and document["crop_convention"]["size"] == 32
    # The stream: a header, then one line per image, each a complete record.
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "header" and len(lines) == 6
    assert [{k: v for k, v in json.loads(line).items() if k != "type"} for line in lines[1:]] == expected

    # Batch 1, one image at a time, and 2 worker processes give the same file; so does CSV.
    for options in (("--batch-size", "1"), ("--workers", "2", "--batch-size", "4")):
        other = tmp_path / f"out{'_'.join(options)}"
        assert _predict([folder], model_file, other, *options) == 0
        assert (other / "predictions.json").read_text() == text, options
    csv_out = tmp_path / "csv"
    assert _predict([folder], model_file, csv_out, "--format", "csv") == 0
    rows = (csv_out / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 6 and rows[0].startswith("file,frame,face,track,box_source,score,box_x_min")
    first = rows[1].split(",")
    assert first[0] == str(files[0]) and [float(v) for v in first[10:12]] == expected[0]["faces"][0]["landmarks"][0]


def test_resume_after_a_stopped_run_processes_only_the_rest(tmp_path, model_file, capsys):
    folder = _images(tmp_path / "photos", 6)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _predict([folder], model_file, straight) == 0
    assert _predict([folder], model_file, stopped, "--batch-size", "1") == 0
    # A run killed while writing its 4th record: 3 complete lines and part of the 4th.
    stream = stopped / "predictions.jsonl"
    lines = stream.read_bytes().splitlines(keepends=True)
    stream.write_bytes(b"".join(lines[:4]) + lines[4][:40])
    (stopped / "predictions.json").unlink()
    capsys.readouterr()
    assert _predict([folder], model_file, stopped, "--resume") == 0
    captured = capsys.readouterr()
    assert "dropped a cut-off last record" in captured.err
    assert f"3 inputs already in {stopped} were skipped (--resume)" in captured.out
    records = [record for _, record in read_stream(stream)]
    assert sorted(record["file"] for record in records) == sorted(str(p) for p in folder.rglob("*.png"))  # each once
    assert (stopped / "predictions.json").read_text() == (straight / "predictions.json").read_text()
    # Resuming a finished run processes nothing and writes the same file.
    assert _predict([folder], model_file, stopped, "--resume") == 0
    assert len(list(read_stream(stream))) == 6
    assert (stopped / "predictions.json").read_text() == (straight / "predictions.json").read_text()


def test_a_second_run_into_the_same_out_keeps_the_first_runs_results(tmp_path, model_file):
    first, second = _images(tmp_path / "first", 2, seed=1), _images(tmp_path / "second", 3, seed=2)
    out = tmp_path / "out"
    assert _predict([first], model_file, out) == 0
    before = (out / "predictions.json").read_text()
    with pytest.raises(CommandError, match=r"already holds predictions \(predictions\.jsonl, predictions\.json\); "
                                           r"pass --resume .* or give another --out"):
        _predict([second], model_file, out)
    assert (out / "predictions.json").read_text() == before
    assert _predict([second], model_file, out, "--resume") == 0
    document = json.loads((out / "predictions.json").read_text())
    names = [entry["file"] for entry in document["images"]]
    # This run's inputs in their order, then those only the first run had.
    assert names == [str(p) for p in sorted(second.rglob("*.png"))] + [str(p) for p in sorted(first.rglob("*.png"))]
    first_entries = {entry["file"]: entry for entry in json.loads(before)["images"]}
    assert all(entry == first_entries[entry["file"]] for entry in document["images"] if entry["file"] in first_entries)

    # Another process writing into the same file holds its lock: a run into it is refused.
    with StreamWriter(out / "predictions.jsonl", batch._header(Predictor(model_file, detector=None), _args(
            "x", "--weights", model_file, "--box", BOX))):
        with pytest.raises(CommandError, match="is being written by another facemark predict"):
            _predict([second], model_file, out, "--resume")
    # --resume with other settings would mix two models' landmarks in one file.
    with pytest.raises(CommandError, match=r"predictions.jsonl was written with passes 1, this run has 2"):
        _predict([second], model_file, out, "--resume", "--passes", "2")


def test_failures_are_retried_on_resume_and_reported(tmp_path, model_file, capsys):
    folder = _images(tmp_path / "photos", 2)
    broken = folder / "part0" / "broken.png"
    broken.write_bytes(b"not a PNG")
    out = tmp_path / "out"
    assert _predict([folder, tmp_path / "missing.png"], model_file, out, "--workers", "1") == 1
    document = json.loads((out / "predictions.json").read_text())
    assert [entry["file"] for entry in document["failed"]] == [str(tmp_path / "missing.png"), str(broken)]
    assert "could not be decoded" in document["failed"][1]["reason"]
    cv2.imwrite(str(broken), np.full((48, 48, 3), 128, np.uint8))  # repaired
    capsys.readouterr()
    assert _predict([folder], model_file, out, "--resume") == 0
    assert "2 inputs already in" in capsys.readouterr().out
    document = json.loads((out / "predictions.json").read_text())
    assert str(broken) in [entry["file"] for entry in document["images"]]
    assert [entry["file"] for entry in document["failed"]] == [str(tmp_path / "missing.png")]


def test_records_are_written_not_kept(tmp_path, model_file, monkeypatch):
    # Memory stays flat in the number of images: neither the stream writer nor the run holds any
    # collection of results; each record goes to the file when its image is done.
    writer = StreamWriter(tmp_path / "s.jsonl", {"model": "m"})
    for index in range(100):
        writer.write({"type": "image", "file": f"{index}.png", "faces": []})
    assert [name for name, value in vars(writer).items() if isinstance(value, (list, dict, set, tuple))] == []
    writer.close()
    assert len(list(read_stream(tmp_path / "s.jsonl"))) == 100

    runs, finished = [], []

    class Watched(batch._Run):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)

        def _finish(self, group, bar):
            super()._finish(group, bar)
            # After each group the file holds every finished image: nothing waits in memory.
            finished.extend(loaded.item.path for loaded in group)
            assert len(list(read_stream(self.writer.path))) == len(finished)

    monkeypatch.setattr(batch, "_Run", Watched)
    assert _predict([_images(tmp_path / "photos", 7)], model_file, tmp_path / "out", "--batch-size", "2") == 0
    (run,) = runs
    assert len(finished) == 7
    assert [name for name, value in vars(run).items() if isinstance(value, (list, dict, set, tuple))] == []


def test_a_bad_stream_line_is_an_error_naming_the_file_and_line(tmp_path, model_file):
    folder = _images(tmp_path / "photos", 2)
    out = tmp_path / "out"
    assert _predict([folder], model_file, out) == 0
    stream = out / "predictions.jsonl"
    lines = stream.read_text().splitlines(keepends=True)
    stream.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(CommandError, match=r"predictions.jsonl: line 2: not a JSON record"):
        _predict([folder], model_file, out, "--resume")


# -- sharding over torch.distributed ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sharded_worker(rank: int, world_size: int, port: int, argv: list[str], result_dir: str) -> None:
    """One rank of a ``torchrun``-like launch of ``facemark predict`` (``mp.spawn`` target)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    code = run_predict(_args(*argv))
    Path(result_dir, f"rank{rank}.code").write_text(str(code))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch built without gloo")
def test_two_gloo_processes_merge_to_the_single_process_output(tmp_path, model_file, monkeypatch):
    folder = _images(tmp_path / "photos", 5)
    (folder / "part1" / "broken.png").write_bytes(b"not a PNG")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _predict([folder], model_file, single) == 1
    argv = [str(folder), "--weights", model_file, "--box", BOX, "--out", str(sharded), "--batch-size", "2"]
    mp.spawn(sharded_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    assert (sharded / "predictions.json").read_text() == (single / "predictions.json").read_text()
    # Each rank wrote its own shard: every other input of the sorted order.
    shards = [sorted(record["file"] for _, record in read_stream(sharded / f"predictions.rank{rank}.jsonl")) for rank in (0, 1)]
    order = [str(p) for p in sorted(folder.rglob("*.png"))]
    assert shards == [order[0::2], order[1::2]]
    assert not (sharded / "predictions.jsonl").exists()
    # The broken image is rank 1's (order[3]): rank 1 exits 1; rank 0 reports the merged failure.
    assert order[3].endswith("broken.png")
    assert [(tmp_path / f"rank{rank}.code").read_text() for rank in (0, 1)] == ["1", "1"]


def test_workers_do_not_hang_after_opencv_used_its_threads(tmp_path, model_file):
    # OpenCV's thread pool does not survive fork: workers forked from a process whose pool ran
    # must not inherit it. In a subprocess, so that a hang fails the test instead of stopping CI.
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "large.png"), np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    prelude = (
        "import sys, cv2, numpy as np\n"
        "cv2.setNumThreads(2)\n"
        "for _ in range(5): cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (31, 31), 0)\n"  # the pool runs
    )
    assert len(_predict_in_subprocess(prelude, folder, model_file, tmp_path / "out", workers=2)["images"]) == 1


def test_workers_cut_the_faces_out(tmp_path, model_file, monkeypatch):
    # The crops of the first pass are made where the image is decoded: in the worker processes.
    folder = _images(tmp_path / "photos", 4)
    cropped_in = tmp_path / "cropped_in"
    crop_request = Predictor.crop_request

    def noted_crop_request(self, image, request):
        with cropped_in.open("a") as file:
            file.write(f"{os.getpid()}\n")
        return crop_request(self, image, request)

    monkeypatch.setattr(Predictor, "crop_request", noted_crop_request)
    assert _predict([folder], model_file, tmp_path / "out", "--workers", "1") == 0
    pids = cropped_in.read_text().split()
    assert len(pids) == 4 and str(os.getpid()) not in pids
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]) == 4


def test_a_worker_that_collects_an_inherited_onnx_session_does_not_hang(tmp_path, model_file):
    # A forked worker inherits the parent's unreachable objects, but not its threads. An ONNX
    # Runtime session left in a reference cycle, whose thread pool waits on a condition variable
    # when the worker is forked, hangs the worker for good if the worker's garbage collector frees
    # it (pthread_cond_destroy). In CI that collection came at the worker's very start (torch's
    # worker loop seeding its generators), before any worker_init_fn; here every forked process
    # runs a full collection first thing (os.register_at_fork). WorkerLoader forks with all
    # objects frozen (facemark.engine.data.fork_safely). In a subprocess, so that a hang fails the
    # test instead of stopping CI.
    folder = _images(tmp_path / "photos", 3)
    prelude = (
        "import gc, os, sys, time\n"
        "import numpy as np, onnxruntime\n"
        "class Holder: pass\n"
        "holder = Holder(); holder.itself = holder\n"
        "options = onnxruntime.SessionOptions(); options.intra_op_num_threads = 2\n"
        f"holder.session = onnxruntime.InferenceSession({model_file!r}, options, providers=['CPUExecutionProvider'])\n"
        "name = holder.session.get_inputs()[0].name\n"
        "holder.session.run(None, {name: np.zeros((64, 3, 32, 32), np.float32)})\n"
        "gc.disable(); del holder  # garbage this process has not collected\n"
        "time.sleep(1.0)  # the session's pool threads now wait on their condition variable\n"
        "os.register_at_fork(after_in_child=gc.collect)\n"
    )
    assert len(_predict_in_subprocess(prelude, folder, model_file, tmp_path / "out", workers=1)["images"]) == 3
