"""SynthFace: datasets written in the native formats load back exactly through the real readers,
generation is deterministic (also across worker counts), attributes are flagged, and the
rendered face matches its landmarks."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facemark.data import load_dataset
from facemark.data.synthface import generate_dataset, render_face, render_sample, sample_face_params, write_preview
from facemark.data.synthface.generate import face_generator
from facemark.data.synthface.head import Pose
from facemark.data.synthface.render import ATTRIBUTE_RATES
from facemark.layouts import WFLW98, wflw98_to_300w68

SEED, SIZE = 11, 128


def _index(identifier: str) -> int:
    """Image index from a file stem ``synthface_<split>_<index>``."""
    return int(identifier.split("_")[-1].split(".")[0])


@pytest.fixture(scope="module")
def wflw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_wflw")
    generate_dataset(root, 4, 5, seed=SEED, size=SIZE, format="wflw", progress=False)
    return root


def test_wflw_round_trip(wflw_root):
    for split, count in (("train", 4), ("test", 5)):
        dataset = load_dataset("wflw", wflw_root, split)
        assert len(dataset) == count
        for record in dataset:
            face = render_sample(SEED, split, _index(record.image_path.stem), SIZE)
            np.testing.assert_allclose(record.landmarks, face.landmarks["wflw98"], rtol=0, atol=1e-9)
            assert record.box == tuple(float(v) for v in face.box)
            assert tuple(record.attributes[name] for name in ("pose", "expression", "illumination", "makeup", "occlusion", "blur")) == face.flags
            image = record.load_image()
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            # The JPEG file holds the rendered picture (up to compression and the sensor noise it drops).
            assert np.abs(image.astype(int) - face.image.astype(int)).mean() < 10.0
    # The released per-attribute test lists are written too and agree with the flags.
    test = load_dataset("wflw", wflw_root, "test")
    for name in ("occlusion", "blur"):
        flagged = [r.identifier for r in test if r.attributes[name] == 1]
        if flagged:
            assert len(load_dataset("wflw", wflw_root, f"test/{name}")) == len(flagged)


def test_300w_round_trip(tmp_path):
    generate_dataset(tmp_path, 3, 4, seed=SEED, size=SIZE, format="300w", workers=1, progress=False)
    assert len(load_dataset("300w", tmp_path, "train")) == 3
    full = load_dataset("300w", tmp_path, "full")
    assert len(full) == 4
    assert {r.attributes["subset"] for r in full} == {"common", "challenging"}
    for record in full:
        face = render_sample(SEED, "test", _index(record.identifier), SIZE)
        np.testing.assert_allclose(record.landmarks, face.landmarks["300w68"], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        generate_dataset(tmp_path / "bad", 2, 0, format="300w", progress=False)


def test_cofw_round_trip(tmp_path):
    generate_dataset(tmp_path, 2, 3, seed=SEED, size=SIZE, format="cofw", progress=False)
    test = load_dataset("cofw", tmp_path, "test")
    cofw68 = load_dataset("cofw68", tmp_path, "test")
    assert len(test) == len(cofw68) == 3
    for index, (record, record68) in enumerate(zip(test, cofw68)):
        face = render_sample(SEED, "test", index, SIZE)
        np.testing.assert_allclose(record.landmarks, face.landmarks["cofw29"], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(record.occluded, face.occluded["cofw29"])
        np.testing.assert_allclose(record.box, face.box, atol=1e-9)
        np.testing.assert_allclose(record68.landmarks, face.landmarks["300w68"], rtol=0, atol=1e-9)
        assert record.load_image().shape == (SIZE, SIZE, 3)
    assert len(load_dataset("cofw", tmp_path, "train")) == 2


def test_deterministic_across_runs_and_workers(tmp_path, wflw_root):
    generate_dataset(tmp_path / "two_workers", 4, 5, seed=SEED, size=SIZE, format="wflw", workers=2, progress=False)
    files = [p.relative_to(wflw_root) for p in wflw_root.rglob("*") if p.is_file()]
    assert len(files) > 10
    for relative in files:
        assert (wflw_root / relative).read_bytes() == (tmp_path / "two_workers" / relative).read_bytes(), relative
    other = render_sample(SEED + 1, "test", 0, SIZE)
    assert not np.array_equal(other.landmarks["wflw98"], render_sample(SEED, "test", 0, SIZE).landmarks["wflw98"])
    # Train and test never share an image for one seed.
    assert not np.array_equal(render_sample(SEED, "train", 0, SIZE).image, render_sample(SEED, "test", 0, SIZE).image)


def test_attribute_rates_near_wflw():
    flags = np.array([render_sample(5, "train", index, 64).flags for index in range(150)])
    rates = flags.mean(axis=0)
    for rate, (name, target) in zip(rates, ATTRIBUTE_RATES.items()):
        target = min(target, 0.29) if name == "occlusion" else target
        assert 0.4 * target <= rate <= 1.8 * target, (name, rate, target)


def test_layouts_come_from_the_same_points():
    face = render_sample(SEED, "test", 3, SIZE)
    wflw, w300, cofw = face.landmarks["wflw98"], face.landmarks["300w68"], face.landmarks["cofw29"]
    converted = wflw98_to_300w68(wflw)
    # Jaw, nose, mouth and eye corners are the same 3D points as WFLW's.
    same = list(range(17)) + list(range(27, 36)) + [36, 39, 42, 45] + list(range(48, 68))
    np.testing.assert_allclose(w300[same], converted[same], atol=1e-3)
    # Lids and brows lie near WFLW-68's published conversion (the curves are not polygons).
    inter_ocular = WFLW98.inter_ocular_distance(wflw)
    assert np.abs(w300 - converted).max() < 0.08 * inter_ocular
    for cofw_index, wflw_index in ((0, 33), (1, 46), (4, 35), (5, 40), (8, 60), (9, 72), (10, 64), (11, 68), (12, 62), (13, 66),
                                   (16, 96), (17, 97), (18, 55), (19, 59), (20, 54), (21, 57), (22, 76), (23, 82), (24, 79),
                                   (25, 90), (26, 94), (27, 85), (28, 16)):
        np.testing.assert_allclose(cofw[cofw_index], wflw[wflw_index], atol=1e-3)


def _plain_frontal(seed: int = 2):
    rng = face_generator(seed, "train", 0)
    params = sample_face_params(rng, 256)
    appearance = replace(params.appearance, occluder=None, glasses=None, blur_kind=None, noise=0.0, gain=1.0, ambient=1.0,
                         diffuse=0.0, tint=(1.0, 1.0, 1.0), makeup=False, eyeshadow=None, hair_style="short", face_ratio=1.6,
                         offset=(0.0, 0.0))
    params = replace(params, pose=Pose(0.0, 0.0, 0.0), appearance=appearance)
    params = replace(params, expression=replace(params.expression, eye_closure_left=0.0, eye_closure_right=0.0, mouth_open=0.0))
    return params, render_face(params, rng)


def test_rendered_face_matches_landmarks():
    import cv2

    params, face = _plain_frontal()
    image, landmarks = face.image.astype(int), face.landmarks["wflw98"]
    skin = np.round(np.asarray(params.appearance.skin)).astype(int)

    def colour_at(point):
        x, y = np.round(point).astype(int)
        return image[y, x]

    # Skin fills the lower face: most pixels inside the contour and below the nose are skin.
    lower = np.concatenate([landmarks[4:29], landmarks[[55, 59]]])
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(cv2.convexHull(lower.astype(np.float32))[:, 0]).astype(np.int32)], 1)
    mask[np.round(landmarks[76:88, 1].min()).astype(int) - 3 : np.round(landmarks[76:88, 1].max()).astype(int) + 4] = 0
    inside = image[mask > 0]
    is_skin = np.abs(inside - skin).max(axis=1) <= 3
    assert is_skin.mean() > 0.85
    # Just outside the contour (pushed 5 pixels outwards from the face centre) it is not skin.
    centre = landmarks[:33].mean(axis=0)
    outward = landmarks[4:29] + 5 * (landmarks[4:29] - centre) / np.linalg.norm(landmarks[4:29] - centre, axis=1, keepdims=True)
    outside = np.array([colour_at(p) for p in outward])
    assert (np.abs(outside - skin).max(axis=1) > 3).mean() > 0.8
    # The pupils are dark, the upper lip is lip-coloured, the brows brow-coloured.
    for pupil in (96, 97):
        assert colour_at(landmarks[pupil]).max() < 60
    lip = np.round(params.appearance.lip_colour).astype(int)
    assert np.abs(colour_at((landmarks[79] + landmarks[90]) / 2) - lip).max() <= 3
    brow = np.round(params.appearance.brow_colour).astype(int)
    for upper, lower in ((35, 40), (44, 48)):
        assert np.abs(colour_at((landmarks[upper] + landmarks[lower]) / 2) - brow).max() <= 3
    # Nothing is occluded on a frontal face without occluders.
    assert not face.occluded["wflw98"].any()
    assert face.flags == (0, int(params.exaggerated_expression), 0, 0, 0, 0)


def test_turned_face_hides_far_eye_and_occluders_mark_points():
    params, _ = _plain_frontal()
    turned = render_face(replace(params, pose=Pose(75.0, 0.0, 0.0)), face_generator(2, "train", 1))
    occluded = turned.occluded["wflw98"]
    # Yaw > 0 turns the nose to the image's right: the image-right eye's outer half goes away.
    assert occluded[[71, 72, 73]].all() and not occluded[[60, 96]].any()
    assert turned.landmarks["wflw98"][54, 0] > turned.landmarks["wflw98"][51, 0]
    assert turned.flags[0] == 1
    masked = render_face(replace(params, appearance=replace(params.appearance, occluder="mask")), face_generator(2, "train", 2))
    covered = masked.occluded["wflw98"]
    assert covered[76:96].all() and not covered[60:76].any()
    assert masked.flags[4] == 1


def test_preview(tmp_path):
    path = write_preview(tmp_path / "preview.png", num=4, seed=1, size=96, columns=2)
    import cv2

    sheet = cv2.imread(str(path))
    assert sheet is not None and sheet.shape[0] == sheet.shape[1] > 2 * 96


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        generate_dataset(tmp_path, 1, 1, format="ibug", progress=False)
    with pytest.raises(ValueError, match="num_test"):
        generate_dataset(tmp_path, 1, -1, progress=False)
    with pytest.raises(ValueError, match="split"):
        face_generator(0, "validation", 0)
