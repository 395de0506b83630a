"""Native dataset readers and writers: tiny hand-made files in each release format."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from facemark.data import (
    DATASET_SPLITS,
    cofw_mat_path,
    load_dataset,
    read_pts,
    wflw_annotation_path,
    wflw_subset_list_path,
    write_cofw68_annotations,
    write_cofw_mat,
    write_pts,
    write_wflw_annotations,
    write_wflw_subset_lists,
)
from facemark.data.wflw import WFLW_ATTRIBUTES, parse_wflw_annotations

RNG_SEED = 1234


def write_image(path: Path, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """Write a small random RGB image with OpenCV and return its RGB pixels (exact for .png;
    .jpg is lossy, so tests compare .jpg images by shape only)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


# --- WFLW --------------------------------------------------------------------------------------
def wflw_line(landmarks: np.ndarray, rect, flags, image: str) -> str:
    """One annotation line written by hand (not through the writer)."""
    numbers = [f"{v:.6f}" for v in np.asarray(landmarks).reshape(-1)]
    return " ".join(numbers + [str(v) for v in rect] + [str(v) for v in flags] + [image])


def make_wflw(root: Path, lines: list[str], split: str = "test", images=("a--Event/one.jpg",)) -> Path:
    path = wflw_annotation_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    for image in images:
        write_image(root / "WFLW_images" / image)
    return path


def test_wflw_hand_written_values_several_faces_and_subsets(tmp_path):
    first = np.arange(196, dtype=np.float64).reshape(98, 2) * 0.25 - 3.5  # negative values stay
    second = np.full((98, 2), 7.125)
    lines = [
        wflw_line(first, (1, 2, 30, 31), (1, 0, 0, 0, 1, 0), "a--Event/one.jpg"),
        "",  # a blank line holds no face and is allowed
        wflw_line(second, (0, 0, 5, 6), (0, 1, 0, 0, 0, 1), "a--Event/one.jpg"),  # same image, 2nd face
        wflw_line(second + 1, (3, 4, 9, 9), (0, 0, 0, 0, 0, 0), "b--Other/two.png"),
    ]
    make_wflw(tmp_path, lines, images=("a--Event/one.jpg", "b--Other/two.png"))
    dataset = load_dataset("wflw", tmp_path, "test")
    assert len(dataset) == 3 and dataset.layout.name == "wflw98"
    assert [r.identifier for r in dataset] == ["a--Event/one.jpg#1", "a--Event/one.jpg#3", "b--Other/two.png#4"]
    assert dataset[0].landmarks.dtype == np.float64 and dataset[0].landmarks.shape == (98, 2)
    np.testing.assert_array_equal(dataset[0].landmarks, first)  # WFLW is 0-based: no shift
    assert dataset[0].landmarks[0].tolist() == [-3.5, -3.25]
    np.testing.assert_array_equal(dataset[1].landmarks, second)
    assert dataset[0].box == (1.0, 2.0, 30.0, 31.0)
    assert dataset[0].attributes == {"pose": 1, "expression": 0, "illumination": 0, "makeup": 0, "occlusion": 1, "blur": 0}
    assert all(type(v) is int for v in dataset[0].attributes.values())
    assert dataset[0].occluded is None
    assert dataset[0].image_path == dataset[1].image_path == tmp_path / "WFLW_images" / "a--Event" / "one.jpg"
    assert dataset[2].load_image().shape == (32, 32, 3)

    subsets = {name: [r.identifier for r in load_dataset("wflw", tmp_path, f"test/{name}")] for name in WFLW_ATTRIBUTES}
    assert subsets == {
        "pose": ["a--Event/one.jpg#1"],
        "expression": ["a--Event/one.jpg#3"],
        "illumination": [],
        "makeup": [],
        "occlusion": ["a--Event/one.jpg#1"],
        "blur": ["a--Event/one.jpg#3"],
    }


