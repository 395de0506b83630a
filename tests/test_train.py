"""The training loop on a tiny WFLW-format fixture with a tiny model: outputs, validation carving,
statistics from the training part only, divergence handling, exact resume after SIGKILL, and
evaluate / score."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import TINY_METHODS, make_wflw_fixture, tiny_config, one_thread  # noqa: F401 (autouse fixture)
from facemark.data import load_dataset
from facemark.data.transforms import CropConvention
from facemark.engine.checkpoint import load_checkpoint
from facemark.engine.config import ConfigError, load_config
from facemark.engine.data import CropDataset, EpochSampler, WorkerLoader, carve_validation, training_shapes, worker_init
from facemark.engine.evaluate import evaluate, load_predictions, save_predictions, score
from facemark.engine.train import TrainingDiverged, train

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return make_wflw_fixture(tmp_path_factory.mktemp("wflw"), num_train=6, num_test=3)


def _weights(state_dict) -> dict:
    return {key: value.clone() for key, value in state_dict.items()}


def test_train_writes_checkpoints_logs_and_uses_training_statistics(fixture_root, tmp_path):
    config = tiny_config(fixture_root, tmp_path / "run")
    result = train(config, methods=TINY_METHODS)
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv", "train.log"):
        assert (tmp_path / "run" / name).is_file(), name
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,global_step,lr,train_loss,val_nme") and len(lines) == 3
    state = load_checkpoint(result.last_checkpoint)
    assert state["epoch"] == 2 and state["global_step"] == 4  # 4 training faces / batch 2 x 2 epochs
    assert state["scheduler"]["last_epoch"] == 2 and state["optimizer"]["state"]
    assert 0 < result.best_metric < 1 and result.best_epoch in (1, 2)

    # The mean face comes from the carved training part only (never the held-out faces).
    crop = CropConvention(box_source="landmarks", enlarge=1.2, size=64)
    train_part, val_part = carve_validation(load_dataset("wflw", fixture_root, "train"), 0.34, seed=0)
    assert (len(train_part), len(val_part)) == (4, 2)
    expected = training_shapes(train_part, crop).crop.mean(axis=0)
    np.testing.assert_allclose(state["model_spec"]["statistics"]["mean_face"], expected)
    assert state["model_spec"]["crop"] == crop.to_dict()

    # A second run into the same folder must not overwrite it; resume needs a checkpoint.
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, methods=TINY_METHODS)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(fixture_root, tmp_path / "empty"), resume=True, methods=TINY_METHODS)


def test_carved_validation_is_seeded_and_disjoint(fixture_root):
    dataset = load_dataset("wflw", fixture_root, "train")
    train_a, val_a = carve_validation(dataset, 0.34, seed=3)
    train_b, val_b = carve_validation(dataset, 0.34, seed=3)
    assert [r.identifier for r in val_a] == [r.identifier for r in val_b]
    assert not {r.identifier for r in train_a} & {r.identifier for r in val_a}
    assert len(train_a) + len(val_a) == len(dataset)
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(dataset, 0.99, seed=0)


def test_augmented_samples_depend_on_seed_epoch_and_index_only(fixture_root):
    from facemark.data.transforms import slpt_augmentation

    dataset = load_dataset("wflw", fixture_root, "train")
    crop = CropConvention(size=64)
    samples = CropDataset(dataset.records, dataset.layout, crop, slpt_augmentation(), seed=1)
    first = samples[2]
    assert torch.equal(samples[2]["image"], first["image"])
    samples.set_epoch(1)
    assert not torch.equal(samples[2]["image"], first["image"])
    samples.set_epoch(0)
    # Loading through two worker processes gives the same batches as the main process.
    def batches(workers: int):
        loader = WorkerLoader(samples, batch_size=3, num_workers=workers)
        return [batch["target"] for batch in loader]
    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


@pytest.fixture
def opencv_pool_ran():
    """This process's OpenCV thread pool has run (as after any OpenCV work with its default
    threads): loader workers forked now inherit a pool whose threads they do not have."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    for _ in range(3):
        cv2.GaussianBlur(np.zeros((1500, 1500, 3), np.uint8), (31, 31), 0)
    yield
    cv2.setNumThreads(threads)


