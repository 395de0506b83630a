"""``facemark demo`` end to end on a tiny SynthFace set, and its helpers."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from facemark.engine.demo import (
    DemoSettings,
    _dataset_matches,
    add_demo_arguments,
    epochs_for_budget,
    lr_drop_epoch,
    mean_shape_predictions,
)

TINY = ["--train", "8", "--test", "4", "--size", "64", "--minutes", "0.001", "--no-progress", "--seed", "3"]


def _tiny_run(out, capsys, extra=()):
    """``facemark demo`` on 8 train / 4 test faces of 64 px, one epoch each (tiny splits need a small batch)."""
    import torch

    torch.manual_seed(0)
    parser = argparse.ArgumentParser()
    run = add_demo_arguments(parser)
    args = parser.parse_args(["--out", str(out), *TINY, *extra, "optim.batch_size=4", "runtime.eval_batch_size=4"])
    code = run(args)
    return code, capsys.readouterr().out


def test_tiny_demo_writes_the_report_plots_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    code, printed = _tiny_run(out, capsys)
    assert code == 0
    names = ("SLPT (MobileNetV2-0.5, fast)", "SDFL graph head (ResNet18)", "FC baseline (ResNet18)", "Mean shape")
    for name in names:
        assert name in printed
    assert "NME_io" in printed and "FR_io@0.10" in printed and "AUC_io@0.10" in printed
    assert f"report: {out / 'report.md'}" in printed

    report = (out / "report.md").read_text()
    for name in names:
        assert name in report
    assert "![CED of the four](ced.png)" in report and "(predictions.png)" in report
    assert "SDFL's graph head: NME_io" in report
    assert "stage 1:" in report and "stage 2:" in report and "stage 3:" not in report  # the preset has 2 stages
    for png in ("ced.png", "predictions.png"):
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == set(names)
    assert len(summary["stage_nme_inter_ocular"]) == 2
    assert summary["epochs"] == {"slpt": 1, "sdfl": 1, "fc": 1}
    for key in ("slpt", "sdfl", "fc"):
        assert (out / key / "best.pt").is_file() and (out / key / "eval_test" / "predictions.json").is_file()

    # A second demo with other data arguments regenerates the data and replaces the runs.
    first_image = sorted((out / "data" / "WFLW_images").rglob("*.jpg"))[0].read_bytes()
    code, _ = _tiny_run(out, capsys, extra=["--seed", "4"])
    assert code == 0
    assert json.loads((out / "data" / "synthface.json").read_text())["seed"] == 4
    assert sorted((out / "data" / "WFLW_images").rglob("*.jpg"))[0].read_bytes() != first_image


def test_dataset_is_reused_only_when_its_arguments_match(tmp_path):
    settings = DemoSettings(seed=1, image_size=64, num_train=5, num_test=3)
    summary = {"format": "wflw", "seed": 1, "size": 64, "splits": {"train": {"images": 5}, "test": {"images": 3}}}
    (tmp_path / "synthface.json").write_text(json.dumps(summary))
    assert _dataset_matches(tmp_path, settings)
    for changed in (dict(seed=2), dict(image_size=128), dict(num_train=6), dict(num_test=4)):
        assert not _dataset_matches(tmp_path, DemoSettings(**{**settings.__dict__, **changed}))
    assert not _dataset_matches(tmp_path / "missing", settings)


def test_demo_refuses_to_overwrite_a_foreign_folder(tmp_path, capsys):
    from facemark.errors import CommandError

    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "demo" / "data" / "mine.txt").write_text("not a dataset")
    with pytest.raises(CommandError, match="not a SynthFace dataset"):
        _tiny_run(tmp_path / "demo", capsys)
    assert (tmp_path / "demo" / "data" / "mine.txt").is_file()


def test_epochs_for_budget():
    # 0.1 s per image, 900 + 100/3 images per epoch = 93.3 s per epoch.
    assert epochs_for_budget(300, 0.1, 900, 100, max_epochs=50) == 3  # 3.2 epochs
    assert epochs_for_budget(3.9 * 93.34, 0.1, 900, 100, max_epochs=50) == 3  # never over the budget
    assert epochs_for_budget(4.0 * 93.34, 0.1, 900, 100, max_epochs=50) == 4
    assert epochs_for_budget(10, 0.1, 900, 100, max_epochs=50) == 1  # at least one epoch
    assert epochs_for_budget(1e6, 0.1, 900, 100, max_epochs=50) == 50  # capped


def test_lr_drop_epoch_keeps_the_last_eighth_at_least_one_epoch():
    assert lr_drop_epoch(2) == 1
    assert lr_drop_epoch(8) == 7  # the last epoch only
    assert lr_drop_epoch(18) == 16
    assert lr_drop_epoch(60) == 52
    with pytest.raises(ValueError, match="at least 2 epochs"):
        lr_drop_epoch(1)


def test_mean_shape_baseline_maps_the_crop_shape_back_to_the_image():
    from facemark.data.records import FaceRecord
    from facemark.layouts import get_layout
    from facemark.data.transforms import CropConvention, crop_matrix, normalise_landmarks, record_face_box, transform_points

    rng = np.random.default_rng(0)
    shape = rng.uniform(20, 80, size=(98, 2))
    crop = CropConvention(box_source="landmarks", enlarge=1.2, size=64)
    records = []
    for i, (scale, shift) in enumerate(((1.0, 0.0), (1.7, 15.0))):
        records.append(FaceRecord(identifier=f"face{i}", landmarks=shape * scale + shift, layout=get_layout("wflw98")))
    # The normalised crop shape of the first face is the same for the second (a scaled, shifted copy).
    matrix = crop_matrix(record_face_box(records[0], crop), crop.size)
    mean_face = normalise_landmarks(transform_points(records[0].landmarks, matrix), crop.size)
    predicted = mean_shape_predictions(mean_face, records, crop)
    assert predicted.shape == (2, 98, 2)
    np.testing.assert_allclose(predicted[0], records[0].landmarks, atol=1e-9)
    np.testing.assert_allclose(predicted[1], records[1].landmarks, atol=1e-9)


def test_prediction_grid_labels_each_face_with_its_model():
    from facemark.data.records import FaceRecord
    from facemark.engine.demo import prediction_grid
    from facemark.layouts import get_layout

    layout = get_layout("wflw98")
    image = np.zeros((64, 64, 3), np.uint8)
    shape = np.random.default_rng(0).uniform(10, 50, size=(98, 2))
    record = FaceRecord(identifier="face", landmarks=shape, layout=layout, image_loader=lambda: image)
    records, predictions = [record, record], np.stack([shape, shape + 1.0])
    labelled = prediction_grid(records, predictions, np.array([0.01, 0.02]), layout, columns=2, cell_size=64,
                               labels=["SLPT", "SDFL"])
    plain = prediction_grid(records, predictions, np.array([0.01, 0.02]), layout, columns=2, cell_size=64)
    assert labelled.shape == plain.shape and labelled.shape[1] > 2 * 64 > labelled.shape[0]  # two cells in a row
    assert not np.array_equal(labelled, plain)  # the labels are drawn
    with pytest.raises(ValueError, match="1 labels for 2 faces"):
        prediction_grid(records, predictions, np.array([0.01, 0.02]), layout, labels=["SLPT"])