def test_wflw_image_is_rgb(tmp_path):
    make_wflw(tmp_path, [wflw_line(np.zeros((98, 2)), (0, 0, 1, 1), (0,) * 6, "e/x.png")], images=())
    rgb = write_image(tmp_path / "WFLW_images" / "e" / "x.png", 12, 20, seed=3)
    image = load_dataset("wflw", tmp_path, "test")[0].load_image()
    assert image.dtype == np.uint8 and image.shape == (12, 20, 3)
    np.testing.assert_array_equal(image, rgb)


def test_wflw_writer_round_trip_and_subset_lists(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    rows = []
    for index in range(12):
        flags = tuple(int(v) for v in rng.integers(0, 2, 6))
        flags_arg = dict(zip(WFLW_ATTRIBUTES, flags)) if index % 2 else flags  # dict or tuple
        rows.append((rng.uniform(-10, 500, (98, 2)), rng.integers(0, 400, 4), flags_arg, f"ev/{index // 3}.jpg"))
        write_image(tmp_path / "WFLW_images" / f"ev/{index // 3}.jpg", 8, 8)
    write_wflw_annotations(wflw_annotation_path(tmp_path, "train"), rows)
    dataset = load_dataset("wflw", tmp_path, "train")
    assert len(dataset) == 12
    for record, (landmarks, rect, _, image) in zip(dataset, rows):
        np.testing.assert_array_equal(record.landmarks, landmarks)  # repr precision: exact
        assert record.box == tuple(float(v) for v in rect)
        assert record.identifier.startswith(image + "#")

    write_wflw_annotations(wflw_annotation_path(tmp_path, "test"), rows)
    paths = write_wflw_subset_lists(tmp_path, rows)
    assert paths["pose"].name == "list_98pt_test_largepose.txt"  # the release's file name
    for name in WFLW_ATTRIBUTES:
        assert paths[name] == wflw_subset_list_path(tmp_path, name)
        subset = load_dataset("wflw", tmp_path, f"test/{name}")
        assert all(r.attributes[name] == 1 for r in subset)
        expected = sum(1 for r in dataset if r.attributes[name] == 1)
        assert len(subset) == expected
        if expected:  # the released per-subset list holds the same faces
            listed, *_ = parse_wflw_annotations(paths[name])
            np.testing.assert_array_equal(listed, subset.landmarks())


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("1 " * 206, "line 2: 206 fields; expected 207"),
        ("1 " * 208 + "x.jpg", "line 2: 209 fields; expected 207"),
        ("1 " * 10 + "abc " + "1 " * 195 + "x.jpg", "line 2: field 11 is 'abc'; expected a number"),
        ("1 " * 200 + "0 0 2 0 0 0 x.jpg", "line 2: field 203 (illumination flag) is 2; expected 0 or 1"),
        ("nan " + "1 " * 205 + "x.jpg", "line 2: field 1 is not a finite number"),
    ],
)
def test_wflw_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    good = wflw_line(np.zeros((98, 2)), (0, 0, 1, 1), (0,) * 6, "a--Event/one.jpg")
    path = make_wflw(tmp_path, [good, bad_line, good])
    with pytest.raises(ValueError) as error:
        load_dataset("wflw", tmp_path, "test")
    assert str(path) in str(error.value) and message in str(error.value)