def test_forked_loader_workers_do_not_hang_after_the_opencv_pool_ran(fixture_root, tmp_path):
    # Workers that reconfigure an inherited OpenCV pool hang (pthread_cond_destroy); those that
    # use it hang too. WorkerLoader forks them with OpenCV's threads off. In a subprocess, so that
    # a hang fails the test instead of stopping CI.
    script = (
        "import sys, cv2, numpy as np, torch\n"
        "from facemark.data import load_dataset\n"
        "from facemark.data.transforms import CropConvention\n"
        "from facemark.engine.data import CropDataset, EpochSampler, WorkerLoader\n"
        "cv2.setNumThreads(2)\n"
        "for _ in range(3): cv2.GaussianBlur(np.zeros((1500, 1500, 3), np.uint8), (31, 31), 0)  # the pool runs\n"
        "dataset = load_dataset('wflw', sys.argv[1], 'train')\n"
        "samples = CropDataset(dataset.records, dataset.layout, CropConvention(size=64))\n"
        "loader = WorkerLoader(samples, batch_size=2, sampler=EpochSampler(range(len(samples))), num_workers=2,\n"
        "                      persistent_workers=True)\n"
        "for epoch in range(2): assert sum(len(batch['image']) for batch in loader) == len(samples)\n"
        "assert cv2.getNumThreads() == 2  # the main process's setting is back\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(fixture_root)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]


def test_persistent_workers_draw_each_epochs_augmentations(fixture_root, tmp_path, opencv_pool_ran):
    from facemark.data.transforms import slpt_augmentation

    dataset = load_dataset("wflw", fixture_root, "train")
    samples = CropDataset(dataset.records, dataset.layout, CropConvention(size=64), slpt_augmentation(), seed=1)
    sampler = EpochSampler(torch.utils.data.DistributedSampler(samples, num_replicas=1, rank=0, shuffle=True, seed=1))
    started = tmp_path / "started"

    def note_start(worker_id):
        with started.open("a") as file:
            file.write(f"{os.getpid()}\n")
        worker_init(worker_id)

    loader = WorkerLoader(samples, batch_size=2, sampler=sampler, num_workers=1, persistent_workers=True,
                          worker_init_fn=note_start)
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen[epoch] = {int(i): image for batch in loader for i, image in zip(batch["index"], batch["image"])}
    assert len(started.read_text().split()) == 1  # one worker process served both epochs
    for index in range(len(samples)):
        for epoch in (0, 1):  # what the main process draws for (epoch, index)
            assert torch.equal(seen[epoch][index], samples[(epoch, index)]["image"]), (epoch, index)
        assert not torch.equal(seen[0][index], seen[1][index]), index
    del loader


def test_training_workers_persist_and_train_as_without_workers(fixture_root, tmp_path, monkeypatch, opencv_pool_ran):
    import facemark.engine.data as engine_data

    started = tmp_path / "started"

    def note_start(worker_id):
        if torch.utils.data.get_worker_info().dataset.augmentation is not None:  # the training loader's
            with started.open("a") as file:
                file.write(f"{os.getpid()}\n")
        worker_init(worker_id)

    monkeypatch.setattr(engine_data, "worker_init", note_start)  # every loader's workers (validation's too)
    sgd = "optim.optimizer=sgd"  # see test_channels_last_training_trains_the_same_model
    with_workers = train(tiny_config(fixture_root, tmp_path / "workers", sgd, "optim.epochs=3", "data.workers=1",
                                     "data.persistent_workers=true"),
                         methods=TINY_METHODS).model
    assert len(started.read_text().split()) == 1  # one loader worker for the 3 epochs
    reference = train(tiny_config(fixture_root, tmp_path / "main", sgd, "optim.epochs=3"), methods=TINY_METHODS).model
    for key, value in reference.state_dict().items():
        assert torch.equal(with_workers.state_dict()[key], value), key


def test_select_on_test_is_warned_about(fixture_root, tmp_path):
    config = tiny_config(fixture_root, tmp_path / "run", "runtime.select_on=test", "optim.epochs=1")
    train(config, methods=TINY_METHODS)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING" in log and "TEST split" in log and "optimistic" in log


def test_unknown_method_option_is_an_error_listing_the_allowed(fixture_root, tmp_path):
    config = tiny_config(fixture_root, tmp_path / "run", "model.options.widht=4")
    with pytest.raises(ConfigError) as error:
        train(config, methods=TINY_METHODS)
    assert "model.options.widht" in str(error.value) and "width" in str(error.value)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fixture_root, tmp_path):
    # 2 steps per epoch: the loss turns NaN at the 4th call, i.e. in epoch 2.
    config = tiny_config(fixture_root, tmp_path / "run", "optim.epochs=3", "loss.options.nan_after_steps=3")
    with pytest.raises(TrainingDiverged) as error:
        train(config, methods=TINY_METHODS)
    message = str(error.value)
    assert "nan" in message and "epoch 2" in message and "last.pt" in message and "--resume" in message
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    assert "ERROR" in (tmp_path / "run" / "train.log").read_text()


