"""Own data: the manifest, .pts folder and COCO formats (readers, writers, bad input), layouts
read from YAML (no flips, other normalisers, `facemark layouts --check`), the split file of a run,
and a 5-point SynthFace layout trained end to end with SLPT and SDFL."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from facemark.cli import main
from facemark.data import (
    DatasetWarning,
    FaceRecord,
    load_dataset,
    read_coco,
    read_manifest,
    read_pts_folder,
    write_coco,
    write_manifest,
    write_pts_folder,
)
from facemark.layouts import Layout, get_layout
from facemark.metrics import EvaluationResults

FIVE = Layout(name="five", num_points=5, groups={"eyes": (0, 1), "nose": (2,), "mouth": (3, 4)},
              flip_permutation=(1, 0, 2, 4, 3), inter_ocular=(0, 1), inter_pupil=((0,), (1,)),
              point_names=("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"))
SIZE = 32


def _image(path: Path, size: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), 90, np.uint8))
    return path


def _records(folder: Path, count: int = 4, seed: int = 0, grid: bool = False, faces_per_image: int = 1) -> list[FaceRecord]:
    """Faces with boxes, occlusion flags and attributes; ``grid``: coordinates on a 1/64 grid (exact
    binary fractions, which survive the 1-based shift of .pts files exactly)."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        image = _image(folder / "images" / f"sub{index % 2}" / f"face_{index // faces_per_image}.png")
        points = rng.uniform(4, SIZE - 5, (5, 2))
        if grid:
            points = np.round(points * 64) / 64
        records.append(FaceRecord(
            identifier=str(index), landmarks=points, layout=FIVE, box=(1.0, 2.0, 30.0, 29.0),
            occluded=rng.random(5) < 0.3, attributes={"pose": int(index % 2), "camera": f"cam{index}"},
            image_path=image,
        ))
    return records


def _same(read, written) -> None:
    assert len(read) == len(written)
    for got, want in zip(read, written):
        assert np.array_equal(got.landmarks, want.landmarks)  # exactly, not approximately
        assert Path(got.image_path).resolve() == Path(want.image_path).resolve()


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["faces.csv", "faces.jsonl"])
def test_manifest_round_trips_exactly(tmp_path, name):
    records = _records(tmp_path)
    path = write_manifest(tmp_path / name, records)
    dataset = read_manifest(path, FIVE)
    _same(dataset, records)
    for got, want in zip(dataset, records):
        assert got.box == want.box and np.array_equal(got.occluded, want.occluded) and got.attributes == want.attributes
    assert dataset[0].identifier == "images/sub0/face_0.png#" + ("2" if name.endswith(".csv") else "1")
    # Written again from what was read: the same file, byte for byte.
    again = write_manifest(tmp_path / f"again_{name}", dataset.records)
    assert again.read_text() == path.read_text()


def test_pts_folder_round_trips_exactly_recursively(tmp_path):
    records = _records(tmp_path, grid=True)
    for record in records:
        record.box = record.occluded = None
        record.attributes = {}
    write_pts_folder(tmp_path, records)
    dataset = read_pts_folder(tmp_path, FIVE)
    order = sorted(range(len(records)), key=lambda i: records[i].image_path.relative_to(tmp_path).with_suffix("").as_posix())
    _same(dataset, [records[i] for i in order])
    assert dataset[0].identifier == "images/sub0/face_0"


def test_coco_round_trips_exactly_with_several_faces_per_image(tmp_path):
    records = _records(tmp_path, count=4, faces_per_image=2)
    for record in records:
        record.image_path = tmp_path / "images" / "sub0" / f"face_{int(record.identifier) // 2}.png"
    path = write_coco(tmp_path / "faces.json", records, FIVE)
    data = json.loads(path.read_text())
    assert len(data["images"]) == 2 and len(data["annotations"]) == 4
    assert data["categories"][0]["keypoints"] == list(FIVE.point_names)
    dataset = read_coco(path, FIVE)
    _same(dataset, records)
    for got, want in zip(dataset, records):
        assert got.box == want.box and np.array_equal(got.occluded, want.occluded) and got.attributes == want.attributes
    # visibility 1 = labelled but occluded, 2 = visible
    assert data["annotations"][0]["keypoints"][2::3] == [1 if o else 2 for o in records[0].occluded]


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = write_manifest(tmp_path / "faces.csv", _records(tmp_path))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_manifest(path, FIVE)) == 4