def test_wflw_missing_image_and_files(tmp_path):
    good = wflw_line(np.zeros((98, 2)), (0, 0, 1, 1), (0,) * 6, "a--Event/one.jpg")
    missing = wflw_line(np.zeros((98, 2)), (0, 0, 1, 1), (0,) * 6, "a--Event/gone.jpg")
    path = make_wflw(tmp_path, [good, missing])
    with pytest.raises(FileNotFoundError, match=r"line 2: image .*gone\.jpg does not exist \(1 of 2"):
        load_dataset("wflw", tmp_path, "test")
    assert len(load_dataset("wflw", tmp_path, "test", check_images=False)) == 2  # checked only on request
    with pytest.raises(FileNotFoundError, match="list_98pt_rect_attr_train.txt does not exist"):
        load_dataset("wflw", tmp_path, "train")
    (tmp_path / "WFLW_images" / "a--Event" / "one.jpg").unlink()
    (tmp_path / "WFLW_images" / "a--Event").rmdir()
    (tmp_path / "WFLW_images").rmdir()
    with pytest.raises(FileNotFoundError, match=r"WFLW image folder .*WFLW_images does not exist"):
        load_dataset("wflw", tmp_path, "test")
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no annotation lines"):
        load_dataset("wflw", tmp_path, "test", check_images=False)


def test_unknown_dataset_split_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'afw'.*'wflw', '300w', 'cofw', 'cofw68'"):
        load_dataset("afw", tmp_path, "test")
    with pytest.raises(ValueError, match=r"unknown split 'test/occ'.*'test/occlusion'"):
        load_dataset("wflw", tmp_path, "test/occ")
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'common', 'challenging', 'full', 'private'"):
        load_dataset("300w", tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="dataset root folder .*nowhere does not exist"):
        load_dataset("cofw", tmp_path / "nowhere", "test")
    assert DATASET_SPLITS["cofw68"] == ("test",) and len(DATASET_SPLITS["wflw"]) == 8