_RUN_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from engine_fixtures import TINY_METHODS, tiny_config
from facemark.engine.train import train
config = tiny_config(Path({root!r}), Path({output!r}), *{overrides!r})
train(config, resume={resume!r}, methods=TINY_METHODS)
"""


def _run_script(root: Path, output: Path, overrides: list[str], resume: bool) -> str:
    return _RUN_SCRIPT.format(tests=str(TESTS_DIR), root=str(root), output=str(output), overrides=overrides,
                              resume=resume)


@pytest.mark.parametrize("scheduler", ["multistep", "cosine"])  # stepped per epoch / per batch
def test_resume_after_sigkill_gives_the_same_weights(fixture_root, tmp_path, scheduler):
    schedule = ["optim.epochs=4", "optim.milestones=[2]", f"optim.scheduler={scheduler}"]
    overrides = [*schedule, "data.workers=1", "loss.options.sleep_seconds=0.3"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", _run_script(fixture_root, killed, overrides, False)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "last.pt").is_file():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # mid-epoch 2 (an epoch takes ~0.6 s)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    epochs_done = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= epochs_done < 4, "the run was not interrupted between checkpoints"
    resumed = subprocess.run([sys.executable, "-c", _run_script(fixture_root, killed, overrides, True)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (killed / "train.log").read_text()

    reference = train(tiny_config(fixture_root, tmp_path / "reference", *schedule), methods=TINY_METHODS)
    resumed_state = load_checkpoint(killed / "last.pt")
    assert resumed_state["epoch"] == 4
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed_state["model"][key], value), key
    lines = (killed / "metrics.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert lines[1:] != [] and lines[1].split(",")[3] == (tmp_path / "reference" / "metrics.csv").read_text().splitlines()[1].split(",")[3]


def test_cosine_schedule_decays_every_batch(fixture_root, tmp_path):
    # 4 training faces, batch 2: 2 steps per epoch, 4 in all; lr_t = lr (1 + cos(pi t / 4)) / 2.
    result = train(tiny_config(fixture_root, tmp_path / "run", "optim.scheduler=cosine"), methods=TINY_METHODS)
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    logged = [float(line.split(",")[2]) for line in lines[1:]]  # the lr of each epoch's last step
    np.testing.assert_allclose(logged, [0.01 * (1 + np.cos(np.pi * step / 4)) / 2 for step in (1, 3)], rtol=1e-6)
    assert load_checkpoint(result.last_checkpoint)["scheduler"]["last_epoch"] == 4


def test_time_budget_cuts_the_plan_and_moves_the_lr_drop():
    import logging

    from facemark.engine.distributed import DistributedContext
    from facemark.engine.train import _fit_time_budget

    def fit(done, planned, elapsed, milestone, recipe_epochs=None, scheduled=None):
        # recipe: optim.epochs / milestones; planned / scheduled: the plan before this epoch's re-fit.
        config = load_config(None, ["optim.time_budget_minutes=1", f"optim.epochs={recipe_epochs or planned}",
                                    f"optim.milestones=[{milestone}]"])
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[scheduled or milestone])
        total = _fit_time_budget(config, done, planned, elapsed, done, scheduler, DistributedContext(),
                                 logging.getLogger("test"))
        return total, sorted(scheduler.milestones), optimizer.param_groups[0]["lr"]

    # 2 epochs took 20 s of a 60-s budget: 4 more fit, 6 in all instead of 12; the drop planned
    # after epoch 9 of 12 moves to after epoch round(9 x 6 / 12) = 4 (round half to even).
    assert fit(2, 12, 20.0, 9) == (6, [4], 1.0)
    assert fit(2, 6, 20.0, 5) == (6, [5], 1.0)  # it fits: nothing changes
    assert fit(4, 12, 40.0, 9) == (6, [5], 1.0)  # never before the next epoch
    # One epoch left and the drop not reached: it happens now, so the last epoch gets it.
    assert fit(5, 12, 50.0, 9) == (6, [5], pytest.approx(0.1))
    assert fit(5, 12, 50.0, 12) == (6, [12], 1.0)  # a milestone at or past the recipe's end never fires
    assert fit(2, 12, 61.0, 9)[0] == 2  # over budget: stop after this epoch
    # A plan cut to 6 (drop after 4) after a slow first epoch grows back when epochs get faster,
    # up to the recipe's 12 (drop after 9); a drop that already happened stays where it was.
    assert fit(3, 6, 15.0, 9, recipe_epochs=12, scheduled=4) == (12, [9], 1.0)
    assert fit(5, 6, 25.0, 9, recipe_epochs=12, scheduled=4) == (12, [4], 1.0)
    with pytest.raises(ConfigError, match="optim.scheduler"):
        load_config(None, ["optim.time_budget_minutes=1", "optim.scheduler=cosine"])


def test_training_stops_at_the_time_budget(fixture_root, tmp_path):
    # ~0.5 s per epoch (2 steps of >= 0.2 s) against a 1.2-s budget: the 6 planned epochs are cut.
    config = tiny_config(fixture_root, tmp_path / "run", "optim.epochs=6", "optim.milestones=[5]",
                         "optim.time_budget_minutes=0.02", "loss.options.sleep_seconds=0.2")
    result = train(config, methods=TINY_METHODS)
    assert 1 <= result.epochs_completed < 6
    state = load_checkpoint(result.last_checkpoint)
    assert state["epoch"] == result.epochs_completed
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + result.epochs_completed
    assert "optim.time_budget_minutes=0.02" in (tmp_path / "run" / "train.log").read_text()


def test_channels_last_training_trains_the_same_model(fixture_root, tmp_path):
    # SGD: its steps are proportional to the gradients, so rounding stays rounding (Adam's first
    # steps are ~lr x sign(gradient), which turns a rounding difference of a ~0 gradient into lr).
    sgd = "optim.optimizer=sgd"
    reference = train(tiny_config(fixture_root, tmp_path / "nchw", sgd), methods=TINY_METHODS).model
    model = train(tiny_config(fixture_root, tmp_path / "nhwc", sgd, "runtime.channels_last=true"),
                  methods=TINY_METHODS).model
    convolutions = [p for p in model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous() for p in convolutions)
    for key, value in reference.state_dict().items():  # only float rounding differs
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_evaluate_and_score(fixture_root, tmp_path):
    result = train(tiny_config(fixture_root, tmp_path / "run", "optim.epochs=1"), methods=TINY_METHODS)
    results = evaluate(result.best_checkpoint, fixture_root, output_dir=tmp_path / "eval", device="cpu",
                       workers=0, progress=False, methods=TINY_METHODS)
    assert results.dataset == "wflw" and results.split == "test" and results.num_images == 3
    assert results.box_source == "gt_landmarks x1.2"
    assert set(results.subsets) == {"pose", "expression", "illumination", "makeup", "occlusion", "blur"}
    for name in ("predictions.json", "results.json", "results.md", "ced.png"):
        assert (tmp_path / "eval" / name).is_file(), name

    # Predictions are in original-image pixels: the tiny model starts near the mean face, so they
    # lie near the ground truth of a 64-px image, not in [0, 1].
    predictions = load_predictions(tmp_path / "eval" / "predictions.json")
    assert predictions.landmarks.shape == (3, 98, 2) and predictions.landmarks.max() > 10
    test_set = load_dataset("wflw", fixture_root, "test")
    assert predictions.identifiers == [record.identifier for record in test_set]

    rescored = score(tmp_path / "eval" / "predictions.json", fixture_root, output_dir=tmp_path / "rescored")
    np.testing.assert_array_equal(rescored.nmes["inter_ocular"], results.nmes["inter_ocular"])
    assert (tmp_path / "rescored" / "results.md").read_text() == (tmp_path / "eval" / "results.md").read_text()

    # Missing and extra identifiers are named.
    predictions.identifiers[0] = "not/a/face.png#1"
    save_predictions(tmp_path / "bad.json", predictions)
    with pytest.raises(ValueError) as error:
        score(tmp_path / "bad.json", fixture_root)
    assert test_set[0].identifier in str(error.value) and "not/a/face.png#1" in str(error.value)
    data = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert data["box_source"] == "gt_landmarks x1.2" and data["dataset"] == "wflw" and data["split"] == "test"


def test_command_line_arguments_all_have_help(capsys):
    import argparse

    from facemark.errors import CommandError
    from facemark.engine.commands import add_evaluate_arguments, add_score_arguments, add_train_arguments

    for add in (add_train_arguments, add_evaluate_arguments, add_score_arguments):
        parser = argparse.ArgumentParser()
        run = add(parser)
        assert callable(run)
        for action in parser._actions:
            assert action.help, f"{add.__name__}: option {action.dest} has no help text"

    parser = argparse.ArgumentParser()
    run = add_train_arguments(parser)
    config_path = Path(__file__).resolve().parents[1] / "configs" / "slpt_hrnet_wflw.yaml"
    assert run(parser.parse_args([str(config_path), "optim.lr=2e-4", "--select-on", "test", "--print-config"])) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.0002" in printed and "select_on: test" in printed
    with pytest.raises(CommandError, match="optim.lrr"):
        run(parser.parse_args([str(config_path), "optim.lrr=1", "--print-config"]))


def test_pretrained_backbone_is_loaded_by_name(tmp_path):
    from torch import nn

    from facemark.engine.pretrained import load_pretrained_backbone
    from facemark.models.resnet import resnet18

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(resnet18())

    imagenet = resnet18()
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    model = Wrapped()
    summary = load_pretrained_backbone(model, tmp_path / "imagenet.pth").summary()
    assert "backbone.0" in summary and "0 missing" in summary
    assert torch.equal(model.backbone[0].conv1.weight, imagenet.conv1.weight)
    holder = nn.Module()
    holder.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no HRNet or ResNet"):
        load_pretrained_backbone(holder, tmp_path / "imagenet.pth")


def test_command_module_imports_no_torch():
    # facemark --help builds every subcommand's parser: it must not pay for importing torch.
    code = "import sys, facemark.engine.commands; assert 'torch' not in sys.modules, 'torch imported'"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


def test_report_best_and_last_evaluates_both_on_the_test_split(fixture_root, tmp_path):
    import json

    from facemark.engine.train import REPORT_LABELS

    # Held-out protocol: best.pt is picked on the carved validation faces; both rows are test numbers.
    result = train(tiny_config(fixture_root, tmp_path / "run", "runtime.report_best_and_last=true"), methods=TINY_METHODS)
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["split"] == "test" and report["select_on"] == "val"
    best, last = report["rows"]
    assert (best["protocol"], best["label"], best["epoch"]) == ("best", REPORT_LABELS["val"], result.best_epoch)
    assert (last["protocol"], last["label"], last["epoch"]) == ("last", REPORT_LABELS["last"], 2)
    for row in (best, last):
        # The same numbers as `facemark evaluate` of that checkpoint on the test split.
        evaluated = evaluate(tmp_path / "run" / row["checkpoint"], fixture_root, output_dir=tmp_path / row["protocol"],
                             device="cpu", workers=0, progress=False, methods=TINY_METHODS)
        assert row["summary"] == json.loads(json.dumps(evaluated.summary()))
        assert row["summary"]["all"]["n"] == 3
        assert f"{row['label']}, epoch {row['epoch']}" in result.report_table
    assert (tmp_path / "run" / "results.md").is_file() and result.report_path == tmp_path / "run" / "results.json"

    # No selection faces (data.val_fraction=0, select_on=val): best.pt is the last epoch, one row.
    result = train(tiny_config(fixture_root, tmp_path / "all", "runtime.report_best_and_last=true",
                               "data.val_fraction=0"), methods=TINY_METHODS)
    rows = json.loads((tmp_path / "all" / "results.json").read_text())["rows"]
    assert [(row["protocol"], row["epoch"]) for row in rows] == [("last", 2)]


def test_best_checkpoint_keeps_its_epoch_when_last_is_rewritten(tmp_path):
    from facemark.engine.checkpoint import save_checkpoint
    from facemark.engine.train import _same_checkpoint_as

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, last)
    _same_checkpoint_as(best, last, {"epoch": 1, "weights": torch.ones(3)})
    save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, last)  # a later epoch that did not improve
    assert load_checkpoint(best)["epoch"] == 1 and torch.equal(load_checkpoint(best)["weights"], torch.ones(3))
    assert load_checkpoint(last)["epoch"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary left


def test_report_best_and_last_checks_the_test_split_before_training(fixture_root, tmp_path):
    config = tiny_config(fixture_root, tmp_path / "run", "runtime.report_best_and_last=true", "data.test_split=tset")
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        train(config, methods=TINY_METHODS)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before the first epoch, not after the last
