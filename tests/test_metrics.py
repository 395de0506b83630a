"""Metrics against an independent, loop-based reference (no facemark.layouts, no SciPy).

The reference below is written from shared/facts/evaluation.md alone: the normalising point
indices are typed in here, the CED is a counting loop and Simpson's rule is the textbook
composite formula.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.layouts import get_layout
from facemark.metrics import (
    EvaluationResults,
    auc,
    ced_curve,
    compare_markdown,
    compare_table,
    failure_rate,
    nme,
    plot_ced,
    subset_masks,
)

# ----------------------------------------------------------------------------------------------
# Independent reference
# ----------------------------------------------------------------------------------------------
# layout -> (inter-ocular pair, (left pupil points, right pupil points)), from evaluation.md.
REFERENCE_POINTS = {
    "wflw98": ((60, 72), ([96], [97])),
    "300w68": ((36, 45), (list(range(36, 42)), list(range(42, 48)))),
    "cofw29": ((8, 9), ([16], [17])),
}
NUM_POINTS = {"wflw98": 98, "300w68": 68, "cofw29": 29}


def _distance(a, b) -> float:
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)


def _centroid(points, indices):
    return (sum(points[i][0] for i in indices) / len(indices), sum(points[i][1] for i in indices) / len(indices))


def reference_nme(pred, gt, layout_name, norm, boxes=None) -> list[float]:
    (ocular_a, ocular_b), (pupil_left, pupil_right) = REFERENCE_POINTS[layout_name]
    values = []
    for image in range(len(gt)):
        truth, guess = gt[image].tolist(), pred[image].tolist()
        if norm == "inter_ocular":
            normaliser = _distance(truth[ocular_a], truth[ocular_b])
        elif norm == "inter_pupil":
            normaliser = _distance(_centroid(truth, pupil_left), _centroid(truth, pupil_right))
        else:
            x_min, y_min, x_max, y_max = boxes[image]
            normaliser = math.sqrt((x_max - x_min) * (y_max - y_min))
        total = 0.0
        for point in range(len(truth)):
            total += _distance(truth[point], guess[point])
        values.append(total / len(truth) / normaliser)
    return values


def reference_failure_rate(nmes, threshold) -> float:
    failures = 0
    for value in nmes:
        if value > threshold:
            failures += 1
    return failures / len(nmes)


def reference_auc(nmes, threshold, step) -> float:
    intervals = int(round(threshold / step))
    assert intervals % 2 == 0, "the textbook composite Simpson rule needs an even number of intervals"
    h = threshold / intervals
    ced = []
    for i in range(intervals + 1):
        x = i * threshold / intervals
        ced.append(sum(1 for value in nmes if value <= x) / len(nmes))
    total = ced[0] + ced[-1]
    for i in range(1, intervals):
        total += (4 if i % 2 == 1 else 2) * ced[i]
    return (h / 3.0 * total) / threshold


def random_case(rng, layout_name, num_images):
    """Random faces with a clear eye / pupil spread (no degenerate normaliser) and varied errors."""
    num_points = NUM_POINTS[layout_name]
    gt = rng.uniform(20.0, 220.0, size=(num_images, num_points, 2))
    (ocular_a, ocular_b), _ = REFERENCE_POINTS[layout_name]
    gt[:, ocular_a] = rng.uniform(40.0, 80.0, size=(num_images, 2))
    gt[:, ocular_b] = gt[:, ocular_a] + rng.uniform(40.0, 90.0, size=(num_images, 2))
    scale = rng.uniform(0.5, 12.0, size=(num_images, 1, 1))  # spread NMEs around the thresholds
    pred = gt + rng.normal(size=gt.shape) * scale
    x_min, y_min = gt[..., 0].min(axis=1), gt[..., 1].min(axis=1)
    boxes = np.stack([x_min, y_min, x_min + rng.uniform(50, 200, num_images), y_min + rng.uniform(50, 200, num_images)], 1)
    return pred, gt, boxes


# ----------------------------------------------------------------------------------------------
# NME / FR / AUC agree with the reference to 1e-9
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout_name", ["wflw98", "300w68", "cofw29"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nme_matches_reference(layout_name, seed):
    rng = np.random.default_rng(seed)
    pred, gt, boxes = random_case(rng, layout_name, num_images=40)
    for norm in ("inter_ocular", "inter_pupil", "bbox"):
        ours = nme(pred, gt, layout_name, norm, boxes=boxes if norm == "bbox" else None)
        expected = reference_nme(pred, gt, layout_name, norm, boxes)
        assert ours.shape == (40,)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold, step", [(0.10, 1e-4), (0.08, 1e-4), (0.05, 1e-3), (0.10, 5e-3)])
def test_failure_rate_and_auc_match_reference(seed, threshold, step):
    rng = np.random.default_rng(100 + seed)
    pred, gt, _ = random_case(rng, "wflw98", num_images=60)
    nmes = nme(pred, gt, "wflw98")
    assert 0 < failure_rate(nmes, threshold) < 1  # a case where both sides of the threshold occur
    assert abs(failure_rate(nmes, threshold) - reference_failure_rate(nmes.tolist(), threshold)) < 1e-9
    assert abs(auc(nmes, threshold, step) - reference_auc(nmes.tolist(), threshold, step)) < 1e-9


def test_ced_curve_grid_and_counts():
    nmes = np.array([0.0, 0.05, 0.05, 0.2])
    x, fraction = ced_curve(nmes, threshold=0.10, step=1e-4)
    assert len(x) == 1001 and x[0] == 0.0 and x[-1] == 0.10  # linspace: no extra or missing end point
    assert fraction[0] == 0.25  # NME <= 0 counts the perfect image
    assert fraction[500] == 0.75  # x = 0.05: "<=" includes the two images at exactly 0.05
    assert fraction[499] == 0.25
    assert fraction[-1] == 0.75  # 0.2 never enters
    x, _ = ced_curve(nmes, threshold=0.08, step=1e-4)
    assert len(x) == 801 and x[-1] == 0.08


def test_failure_rate_is_strictly_greater():
    assert failure_rate([0.10, 0.10, 0.2], threshold=0.10) == pytest.approx(1 / 3, abs=1e-15)
    assert failure_rate([0.08, 0.0801], threshold=0.08) == 0.5
    # Through nme(): inter-ocular distance 10 px, every point off by exactly 1 px -> NME = 0.1 exactly.
    gt = np.zeros((29, 2))
    gt[:, 0] = np.arange(29)
    gt[8], gt[9] = (0.0, 0.0), (10.0, 0.0)
    pred = gt + np.array([0.0, 1.0])
    value = nme(pred, gt, "cofw29")
    assert value[0] == 0.1
    assert failure_rate(value, 0.10) == 0.0


def test_auc_extremes():
    assert auc(np.zeros(7), 0.10) == pytest.approx(1.0, abs=1e-12)
    assert auc(np.zeros(7), 0.08) == pytest.approx(1.0, abs=1e-12)
    assert auc(np.full(5, 0.1000001), 0.10) == 0.0
    assert auc([0.5, 0.3], 0.08) == 0.0


# ----------------------------------------------------------------------------------------------
# Hand-made cases with known answers
# ----------------------------------------------------------------------------------------------
def _300w_face() -> np.ndarray:
    """68 points; left-eye points 36..41 centred on (10, 20), right-eye 42..47 on (40, 60)."""
    gt = np.column_stack([np.linspace(0, 100, 68), np.linspace(100, 0, 68)])
    eye_offsets = np.array([(-5, 0), (-2, -2), (2, -2), (5, 0), (2, 2), (-2, 2)], dtype=float)
    gt[36:42] = (10.0, 20.0) + eye_offsets
    gt[42:48] = (40.0, 60.0) + eye_offsets
    return gt


def test_inter_pupil_300w_uses_eye_centroids():
    gt = _300w_face()
    pred = gt + (3.0, 4.0)  # every point off by 5 px
    # pupils: centroids (10, 20) and (40, 60) -> 50 px; outer corners 36 = (5, 20), 45 = (45, 60).
    assert nme(pred, gt, "300w68", "inter_pupil") == pytest.approx([5.0 / 50.0], abs=1e-15)
    assert nme(pred, gt, "300w68", "inter_ocular") == pytest.approx([5.0 / math.hypot(40.0, 40.0)], abs=1e-15)
    # The normaliser is the ground truth's: moving the predicted eyes changes nothing but their error.
    pred_moved = pred.copy()
    pred_moved[36:48] += 100.0
    expected = (56 * 5.0 + 12 * math.hypot(103.0, 104.0)) / 68 / 50.0
    assert nme(pred_moved, gt, "300w68", "inter_pupil")[0] == pytest.approx(expected, abs=1e-12)


def test_bbox_norm():
    gt = _300w_face()
    pred = gt + (6.0, 0.0)
    boxes = np.array([[10.0, 5.0, 50.0, 95.0]])  # w = 40, h = 90 -> sqrt(3600) = 60
    assert nme(pred, gt, "300w68", "bbox", boxes=boxes) == pytest.approx([0.1], abs=1e-15)
    assert nme(pred, gt, "300w68", "bbox", boxes=boxes[0]).shape == (1,)  # a single (4,) box


def test_single_face_and_layout_object():
    gt = _300w_face()
    result = nme(gt + 1.0, gt, get_layout("300w68"))
    assert result.shape == (1,)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_bad_input_errors():
    rng = np.random.default_rng(5)
    pred, gt, boxes = random_case(rng, "wflw98", num_images=4)
    with pytest.raises(ValueError, match="must match"):
        nme(pred[:3], gt, "wflw98")
    with pytest.raises(ValueError, match="98 points"):
        nme(pred[:, :68], gt[:, :68], "wflw98")
    bad = pred.copy()
    bad[2, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"pred .*image 2\b"):
        nme(bad, gt, "wflw98")
    bad_gt = gt.copy()
    bad_gt[1, 0, 1] = np.inf
    with pytest.raises(ValueError, match=r"gt .*image 1\b"):
        nme(pred, bad_gt, "wflw98")
    collapsed = gt.copy()
    collapsed[3, 72] = collapsed[3, 60]  # outer eye corners on top of each other
    with pytest.raises(ValueError, match=r"inter-ocular normaliser .* zero .*image 3\b"):
        nme(pred, collapsed, "wflw98")
    with pytest.raises(ValueError, match="needs boxes"):
        nme(pred, gt, "wflw98", "bbox")
    flat = boxes.copy()
    flat[0, 3] = flat[0, 1]
    with pytest.raises(ValueError, match=r"image 0\b"):
        nme(pred, gt, "wflw98", "bbox", boxes=flat)
    with pytest.raises(ValueError, match="only used with"):
        nme(pred, gt, "wflw98", "inter_ocular", boxes=boxes)
    with pytest.raises(ValueError, match="unknown norm"):
        nme(pred, gt, "wflw98", "inter_eye")
    with pytest.raises(ValueError, match="image 1"):
        failure_rate([0.1, -0.2])
    with pytest.raises(ValueError, match="non-empty"):
        auc([])
    with pytest.raises(ValueError, match="whole multiple"):
        auc([0.01], threshold=0.10, step=3e-2)
    with pytest.raises(ValueError, match="positive"):
        failure_rate([0.01], threshold=0.0)


# ----------------------------------------------------------------------------------------------
# Results object
# ----------------------------------------------------------------------------------------------
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")


def _wflw_dataset(rng, num_images=30):
    pred, gt, boxes = random_case(rng, "wflw98", num_images)
    layout = get_layout("wflw98")
    records = []
    for i in range(num_images):
        attributes = {name: int(rng.random() < 0.3) for name in WFLW_ATTRIBUTES}
        attributes["makeup"] = 0  # an empty subset: its column prints "-"
        records.append(FaceRecord(f"wflw/test/{i}", gt[i], layout, box=tuple(boxes[i]), attributes=attributes))
    return pred, LandmarkDataset("wflw", "test", Path("/data/WFLW"), layout, records)


def _300w_dataset(rng, num_common=12, num_challenging=5):
    num_images = num_common + num_challenging
    pred, gt, _ = random_case(rng, "300w68", num_images)
    layout = get_layout("300w68")
    records = [
        FaceRecord(f"300w/{i}", gt[i], layout, attributes={"subset": "common" if i < num_common else "challenging"})
        for i in range(num_images)
    ]
    return pred, LandmarkDataset("300w", "full", Path("/data/300W"), layout, records)


def test_wflw_results_summary_and_table():
    rng = np.random.default_rng(7)
    pred, dataset = _wflw_dataset(rng)
    results = EvaluationResults.from_predictions(pred, dataset, "toy model", "gt_landmarks x1.2")
    gt = dataset.landmarks()
    assert set(results.nmes) == {"inter_ocular", "inter_pupil", "bbox"}  # every record has a box
    summary = results.summary()
    io = np.array(reference_nme(pred, gt, "wflw98", "inter_ocular"))
    assert summary["all"]["n"] == 30
    assert abs(summary["all"]["NME_io"] - io.mean()) < 1e-9
    assert abs(summary["all"]["FR_io@0.10"] - reference_failure_rate(io.tolist(), 0.10)) < 1e-9
    assert abs(summary["all"]["AUC_io@0.08"] - reference_auc(io.tolist(), 0.08, 1e-4)) < 1e-9
    pose = np.array([r.attributes["pose"] == 1 for r in dataset])
    assert summary["pose"]["n"] == pose.sum() > 0
    assert abs(summary["pose"]["NME_io"] - io[pose].mean()) < 1e-9
    assert summary["makeup"] == {"n": 0}

    table = results.table()
    for label in ("Test", "Pose", "Expression", "Illumination", "Make-up", "Occlusion", "Blur",
                  "NME_io (%)", "FR_io@0.10 (%)", "AUC_io@0.10", "toy model", "gt_landmarks x1.2"):
        assert label in table
    assert f"{100 * io.mean():.2f}" in table
    assert f"{reference_auc(io.tolist(), 0.10, 1e-4):.4f}" in table
    assert f"{100 * io.mean():.3f}" in results.table(nme_decimals=3)
    for line in table.splitlines()[3:]:  # every metric row: the empty make-up column prints "-"
        assert re.split(r"\s{2,}", line)[5] == "-"
    markdown = results.markdown()
    assert "| Metric | Test | Pose | Expression | Illumination | Make-up | Occlusion | Blur |" in markdown
    assert f"| NME_io (%) | {100 * io.mean():.2f} |" in markdown


def test_300w_subsets_from_record_attribute():
    rng = np.random.default_rng(8)
    pred, dataset = _300w_dataset(rng)
    masks = subset_masks(dataset)
    assert sorted(masks) == ["challenging", "common", "full"]
    assert masks["common"].sum() == 12 and masks["challenging"].sum() == 5 and masks["full"].all()
    results = EvaluationResults.from_predictions(pred, dataset, "m", "dataset x1.25")
    assert "bbox" not in results.nmes  # 300W records carry no rectangle here
    ip = np.array(reference_nme(pred, dataset.landmarks(), "300w68", "inter_pupil"))
    summary = results.summary()
    assert abs(summary["challenging"]["NME_ip"] - ip[12:].mean()) < 1e-9
    assert abs(summary["full"]["NME_ip"] - ip.mean()) < 1e-9
    table = results.table()
    header = table.splitlines()[1].split()
    assert header == ["Metric", "Common", "Challenging", "Fullset"]
    for label in ("NME_io (%)", "NME_ip (%)", "FR_io@0.08 (%)", "FR_io@0.10 (%)", "AUC_io@0.08", "AUC_io@0.10"):
        assert label in table
    assert f"{100 * ip[:12].mean():.2f}" in table

    # A "common" split without the attribute is the common subset.
    plain = LandmarkDataset("300w", "common", dataset.root, dataset.layout,
                            [FaceRecord(r.identifier, r.landmarks, r.layout) for r in dataset.records[:12]])
    assert list(subset_masks(plain)) == ["common"]
    # The reader's other labels ("train", "private") are no test subsets.
    train = LandmarkDataset("300w", "train", dataset.root, dataset.layout,
                            [FaceRecord(r.identifier, r.landmarks, r.layout, attributes={"subset": "train"})
                             for r in dataset.records[:3]])
    assert subset_masks(train) == {}
    with pytest.raises(ValueError, match="300w/0"):
        dataset.records[0].attributes["subset"] = "ibug"
        subset_masks(dataset)


def test_cofw_and_cofw68_tables():
    rng = np.random.default_rng(9)
    pred, gt, _ = random_case(rng, "cofw29", 10)
    cofw = EvaluationResults.from_landmarks(pred, gt, "cofw29", dataset="cofw", split="test", model="m",
                                            box_source="gt_landmarks x1.2")
    table = cofw.table()
    assert table.splitlines()[1].split() == ["Metric", "Test"]
    for label in ("NME_io (%)", "FR_io@0.10 (%)", "NME_ip (%)", "FR_ip@0.10 (%)"):
        assert label in table
    pred, gt, _ = random_case(rng, "300w68", 10)
    cofw68 = EvaluationResults.from_landmarks(pred, gt, "300w68", dataset="cofw68", split="test", model="m",
                                              box_source="dataset x1.25")
    assert "NME_io (%)" in cofw68.table() and "FR_io@0.10 (%)" in cofw68.table()


def test_wflw_missing_attribute_is_an_error():
    rng = np.random.default_rng(10)
    pred, dataset = _wflw_dataset(rng, 3)
    del dataset.records[1].attributes["blur"]
    with pytest.raises(ValueError, match=r"wflw/test/1.*'blur'"):
        EvaluationResults.from_predictions(pred, dataset, "m", "gt_landmarks x1.2")
    with pytest.raises(ValueError, match="2 predictions for the 3 records"):
        EvaluationResults.from_predictions(pred[:2], dataset, "m", "gt_landmarks x1.2")


def test_box_source_is_required():
    rng = np.random.default_rng(11)
    pred, dataset = _wflw_dataset(rng, 3)
    with pytest.raises(ValueError, match="box_source"):
        EvaluationResults.from_predictions(pred, dataset, "m", "")


def test_json_round_trip(tmp_path):
    rng = np.random.default_rng(12)
    pred, dataset = _wflw_dataset(rng)
    results = EvaluationResults.from_predictions(pred, dataset, "toy", "gt_landmarks x1.2", extra={"epoch": 3})
    path = results.to_json(tmp_path / "results.json")
    loaded = EvaluationResults.from_json(path)
    for norm in results.nmes:
        assert np.array_equal(loaded.nmes[norm], results.nmes[norm])  # exact, not approximate
    for subset in results.subsets:
        assert np.array_equal(loaded.subsets[subset], results.subsets[subset])
    assert loaded.identifiers == results.identifiers
    assert (loaded.dataset, loaded.split, loaded.layout, loaded.model, loaded.box_source) == (
        "wflw", "test", "wflw98", "toy", "gt_landmarks x1.2")
    assert loaded.extra == {"epoch": 3}
    assert loaded.summary() == results.summary()
    assert loaded.table() == results.table()
    stored = json.loads(path.read_text())
    assert stored["summary"]["all"]["NME_io"] == results.summary()["all"]["NME_io"]

    stored["format"] = "something else"
    (tmp_path / "bad.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="bad.json"):
        EvaluationResults.from_json(tmp_path / "bad.json")


def test_compare_models():
    rng = np.random.default_rng(13)
    pred, dataset = _wflw_dataset(rng)
    first = EvaluationResults.from_predictions(pred, dataset, "first", "gt_landmarks x1.2")
    second = EvaluationResults.from_predictions(pred * 1.01, dataset, "second", "detector x1.15")
    markdown = compare_markdown({"SLPT": first, "SDFL": second})
    assert "| Metric | Model | Test | Pose |" in markdown
    assert f"| NME_io (%) | SDFL | {100 * second.summary()['all']['NME_io']:.2f} |" in markdown
    assert "SLPT: gt_landmarks x1.2" in markdown and "SDFL: detector x1.15" in markdown
    assert "AUC_io@0.10" in compare_table({"SLPT": first, "SDFL": second})
    other = EvaluationResults.from_landmarks(pred, dataset.landmarks(), "wflw98", dataset="wflw", split="train",
                                             model="x", box_source="gt_landmarks x1.2")
    with pytest.raises(ValueError, match="one benchmark at a time"):
        compare_table({"a": first, "b": other})


def test_plot_ced_writes_png(tmp_path):
    rng = np.random.default_rng(14)
    nmes = rng.uniform(0, 0.12, 50)
    path = plot_ced({"model A": nmes, "model B": nmes * 0.8}, tmp_path / "ced.png", threshold=0.10, title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="curve 'bad'"):
        plot_ced({"bad": [np.nan]}, tmp_path / "bad.png")