# --- 300W --------------------------------------------------------------------------------------
def pts_text(points) -> str:
    """A .pts file written by hand, in the release's exact shape."""
    body = "\n".join(f"{x} {y}" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n"


def make_300w(root: Path, folders=None, faces_per_folder: int = 1, extension: str = ".jpg") -> None:
    folders = folders or ["afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset", "ibug"]
    for folder_index, folder in enumerate(folders):
        for face in range(faces_per_folder):
            stem = root / folder / f"img{face}"
            points = [(folder_index + 1 + i, face + 1 + 0.5 * i) for i in range(68)]
            stem.parent.mkdir(parents=True, exist_ok=True)
            stem.with_suffix(".pts").write_text(pts_text(points))
            write_image(stem.with_suffix(extension), 8, 8)


def test_pts_hand_written_one_based_to_zero_based(tmp_path):
    points = [(1.0, 1.0), (10.5, 20.25)] + [(3.0 + i, 4.0 + i) for i in range(66)]
    path = tmp_path / "face.pts"
    path.write_text(pts_text(points).replace("\n", "\r\n") + "\n\n")  # CRLF and trailing blank lines
    landmarks = read_pts(path)
    assert landmarks.dtype == np.float64 and landmarks.shape == (68, 2)
    assert landmarks[0].tolist() == [0.0, 0.0]  # the first pixel centre, 1-based (1, 1)
    assert landmarks[1].tolist() == [9.5, 19.25]
    np.testing.assert_array_equal(landmarks, np.asarray(points) - 1.0)

    rng = np.random.default_rng(RNG_SEED)
    zero_based = rng.uniform(-3, 300, (68, 2))
    write_pts(tmp_path / "written.pts", zero_based)
    text = (tmp_path / "written.pts").read_text().splitlines()
    assert text[:3] == ["version: 1", "n_points: 68", "{"] and text[-1] == "}"
    assert [float(v) for v in text[3].split()] == pytest.approx((zero_based[0] + 1).tolist(), abs=0)
    np.testing.assert_allclose(read_pts(tmp_path / "written.pts"), zero_based, rtol=0, atol=1e-12)


def test_300w_split_composition(tmp_path):
    make_300w(tmp_path, faces_per_folder=2)
    train = load_dataset("300w", tmp_path, "train")
    assert train.layout.name == "300w68"
    assert [r.identifier for r in train] == [
        "afw/img0", "afw/img1", "helen/trainset/img0", "helen/trainset/img1", "lfpw/trainset/img0", "lfpw/trainset/img1",
    ]
    assert [r.attributes["source"] for r in train] == ["afw", "afw", "helen", "helen", "lfpw", "lfpw"]
    assert {r.attributes["subset"] for r in train} == {"train"}
    assert all(r.box is None and r.occluded is None for r in train)
    # afw is folder 0: its img1 has points (1 + i, 2 + 0.5 i) 1-based
    np.testing.assert_array_equal(train[1].landmarks[:2], [[0.0, 1.0], [1.0, 1.5]])
    common = load_dataset("300w", tmp_path, "common")
    challenging = load_dataset("300w", tmp_path, "challenging")
    full = load_dataset("300w", tmp_path, "full")
    assert [r.identifier for r in common] == ["helen/testset/img0", "helen/testset/img1", "lfpw/testset/img0", "lfpw/testset/img1"]
    assert [r.identifier for r in challenging] == ["ibug/img0", "ibug/img1"]
    assert [r.identifier for r in full] == [r.identifier for r in common] + [r.identifier for r in challenging]
    assert [r.attributes["subset"] for r in full] == ["common"] * 4 + ["challenging"] * 2
    assert [r.attributes["source"] for r in full] == ["helen", "helen", "lfpw", "lfpw", "ibug", "ibug"]
    assert full[0].image_path.name == "img0.jpg" and full[0].load_image().shape == (8, 8, 3)

    with pytest.raises(FileNotFoundError, match=r"300W/01_Indoor does not exist"):
        load_dataset("300w", tmp_path, "private")
    make_300w(tmp_path, folders=["300W/01_Indoor", "300W/02_Outdoor"], extension=".png")
    private = load_dataset("300w", tmp_path, "private")
    assert [r.identifier for r in private] == ["300W/01_Indoor/img0", "300W/02_Outdoor/img0"]
    assert [r.attributes for r in private] == [{"subset": "private", "source": "indoor"}, {"subset": "private", "source": "outdoor"}]
    assert private[0].image_path.suffix == ".png"


def test_300w_missing_folder_and_image(tmp_path):
    make_300w(tmp_path, folders=["afw", "helen/trainset"])
    with pytest.raises(FileNotFoundError, match=r"lfpw/trainset does not exist"):
        load_dataset("300w", tmp_path, "train")
    (tmp_path / "ibug").mkdir()
    with pytest.raises(ValueError, match=r"ibug holds no \.pts files"):
        load_dataset("300w", tmp_path, "challenging")
    (tmp_path / "ibug" / "lonely.pts").write_text(pts_text([(1, 1)] * 68))
    with pytest.raises(FileNotFoundError, match=r"lonely\.pts: no image beside it; expected lonely\.jpg or lonely\.png"):
        load_dataset("300w", tmp_path, "challenging")
    assert load_dataset("300w", tmp_path, "challenging", check_images=False)[0].image_path.name == "lonely.jpg"


POINTS = [(1.0, 2.0)] * 68


@pytest.mark.parametrize(
    "text, message",
    [
        (pts_text(POINTS).replace("version: 1", "verison: 1"), "line 1: 'verison: 1'; expected 'version: 1'"),
        (pts_text(POINTS[:67]), "line 2: n_points is 67; expected 68"),
        (pts_text(POINTS).replace("n_points:  68", "n_points: many"), "line 2: 'n_points: many'; expected 'n_points: 68'"),
        (pts_text(POINTS).replace("{\n", ""), "line 3: '1.0 2.0'; expected '{'"),
        (pts_text(POINTS).replace("}\n", ""), "line 72: '<end of file>'; expected the closing '}'"),
        (pts_text(POINTS).replace("n_points:  68", "n_points: 68").replace("}\n", "1 2\n}\n"),
         "line 72: more points than n_points; expected the closing '}'"),
        ("\n".join(pts_text(POINTS).splitlines()[:-10]) + "\n}\n", "line 63: only 59 points; expected 68"),
        (pts_text(POINTS).replace("1.0 2.0", "1.0 two", 1), "line 4: '1.0 two'; expected two numbers 'x y'"),
        (pts_text(POINTS).replace("1.0 2.0", "1.0 2.0 3.0", 1), "line 4: '1.0 2.0 3.0'; expected two numbers 'x y'"),
        (pts_text(POINTS) + "extra\n", "line 73: 'extra' after the closing '}'"),
    ],
)
def test_pts_errors_name_file_and_line(tmp_path, text, message):
    make_300w(tmp_path, folders=["ibug"])
    path = tmp_path / "ibug" / "img0.pts"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_dataset("300w", tmp_path, "challenging")
    assert str(path) in str(error.value) and message in str(error.value)


# --- COFW --------------------------------------------------------------------------------------
def hand_made_cofw(path: Path, images_key="IsT", phis_key="phisT", boxes_key="bboxesT"):
    """A COFW v7.3 file built directly with h5py (not through the writer): one RGB and one
    grayscale image, 1-based coordinates including a slightly negative one."""
    color = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)  # (H, W, 3)
    gray = np.random.default_rng(2).integers(0, 256, (4, 7), dtype=np.uint8)  # (H, W)
    x = np.tile(np.arange(1.0, 30.0), (2, 1))  # MATLAB phis (n, 87): x 1..29
    y = np.tile(np.arange(101.0, 130.0), (2, 1))
    x[1, 0] = -0.75  # slightly negative in the release: stays (-0.75 - 1 = -1.75)
    occlusion = np.zeros((2, 29))
    occlusion[0, 3] = occlusion[1, 28] = 1
    phis = np.concatenate([x, y, occlusion], axis=1)
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [-2.0, 0.5, 4.0, 5.0]])  # MATLAB (n, 4) x y w h
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        refs.create_dataset("a", data=color.T)  # h5py sees MATLAB arrays transposed
        refs.create_dataset("b", data=gray.T)
        cell = np.empty((1, 2), dtype=h5py.ref_dtype)
        cell[0, 0], cell[0, 1] = refs["a"].ref, refs["b"].ref
        mat.create_dataset(images_key, data=cell)
        mat.create_dataset(phis_key, data=phis.T)
        mat.create_dataset(boxes_key, data=boxes.T)
    return color, gray