# -- bad input -----------------------------------------------------------------------------------
def _csv(tmp_path: Path, lines: list[str]) -> Path:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    path = tmp_path / "faces.csv"
    path.write_text("image,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4\n" + "\n".join(lines) + "\n")
    return path


GOOD = "a.png,5,5,20,5,12,12,8,20,18,20"


def test_a_line_with_the_wrong_number_of_values_names_file_and_line(tmp_path):
    path = _csv(tmp_path, [GOOD, "b.png,5,5,20,5,12,12,8,20,18"])
    with pytest.raises(ValueError, match=r"faces\.csv, line 3: 10 values; expected 11 \(one per header column"):
        read_manifest(path, FIVE)


def test_points_differing_between_lines_name_the_line(tmp_path):
    _image(tmp_path / "a.png")
    path = tmp_path / "faces.jsonl"
    path.write_text(json.dumps({"image": "a.png", "points": [1, 2] * 5}) + "\n"
                    + json.dumps({"image": "a.png", "points": [1, 2] * 4}) + "\n")
    with pytest.raises(ValueError, match=r"faces\.jsonl, line 2: 4 points, but line 1 has 5"):
        read_manifest(path, FIVE)
    path.write_text(json.dumps({"image": "a.png", "points": [1, 2] * 4}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: 4 points; the layout 'five' has 5"):
        read_manifest(path, FIVE)
    path.write_text(json.dumps({"image": "a.png", "points": [1, 2, 3]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: 3 point values; expected an even number"):
        read_manifest(path, FIVE)


def test_a_point_outside_the_image_is_reported_and_kept(tmp_path):
    path = _csv(tmp_path, [GOOD, "b.png,5,5,20,5,12,12,8,20,40.5,20"])
    with pytest.warns(DatasetWarning, match=r"faces\.csv, line 3: point 4 \(40\.5, 20\)") as caught:
        dataset = read_manifest(path, FIVE)
    assert "kept as they are" in str(caught[0].message)
    assert len(dataset) == 2 and dataset[1].landmarks[4, 0] == 40.5


def test_a_missing_image_names_the_line(tmp_path):
    path = _csv(tmp_path, [GOOD, "missing.png,5,5,20,5,12,12,8,20,18,20"])
    with pytest.raises(FileNotFoundError, match=r"faces\.csv, line 3: image .*missing\.png does not exist"):
        read_manifest(path, FIVE)


def test_duplicate_images_are_reported(tmp_path):
    # A repeated manifest line: warned about, both kept.
    path = _csv(tmp_path, [GOOD, GOOD])
    with pytest.warns(DatasetWarning, match="line 3 repeats line 2"):
        assert len(read_manifest(path, FIVE)) == 2
    # One .pts file with two images beside it: which one was annotated is unknown.
    records = _records(tmp_path / "pts", count=1, grid=True)
    write_pts_folder(tmp_path / "pts", records)
    _image(records[0].image_path.with_suffix(".jpg"))
    with pytest.raises(ValueError, match=r"face_0\.pts: several images beside it \(face_0\.jpg, face_0\.png\)"):
        read_pts_folder(tmp_path / "pts", FIVE)
    # A COCO file listing the same image twice.
    coco = write_coco(tmp_path / "coco.json", _records(tmp_path / "c", count=1), FIVE)
    data = json.loads(coco.read_text())
    data["images"].append(dict(data["images"][0], id=7))
    coco.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"coco\.json, images\[1\]: image 'c/images/sub0/face_0\.png' is listed twice"):
        read_coco(coco, FIVE)


def test_coco_unlabelled_points_and_wrong_counts_name_the_annotation(tmp_path):
    path = write_coco(tmp_path / "coco.json", _records(tmp_path, count=2), FIVE)
    data = json.loads(path.read_text())
    data["annotations"][1]["keypoints"][5] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id 2\): keypoint\(s\) \[1\] have visibility 0"):
        read_coco(path, FIVE)
    data["annotations"][1]["keypoints"] = data["annotations"][1]["keypoints"][:-3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'keypoints' has 12 values; expected 15"):
        read_coco(path, FIVE)


def test_pts_files_with_different_point_counts_name_the_file(tmp_path):
    records = _records(tmp_path, count=2, grid=True)
    write_pts_folder(tmp_path, records)
    from facemark.data import write_pts

    write_pts(records[1].image_path.with_suffix(".pts"), records[1].landmarks[:4])
    with pytest.raises(ValueError, match=r"face_1\.pts, line 2: n_points is 4, but .*face_0\.pts has 5"):
        read_pts_folder(tmp_path, FIVE)


def test_own_data_needs_a_layout(tmp_path):
    path = _csv(tmp_path, [GOOD])
    with pytest.raises(ValueError, match="needs a layout"):
        load_dataset("manifest", tmp_path, "faces.csv")
    assert len(load_dataset("manifest", tmp_path, "faces.csv", layout=FIVE)) == 1
    del path


# -- layouts -------------------------------------------------------------------------------------
def test_layout_without_flips_cannot_mirror_and_box_normalisation_is_stated(tmp_path):
    layout = Layout.from_dict({"name": "nose3", "num_points": 3, "normalisation": "bbox"})
    assert layout.flip_permutation is None and layout.normalisers == ()
    with pytest.raises(ValueError, match="no flip_permutation"):
        layout.flip_landmarks(np.zeros((3, 2)), 10)
    assert Layout.from_dict(layout.to_dict()) == layout
    gt = np.array([[[0.0, 0], [10, 0], [5, 5]]])
    results = EvaluationResults.from_landmarks(gt + 1, gt, layout, dataset="manifest", split="t", model="m",
                                               box_source="gt_landmarks x1.2", boxes=np.array([[0.0, 0, 20, 5]]))
    assert list(results.nmes) == ["bbox"] and results.normalisation == "bbox"
    assert results.per_image()[0] == pytest.approx(np.sqrt(2) / 10)
    assert "normalisation: sqrt(box w*h)" in results.table() and "FR_bbox@0.10" in results.table()
    assert EvaluationResults.from_dict(json.loads(json.dumps(results.to_dict()))).normalisation == "bbox"
    with pytest.raises(ValueError, match="faces have no boxes"):
        EvaluationResults.from_landmarks(gt, gt, layout, dataset="manifest", split="t", model="m", box_source="x")


@pytest.mark.parametrize("text, message", [
    ("flip_permutation: [1, 2, 0, 3, 4]\ninter_ocular: [0, 1]\n", "own inverse.*point 0 maps to 1, which maps to 2"),
    ("flip_permutation: [1, 0, 2, 4, 3]\ninter_ocular: [0, 9]\n", r"inter_ocular has indices \[0, 9\]"),
    ("flip_permutation: [1, 0, 2, 4, 3]\n", "normalisation is 'inter_ocular' but the layout gives no inter_ocular points"),
])
def test_layouts_check_reports_each_error(tmp_path, capsys, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nnum_points: 5\n" + text)
    with pytest.raises(SystemExit) as exit_code:
        main(["layouts", "--check", str(path)])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err
    assert "mine.yaml" in error
    import re

    assert re.search(message, error), error


def test_layouts_check_describes_a_valid_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nnum_points: 5\ninter_ocular: [0, 1]\n")
    assert main(["layouts", "--check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a valid layout" in out and "flip permutation: none" in out and "NME normalisation: inter_ocular" in out


# -- SynthFace in the own formats, splits, and the whole path -------------------------------------
@pytest.mark.parametrize("format, train_split", [("manifest", "train.csv"), ("pts_folder", "train"), ("coco", "train.json")])
def test_synth_writes_each_own_format(tmp_path, monkeypatch, format, train_split):
    monkeypatch.chdir(tmp_path.parent)  # a relative --out: the annotations' image paths stay right
    assert main(["synth", "--out", tmp_path.name, "--train", "3", "--test", "2", "--size", "64", "--format", format,
                 "--layout", "face5", "--no-progress"]) == 0
    layout = get_layout(tmp_path / "layout.yaml")
    assert layout.num_points == 5 and layout.flip_permutation == (1, 0, 2, 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # a synthetic point may lie just outside
        dataset = load_dataset(format, tmp_path, train_split, layout=layout)
    assert len(dataset) == 3 and dataset[0].landmarks.shape == (5, 2)


def test_test_fraction_carves_the_same_faces_every_time(tmp_path):
    from facemark.engine.config import load_config
    from facemark.engine.data import config_splits

    write_manifest(tmp_path / "all.csv", _records(tmp_path, count=10))
    config = load_config(None, ["data.dataset=manifest", f"data.root={tmp_path}", "data.train_split=all.csv",
                                "data.test_fraction=0.3", "data.split_seed=4"])
    config.data.layout = None
    train, test = config_splits(config.data, layout=FIVE)
    again = config_splits(config.data, layout=FIVE)[1]
    assert [r.identifier for r in test] == [r.identifier for r in again]
    assert len(test) == 3 and len(train) == 7 and not {r.identifier for r in train} & {r.identifier for r in test}
    assert test.split == "all.csv[test]"


@pytest.fixture(scope="module")
def face5_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("face5")
    from facemark.data.synthface import generate_dataset

    generate_dataset(root, 8, 3, seed=1, size=64, format="manifest", progress=False, layout="face5")
    return root


@pytest.mark.parametrize("method", ["slpt", "sdfl"])
def test_five_point_layout_trains_evaluates_predicts_and_exports(face5_data, tmp_path, method, capsys):
    onnx = pytest.importorskip("onnx")
    config = Path(__file__).parents[1] / "configs" / f"own_{method}.yaml"
    run = tmp_path / "run"
    overrides = [
        "data.dataset=manifest", f"data.root={face5_data}", "data.train_split=train.csv", "data.test_split=test.csv",
        f"data.layout={face5_data / 'layout.yaml'}", "data.crop.size=64", "data.workers=0", "data.val_fraction=0.25",
        "optim.epochs=1", "optim.batch_size=3", "runtime.progress=false", "runtime.tensorboard=false",
        "runtime.device=cpu", f"runtime.output_dir={run}",
    ]
    overrides += (["model.backbone=mobilenet_v2", "model.options.num_layers=1"] if method == "slpt"
                  else ["model.backbone=resnet18", "model.options.hidden_features=16", "model.options.num_blocks=1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        assert main(["train", str(config), *overrides]) == 0
        splits = json.loads((run / "splits.json").read_text())
        assert splits["counts"] == {"train": 6, "val": 2, "test": 3}
        assert (run / "results.md").is_file()  # best and last evaluated on the test faces
        assert main(["evaluate", str(run / "best.pt"), "--data", str(face5_data), "--workers", "0", "--no-progress",
                     "--output-dir", str(tmp_path / "eval")]) == 0
        table = capsys.readouterr().out
        assert "manifest test.csv (3 images, layout face5)" in table and "NME_io (%)" in table
        evaluated = json.loads((tmp_path / "eval" / "predictions.json").read_text())
        assert evaluated["layout_spec"]["name"] == "face5"
        assert main(["score", str(tmp_path / "eval" / "predictions.json"), "--data", str(face5_data)]) == 0
        assert main(["export", "--weights", str(run / "best.pt"), "--out", str(tmp_path / "m.onnx")]) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["facemark"])
    assert metadata["layout"] == get_layout(face5_data / "layout.yaml").to_dict()
    assert metadata["output"]["shape"] == ["batch", 5, 2]
    from facemark.inference import Predictor

    image = cv2.imread(str(face5_data / "images" / "test" / "synthface_test_000000.jpg"))[:, :, ::-1]
    faces = Predictor(tmp_path / "m.onnx", backend="onnx", detector=None).predict(image, np.array([[8.0, 8, 56, 56]]))
    assert faces[0].landmarks.shape == (5, 2) and faces[0].layout.name == "face5"


def test_evaluation_refuses_changed_test_faces(face5_data, tmp_path):
    from facemark.engine.data import check_splits_file

    dataset = read_manifest(face5_data / "test.csv", get_layout(face5_data / "layout.yaml"), check_images=False)
    listed = tmp_path / "splits.json"
    listed.write_text(json.dumps({"faces": {"test": [r.identifier for r in dataset][:-1]}}))
    with pytest.raises(ValueError, match="the data changed since training"):
        check_splits_file(listed, "test", dataset)


def test_a_layout_without_flips_turns_flip_augmentation_off(face5_data, tmp_path, caplog):
    import yaml

    spec = yaml.safe_load((face5_data / "layout.yaml").read_text())
    spec["flip_permutation"] = None
    (tmp_path / "noflip.yaml").write_text(yaml.safe_dump(spec))
    from facemark.engine.config import load_config
    from facemark.engine.train import train

    config = load_config(Path(__file__).parents[1] / "configs" / "own_sdfl.yaml", [
        "data.dataset=manifest", f"data.root={face5_data}", "data.train_split=train.csv", "data.test_split=test.csv",
        f"data.layout={tmp_path / 'noflip.yaml'}", "data.crop.size=64", "data.workers=0", "optim.epochs=1",
        "optim.batch_size=4", "runtime.progress=false", "runtime.tensorboard=false", "runtime.device=cpu",
        "model.backbone=resnet18", "model.options.hidden_features=8", "model.options.num_blocks=1",
        "runtime.report_best_and_last=false", f"runtime.output_dir={tmp_path / 'run'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        train(config)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "has no flip_permutation: flip augmentation is off (flip_probability 0.5 -> 0)" in log


def test_a_box_normalised_layout_needs_boxes_before_training_starts(tmp_path):
    from facemark.engine.config import load_config
    from facemark.engine.train import train

    records = _records(tmp_path, count=6, grid=True)
    for record in records:
        record.box = None
    write_manifest(tmp_path / "train.csv", records)
    (tmp_path / "box.yaml").write_text("name: boxed\nnum_points: 5\nnormalisation: bbox\n")
    config = load_config(Path(__file__).parents[1] / "configs" / "own_sdfl.yaml", [
        "data.dataset=manifest", f"data.root={tmp_path}", "data.train_split=train.csv", "data.test_fraction=0.3",
        f"data.layout={tmp_path / 'box.yaml'}", "runtime.device=cpu", "runtime.tensorboard=false",
        f"runtime.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"normalised by the face box but \d face\(s\) of manifest/train\.csv\[train\]"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_carved_split_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="held out by a training run"):
        load_dataset("manifest", tmp_path, "train.csv[test]", layout=FIVE)


def test_score_reads_a_carved_test_split_from_the_runs_split_file(tmp_path, capsys):
    """`facemark score` on the predictions of a split held out by data.test_fraction: the faces are
    the ones the run's splits.json lists (found from the predictions file's folder, or --splits)."""
    from facemark.engine.config import load_config
    from facemark.engine.data import config_splits, write_splits_file
    from facemark.engine.evaluate import Predictions, save_predictions

    write_manifest(tmp_path / "all.csv", _records(tmp_path, count=10))
    config = load_config(None, ["data.dataset=manifest", f"data.root={tmp_path}", "data.train_split=all.csv",
                                "data.test_fraction=0.3", "data.split_seed=4"])
    train, test = config_splits(config.data, layout=FIVE)
    run = tmp_path / "run"
    run.mkdir()
    write_splits_file(run / "splits.json", {"train": train, "val": None, "test": test}, config.data)
    shifted = test.landmarks() + np.array([1.0, -0.5])  # not the ground truth: a real error to score
    predictions = Predictions([r.identifier for r in test], shifted, "manifest", test.split, FIVE.name, "gt_landmarks x1.2",
                              "model", FIVE.to_dict())
    save_predictions(run / "eval_manifest_all.csv_test" / "predictions.json", predictions)
    expected = EvaluationResults.from_predictions(shifted, test, model_name="model", box_source="gt").summary()["all"]["NME_io"]

    assert main(["score", str(run / "eval_manifest_all.csv_test" / "predictions.json"), "--data", str(tmp_path),
                 "--output-dir", str(tmp_path / "scored")]) == 0
    scored = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert scored["summary"]["all"]["NME_io"] == pytest.approx(expected)
    assert "all.csv[test]" in capsys.readouterr().out
    # Elsewhere, the split file is named on the command line; without it, the error says so.
    save_predictions(tmp_path / "elsewhere" / "predictions.json", predictions)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(tmp_path / "elsewhere" / "predictions.json"), "--data", str(tmp_path)])
    assert exit_info.value.code == 2 and "--splits RUN/splits.json" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "elsewhere" / "predictions.json"), "--data", str(tmp_path),
                 "--splits", str(run / "splits.json")]) == 0
    # A listed face the data no longer holds: an error, not a silently smaller split.
    listed = json.loads((run / "splits.json").read_text())
    listed["faces"]["test"][0] = "gone.png#99"
    (run / "splits.json").write_text(json.dumps(listed))
    with pytest.raises(SystemExit):
        main(["score", str(run / "eval_manifest_all.csv_test" / "predictions.json"), "--data", str(tmp_path)])
    assert "the data changed since training" in capsys.readouterr().err