def test_cofw_hand_made_file(tmp_path):
    color, gray = hand_made_cofw(cofw_mat_path(tmp_path, "test"))
    dataset = load_dataset("cofw", tmp_path, "test")
    assert len(dataset) == 2 and dataset.layout.name == "cofw29"
    assert [r.identifier for r in dataset] == ["COFW_test_color.mat#1", "COFW_test_color.mat#2"]
    first, second = dataset
    assert first.landmarks.dtype == np.float64 and first.landmarks.shape == (29, 2)
    np.testing.assert_array_equal(first.landmarks[:, 0], np.arange(29.0))
    np.testing.assert_array_equal(first.landmarks[:, 1], np.arange(100.0, 129.0))
    assert second.landmarks[0].tolist() == [-1.75, 100.0]  # negative kept, never clipped
    assert first.occluded.dtype == bool and np.flatnonzero(first.occluded).tolist() == [3]
    assert np.flatnonzero(second.occluded).tolist() == [28]
    # x y w h 1-based -> x_min = x - 1, y_min = y - 1, x_max = x_min + w, y_max = y_min + h
    assert first.box == (9.0, 19.0, 39.0, 59.0)
    assert second.box == (-3.0, -0.5, 1.0, 4.5)
    assert first.image_path is None
    np.testing.assert_array_equal(first.load_image(), color)
    gray_rgb = second.load_image()
    assert gray_rgb.shape == (4, 7, 3) and gray_rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(gray_rgb[:, :, channel], gray)
    # records are picklable (DataLoader workers): the lazy loader is not a closure
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(second)).load_image(), gray_rgb)


def test_cofw_writer_round_trip(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    images = [rng.integers(0, 256, (9, 11, 3), dtype=np.uint8), rng.integers(0, 256, (5, 6), dtype=np.uint8),
              rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)]
    landmarks = rng.uniform(-2, 12, (3, 29, 2))
    occluded = rng.random((3, 29)) > 0.5
    boxes = np.array([[-0.5, 1.0, 8.0, 9.5], [0.0, 0.0, 5.0, 4.0], [2.0, 3.0, 6.0, 6.0]])
    path = write_cofw_mat(cofw_mat_path(tmp_path, "train"), "train", images, landmarks, boxes, occluded)
    assert scipy.io.matlab.matfile_version(str(path)) == (2, 0)  # a MATLAB v7.3 header
    with h5py.File(path, "r") as mat:  # the release's transposed layout
        assert mat["IsTr"].shape == (1, 3) and mat["phisTr"].shape == (87, 3) and mat["bboxesTr"].shape == (4, 3)
        np.testing.assert_allclose(mat["bboxesTr"][:, 0], [0.5, 2.0, 8.5, 8.5])
    dataset = load_dataset("cofw", tmp_path, "train")
    np.testing.assert_allclose(dataset.landmarks(), landmarks, rtol=0, atol=1e-12)
    for record, image, box, flags in zip(dataset, images, boxes, occluded):
        np.testing.assert_allclose(record.box, box, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(record.occluded, flags)
        expected = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(record.load_image(), expected)


def test_cofw_errors(tmp_path):
    path = cofw_mat_path(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=r"COFW_test_color\.mat does not exist"):
        load_dataset("cofw", tmp_path, "test")
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match=r"COFW_test_color\.mat: not a MATLAB v7\.3 \(HDF5\) file"):
        load_dataset("cofw", tmp_path, "test")
    hand_made_cofw(path, phis_key="phis")
    with pytest.raises(KeyError, match=r"COFW_test_color\.mat: missing key 'phisT'; keys present: \['#refs#', 'IsT', 'bboxesT', 'phis'\]"):
        load_dataset("cofw", tmp_path, "test")
    hand_made_cofw(path)
    with h5py.File(path, "a") as mat:
        del mat["bboxesT"]
        mat.create_dataset("bboxesT", data=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"key 'bboxesT' has shape \(4, 3\); expected \(4, 2\)"):
        load_dataset("cofw", tmp_path, "test")
    hand_made_cofw(path)
    with h5py.File(path, "a") as mat:
        mat["phisT"][60, 1] = 0.5
    with pytest.raises(ValueError, match=r"occlusion flag of face 2, point 3 is 0.5; expected 0 or 1"):
        load_dataset("cofw", tmp_path, "test")


# --- COFW68 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_cofw68_round_trip(tmp_path, version):
    color, gray = hand_made_cofw(cofw_mat_path(tmp_path, "test"))
    rng = np.random.default_rng(RNG_SEED)
    landmarks = rng.uniform(-1.5, 10, (2, 68, 2))
    occluded = rng.random((2, 68)) > 0.5
    boxes = np.array([[-1.0, 0.5, 4.0, 5.0], [1.0, 1.0, 6.0, 3.0]])
    write_cofw68_annotations(tmp_path, landmarks, occluded, boxes, version=version)
    is_hdf5 = h5py.is_hdf5(str(tmp_path / "cofw68_test_annotations" / "1_points.mat"))
    assert is_hdf5 == (version == "v7.3")
    dataset = load_dataset("cofw68", tmp_path, "test")
    assert dataset.layout.name == "300w68" and len(dataset) == 2
    assert [r.identifier for r in dataset] == ["cofw68_test_annotations/1_points.mat", "cofw68_test_annotations/2_points.mat"]
    np.testing.assert_allclose(dataset.landmarks(), landmarks, rtol=0, atol=1e-12)
    for record, box, flags in zip(dataset, boxes, occluded):
        np.testing.assert_allclose(record.box, box, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(record.occluded, flags)
    np.testing.assert_array_equal(dataset[0].load_image(), color)
    assert dataset[1].load_image().shape == (4, 7, 3)


def test_cofw68_hand_made_v5_values(tmp_path):
    hand_made_cofw(cofw_mat_path(tmp_path, "test"))
    folder = tmp_path / "cofw68_test_annotations"
    folder.mkdir()
    for index in (1, 2):
        points = np.stack([np.arange(1.0, 69.0), np.full(68, 10.0 * index)], axis=1)
        occlusion = np.zeros((1, 68))  # a row here: the reader takes any 68-element shape
        occlusion[0, 5] = 1
        scipy.io.savemat(str(folder / f"{index}_points.mat"), {"Points": points, "Occ": occlusion})
    scipy.io.savemat(str(tmp_path / "cofw68_test_bboxes.mat"), {"bboxes": np.array([[10, 20, 30, 40], [1, 1, 2, 2]], dtype=np.float64)})
    dataset = load_dataset("cofw68", tmp_path, "test")
    np.testing.assert_array_equal(dataset[1].landmarks[:2], [[0.0, 19.0], [1.0, 19.0]])  # 1-based -> 0-based
    assert dataset[0].box == (9.0, 19.0, 39.0, 59.0) and dataset[1].box == (0.0, 0.0, 2.0, 2.0)
    assert np.flatnonzero(dataset[0].occluded).tolist() == [5]


def test_cofw68_errors(tmp_path):
    hand_made_cofw(cofw_mat_path(tmp_path, "test"))
    with pytest.raises(FileNotFoundError, match=r"cofw68_test_bboxes\.mat does not exist"):
        load_dataset("cofw68", tmp_path, "test")
    write_cofw68_annotations(tmp_path, np.zeros((2, 68, 2)), np.zeros((2, 68), bool), np.zeros((2, 4)), version="v5")
    bboxes = tmp_path / "cofw68_test_bboxes.mat"
    scipy.io.savemat(str(bboxes), {"bboxes": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"cofw68_test_bboxes\.mat: key 'bboxes' has shape \(3, 4\); expected \(2, 4\)"):
        load_dataset("cofw68", tmp_path, "test")
    scipy.io.savemat(str(bboxes), {"boxes": np.zeros((2, 4))})
    with pytest.raises(KeyError, match=r"cofw68_test_bboxes\.mat: missing key 'bboxes'; keys present: \['boxes'\]"):
        load_dataset("cofw68", tmp_path, "test")
    scipy.io.savemat(str(bboxes), {"bboxes": np.zeros((2, 4))})
    second = tmp_path / "cofw68_test_annotations" / "2_points.mat"
    scipy.io.savemat(str(second), {"Points": np.zeros((67, 2)), "Occ": np.zeros(68)})
    with pytest.raises(ValueError, match=r"2_points\.mat: key 'Points' has shape \(67, 2\); expected \(68, 2\)"):
        load_dataset("cofw68", tmp_path, "test")
    scipy.io.savemat(str(second), {"Points": np.zeros((68, 2))})
    with pytest.raises(KeyError, match=r"2_points\.mat: missing key 'Occ'; keys present: \['Points'\]"):
        load_dataset("cofw68", tmp_path, "test")
    second.write_bytes(b"garbage, not MATLAB")
    with pytest.raises(ValueError, match=r"2_points\.mat: not a readable MATLAB \.mat file"):
        load_dataset("cofw68", tmp_path, "test")
    second.unlink()
    with pytest.raises(FileNotFoundError, match=r"2_points\.mat does not exist"):
        load_dataset("cofw68", tmp_path, "test")
